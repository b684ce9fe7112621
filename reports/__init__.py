"""Reports of findings: a self-contained HTML page and CSV for machines, and a Perfetto trace."""

# The shared SQL modules the reports read (event_labels, dma_mappings, memslot_timeline): loading
# only these keeps connect() from materialising every detector's timeline (9 s of a 1M-event run).
SQL_MODULES = ("event_labels", "pins", "memslots")
