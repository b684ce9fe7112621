"""A collection: load the BPF program, follow the workload, drain rings into the run store.

The manifest is written when the session starts and after every chunk, so a
collector killed with SIGKILL leaves a readable run whose session still says
`running` (reported as unclean). SIGINT and SIGTERM stop collection, drain
what the rings hold and close the session cleanly.
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from collectors import program as prog
from pipeline.runstore import RunWriter


# Rings never wake the reader (BPF_RB_NO_WAKEUP): they are drained on this timer instead, so a
# flood costs no wakeup per event. Ring sizes (collectors/*.py) cover a burst between two drains.
DRAIN_INTERVAL = 0.025


class CollectError(Exception):
    """The host cannot collect; the message says what to do."""


def preflight(*, mount: bool) -> None:
    if os.geteuid() != 0:
        raise CollectError("vmemtrace collect must run as root: loading BPF programs needs CAP_BPF and "
                           "CAP_PERFMON (try sudo)")
    if not (prog.TRACEFS / "events").is_dir():
        if not mount:
            raise CollectError(f"tracefs is not mounted at {prog.TRACEFS}: mount it with "
                               f"`mount -t tracefs nodev {prog.TRACEFS}` or pass --mount")
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(prog.TRACEFS)], check=True)
    if not Path("/sys/fs/bpf").is_dir() or not os.path.ismount("/sys/fs/bpf"):
        if mount:
            subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=False)
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise CollectError("bcc's Python module is missing: apt-get install bpfcc-tools python3-bpfcc "
                           "libbpfcc, then `make setup-host` to make it importable in .venv "
                           "(the PyPI package named bcc is unrelated)") from None
    build = Path("/lib/modules") / platform.release() / "build"
    if not build.exists():
        raise CollectError(f"kernel headers missing: {build} does not exist; apt-get install "
                           f"linux-headers-amd64 and link it there (`make setup-host` does both)")


@dataclass
class Stats:
    events: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)


class Collection:
    def __init__(self, run_dir: Path, *, families: list[str] | None = None, pids: list[int] = (),
                 comm: str | None = None, ring_pages: int | None = None, chunk_rows: int = 262_144,
                 follow_command: bool = False, qemu_binary: str | None = None):
        self.run_dir = run_dir
        self.collectors = prog.for_families(families)
        self.families = families
        self.pids = list(pids)
        self.comm = comm
        self.ring_pages = ring_pages
        self.chunk_rows = chunk_rows
        self.qemu_binary = qemu_binary
        self.filtered = bool(self.pids or comm or follow_command)
        self.stats = Stats()
        self._stop = False
        self._lost_seen: dict[str, int] = {}

    # -- life cycle ---------------------------------------------------------------------------

    def run(self, *, command: list[str] | None = None, duration: float | None = None,
            progress: Callable[[Stats], None] | None = None) -> int:
        """Collect until the command exits, `duration` passes or a signal arrives.

        Returns the command's exit status (0 without a command).
        """
        try:
            program = prog.load(self.collectors, ring_pages=self.ring_pages, filter_pids=self.filtered,
                                comm=self.comm, qemu_binary=self.qemu_binary)
        except prog.CompileError as e:
            raise CollectError(str(e)) from None
        writer = RunWriter(self.run_dir, source="bpf", kind="collector", chunk_rows=self.chunk_rows, info={
            "collectors": [c.name for c in program.collectors],
            "attached": program.attached, "missing": program.missing,
            "filter": {"pids": self.pids, "comm": self.comm, "command": command, "families": self.families},
            "ring_pages": self.ring_pages, "ring_bytes": program.ring_bytes, "clock": "CLOCK_MONOTONIC (bpf_ktime_get_ns)",
            **({"qemu_version": _qemu_version(self.qemu_binary)}
               if any(c.name == "qemu" for c in program.collectors) else {}),
        })
        cpu_at_start = _cpu_seconds()  # after the compile: the figure is the cost of collecting
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        child = None
        status = 0
        try:
            for pid in self.pids + (_pids_named(self.comm) if self.comm else []):
                program.add_pid(pid)
                for family, table in program.snapshot(pid).items():  # state from before the trace
                    writer.write(family, table)
            if command:
                child = _start_gated(command, program.add_pid)
                writer.update_session(workload_pid=child.pid)
            deadline = time.monotonic() + duration if duration else None
            last_report = 0.0
            while not self._stop:
                time.sleep(DRAIN_INTERVAL)
                self._drain(program, writer)
                now = time.monotonic()
                if now - last_report >= 0.5:
                    self._account_lost(program, writer)
                    if progress:
                        progress(self.stats)
                    last_report = now
                if child is not None and child.poll() is not None:
                    break
                if deadline is not None and now >= deadline:
                    break
            if child is not None:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
                status = child.wait()
                writer.update_session(workload_status=status)
            self._drain(program, writer)
            self._account_lost(program, writer)
            writer.update_session(collector_cpu_seconds=round(_cpu_seconds() - cpu_at_start, 3))
            writer.close(clean=True)
        except BaseException:
            writer.abort()
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            program.close()
        if progress:
            progress(self.stats)
        return status if status >= 0 else 128 - status

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    # -- draining -----------------------------------------------------------------------------

    def _drain(self, program: prog.Program, writer: RunWriter) -> None:
        # One read per ring per pass (another only if it came back full): re-reading while the
        # producer refills the ring would turn a flood into many tiny batches.
        for ring, collector, reader in program.readers:
            while True:
                records = reader.read(max_records=self.chunk_rows)
                if len(records):
                    for family, table in ring.decode(records, collector.source_name).items():
                        writer.write(family, table)
                        self.stats.events[family] = self.stats.events.get(family, 0) + table.num_rows
                if len(records) < self.chunk_rows:
                    break

    def _account_lost(self, program: prog.Program, writer: RunWriter) -> None:
        for ring_name, ring_families, total in program.lost():
            delta = total - self._lost_seen.get(ring_name, 0)
            if delta > 0:
                families = "+".join(ring_families)
                writer.count_lost(families, delta, "BPF ring buffer or in-flight table full")
                self._lost_seen[ring_name] = total
                self.stats.lost[families] = self.stats.lost.get(families, 0) + delta


def _qemu_version(binary: str | None) -> str | None:
    from collectors.qemu import DEFAULT_BINARY

    try:
        out = subprocess.run([binary or DEFAULT_BINARY, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pids_named(prefix: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().rstrip("\n").startswith(prefix[:15]):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _start_gated(command: list[str], admit: Callable[[int], None]) -> subprocess.Popen:
    """Start `command` held before exec until its pid is in the filter, so no early event is missed.

    A shell waits on a pipe and then execs the command in the same process (Popen itself returns
    only once the child has exec'd, so the wait cannot sit in preexec_fn).
    """
    r, w = os.pipe()
    try:
        child = subprocess.Popen(["/bin/sh", "-c", f'read _ < /proc/self/fd/{r}; exec "$@"', "vmemtrace-gate", *command],
                                 pass_fds=(r,))
    except OSError as e:
        os.close(w)
        raise CollectError(f"cannot start {command[0]}: {e.strerror}") from None
    finally:
        os.close(r)
    admit(child.pid)
    os.write(w, b"go\n")
    os.close(w)
    return child
