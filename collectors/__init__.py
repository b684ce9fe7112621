"""eBPF collectors (bcc): each is a BPF C program beside the Python that loads it."""
