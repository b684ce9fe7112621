"""A collection: load the BPF program, follow the workload, drain rings into the run store.

The manifest is written when the session starts and after every chunk, rings are drained at
least every DRAIN_AGE and buffered rows are flushed every FLUSH_SECONDS, so a collector killed
with SIGKILL leaves a readable run holding what it saw until shortly before, whose session
reads as unclean. SIGINT and SIGTERM stop collection, drain what the rings hold and close the
session cleanly; the probes are then released (in a child process, with background_detach, see
_hold_probes_until_exit).
Targets that cannot be traced and runs another process writes are refused before any BPF loads.
"""

from __future__ import annotations

import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from collectors import program as prog
from collectors.base import Collector, Ring
from collectors.qemu_tracker import QemuTracker, attached_probes
from collectors.ringbuf import RingReader
from pipeline.runstore import RunError, RunWriter, open_run


# Rings never wake the reader (BPF_RB_NO_WAKEUP): they are looked at on this timer instead, so a
# flood costs no wakeup per event. Ring sizes (collectors/*.py) cover a burst between two drains.
DRAIN_INTERVAL = 0.025
# A ring is drained once it is this full, or its records have waited DRAIN_AGE. Each drain costs
# ~2.5 ms of Python and Arrow calls whatever its size: at 25 ms a flood came in batches of a few
# thousand records and that cost doubled the CPU per event (benchmarks/collector_throughput.py
# --offline --batch). An eighth of the discards ring is ~160k records; the other seven eighths
# still take a burst while the collector is not scheduled.
DRAIN_FILL = 1 / 8
DRAIN_AGE = 0.25


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


@dataclass
class Attached:
    """What the collection attached to, for the start banner and the manifest."""
    collectors: list[str]
    families: list[str]
    attached: list[str]
    missing: list[str]
    rings: int
    ring_bytes: int
    appending_to: int | None      # sessions already in the run, or None for a new run


FLUSH_SECONDS = 1.0  # rows reach disk at most this long after they were read from the rings


def check_targets(pids: list[int], command: list[str] | None) -> None:
    """Refuse what cannot be traced before anything is loaded."""
    for pid in pids:
        if not Path(f"/proc/{pid}").is_dir():
            raise CollectError(f"no process with pid {pid}")
    if command:
        exe = command[0]
        path = exe if "/" in exe else shutil.which(exe)
        if path is None:
            raise CollectError(f"cannot run {exe}: not found in PATH")
        if not os.path.exists(path):
            raise CollectError(f"cannot run {exe}: not found")
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise CollectError(f"cannot run {exe}: {path} is not an executable file")


def check_run(run_dir: Path) -> int | None:
    """Sessions already in the run (None for a new run); refuses a run another process is writing."""
    if not (run_dir / "manifest.json").exists():
        return None
    try:
        run = open_run(run_dir)
    except RunError as e:
        raise CollectError(str(e)) from None
    holder = run.writer_pid()
    if holder is not None:
        raise CollectError(f"{run_dir}: another vmemtrace process (pid {holder}) is writing this run; "
                           "stop it first or collect into another --run")
    return len(run.manifest["sessions"])


class Collection:
    def __init__(self, run_dir: Path, *, families: list[str] | None = None, pids: list[int] = (),
                 comm: str | None = None, ring_pages: int | None = None, chunk_rows: int = 262_144,
                 follow_command: bool = False, qemu_binaries: list[str] = (), background_detach: bool = False):
        self.run_dir = run_dir
        self.collectors = prog.for_families(families)
        self.families = families
        self.pids = list(pids)
        self.comm = comm
        self.ring_pages = ring_pages
        self.chunk_rows = chunk_rows
        self.qemu_binaries = list(qemu_binaries)
        self.filtered = bool(self.pids or comm or follow_command)
        self.stats = Stats()
        self.comm_matched = False
        self.detach_seconds: float | None = None
        self.background_detach = background_detach
        self.detach_holder: int | None = None
        self._stop = False
        self._lost_seen: dict[str, int] = {}
        self._drained_at: dict[str, float] = {}  # ring -> monotonic time of its last drain

    # -- life cycle ---------------------------------------------------------------------------

    def run(self, *, command: list[str] | None = None, duration: float | None = None,
            progress: Callable[[Stats], None] | None = None,
            on_attached: Callable[[Attached], None] | None = None,
            on_detach: Callable[[], None] = lambda: None,
            say: Callable[[str], None] = lambda msg: None) -> int:
        """Collect until the command exits, `duration` passes or a signal arrives.

        Returns the command's exit status (0 without a command).
        """
        check_targets(self.pids, command)
        appending_to = check_run(self.run_dir)
        try:
            program = prog.load(self.collectors, ring_pages=self.ring_pages, filter_pids=self.filtered,
                                comm=self.comm)
        except prog.CompileError as e:
            raise CollectError(str(e)) from None
        tracker = None
        try:
            for ring, collector, _ in program.readers:
                # Start-up, like the compile, and before the run exists (callers wait for its
                # manifest): the first Arrow call imports pandas (~0.5 s of CPU).
                ring.decode(np.zeros(0, ring.dtype), collector.source_name)
            if any(c.name == "qemu" for c in program.collectors):
                tracker = QemuTracker(program.bpf, filtered=self.filtered, say=say)
                for path in self.qemu_binaries:
                    if tracker.add_binary(path) is None:
                        raise CollectError(f"--qemu {path}: cannot attach to it")
            return self._run(program, tracker, command, duration, progress, on_attached, say, appending_to)
        finally:
            on_detach()
            started = time.monotonic()
            if self.background_detach:
                self.detach_holder = _hold_probes_until_exit()
            if tracker is not None:
                tracker.close()
            program.close()
            self.detach_seconds = time.monotonic() - started

    def _run(self, program, tracker, command, duration, progress, on_attached, say, appending_to) -> int:
        initial = list(self.pids) + (_pids_named(self.comm) if self.comm else [])
        self.comm_matched = bool(self.comm and initial)
        for pid in initial:
            program.add_pid(pid)
        if tracker is not None:
            tracker.add_running(initial)
        attached, missing = self._probes(program, tracker)
        try:
            writer = RunWriter(self.run_dir, source="bpf", kind="collector", chunk_rows=self.chunk_rows, info={
                "collectors": [c.name for c in program.collectors],
                "attached": attached, "missing": missing,
                "filter": {"pids": self.pids, "comm": self.comm, "command": command, "families": self.families},
                "ring_pages": self.ring_pages, "ring_bytes": program.ring_bytes,
                "clock": {"domain": "monotonic", "source": "bpf_ktime_get_ns (CLOCK_MONOTONIC)",
                          "alignment": "none", "offset_ns": None, "residual_ns": None, "matched_events": 0},
                "traced": self._traced(tracker),
            })
        except RunError as e:
            raise CollectError(str(e)) from None
        if on_attached:
            on_attached(Attached([c.name for c in program.collectors],
                                 sorted({f for c in program.collectors for f in c.families}),
                                 attached, missing, len(program.readers), program.ring_memory, appending_to))
        cpu_at_start = _cpu_seconds()  # after the compile: the figure is the cost of collecting
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        child = None
        status = 0
        try:
            for pid in initial:
                for family, table in program.snapshot(pid).items():  # state from before the trace
                    writer.write(family, table)
            if command:
                child = _start_gated(command, program.add_pid)
                writer.update_session(workload_pid=child.pid)
            deadline = time.monotonic() + duration if duration else None
            # Data rings never wake us (drained on the timer); an exec notice does, so that a QEMU
            # started now gets its probes within a millisecond or so.
            poller = select.epoll()
            if tracker is not None:
                poller.register(tracker.exec_reader.fd, select.EPOLLIN)
            last_report = last_flush = time.monotonic()
            known_binaries = 0
            while not self._stop:
                poller.poll(DRAIN_INTERVAL)
                if tracker is not None:
                    tracker.poll()
                self._drain(program, writer)
                now = time.monotonic()
                if now - last_flush >= FLUSH_SECONDS:  # a burst followed by silence is on disk anyway
                    writer.flush()
                    last_flush = now
                if now - last_report >= 0.5:
                    self._account_lost(program, writer)
                    if tracker is not None:
                        tracker.rescan()
                    if tracker is not None and len(tracker.traced()) != known_binaries:
                        known_binaries = len(tracker.traced())
                        attached, missing = self._probes(program, tracker)
                        writer.update_session(traced=self._traced(tracker), attached=attached, missing=missing)
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
            if tracker is not None:
                tracker.poll()
            self._drain(program, writer, everything=True)
            self._account_lost(program, writer)
            if self.comm and not self.comm_matched:
                self.comm_matched = self._comm_seen(program)
            attached, missing = self._probes(program, tracker)
            writer.flush()  # the last rows' Parquet is part of the cost of collecting them
            writer.update_session(collector_cpu_seconds=round(_cpu_seconds() - cpu_at_start, 3),
                                  traced=self._traced(tracker), attached=attached, missing=missing,
                                  **({"qemu_exec_notices_lost": tracker.exec_lost()}
                                     if tracker is not None and tracker.exec_lost() else {}))
            writer.close(clean=True)
        except BaseException:
            writer.abort()
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if progress:
            progress(self.stats)
        return status if status >= 0 else 128 - status

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def _probes(self, program: prog.Program, tracker: QemuTracker | None) -> tuple[list[str], list[str]]:
        attached, missing = list(program.attached), list(program.missing)
        if tracker is not None:
            more, absent = attached_probes(tracker.traced() + tracker.preattached)
            attached += sorted(set(more))
            missing += sorted(set(absent))
        return attached, missing

    def _traced(self, tracker: QemuTracker | None) -> dict:
        return {"host": platform.node(), "kernel": platform.release(),
                **(tracker.summary() if tracker is not None else {"qemu_binaries": []}),
                "qemu_version": _single_version(tracker)}

    def _comm_seen(self, program: prog.Program) -> bool:
        """Whether any process matched --comm during the collection (it joined the filter)."""
        return len(program.bpf["traced_pids"]) > 0

    # -- draining -----------------------------------------------------------------------------

    def _drain(self, program: prog.Program, writer: RunWriter, *, everything: bool = False) -> None:
        """Decode and store the records of every ring that is DRAIN_FILL full or has held them for
        DRAIN_AGE (of every ring holding any, if `everything`)."""
        now = time.monotonic()
        for ring, collector, reader in program.readers:
            pending = reader.pending_bytes()
            waited = now - self._drained_at.get(ring.name, 0.0)
            if pending and (everything or pending >= reader.data_size * DRAIN_FILL or waited >= DRAIN_AGE):
                self._drain_ring(ring, collector, reader, writer)
                self._drained_at[ring.name] = now

    def _drain_ring(self, ring: Ring, collector: Collector, reader: RingReader, writer: RunWriter) -> None:
        # One read per pass (another only if it came back full): re-reading while the producer
        # refills the ring would turn a flood into many tiny batches. Decoders copy every column
        # out of the records (tests/test_collector_decoders.py checks), so the ring's memory goes
        # back to the producer as soon as a batch is decoded, before it is stored.
        while True:
            records, nbytes = reader.peek(max_records=self.chunk_rows)
            tables = ring.decode(records, collector.source_name) if len(records) else {}
            del records
            reader.release(nbytes)
            for family, table in tables.items():
                writer.write(family, table)
                self.stats.events[family] = self.stats.events.get(family, 0) + table.num_rows
            if nbytes < self.chunk_rows * reader.stride:  # not a full read (discarded records count)
                break

    def _account_lost(self, program: prog.Program, writer: RunWriter) -> None:
        for ring_name, ring_families, total in program.lost():
            delta = total - self._lost_seen.get(ring_name, 0)
            if delta > 0:
                families = "+".join(ring_families)
                writer.count_lost(families, delta, "BPF ring buffer or in-flight table full")
                self._lost_seen[ring_name] = total
                self.stats.lost[families] = self.stats.lost.get(families, 0) + delta


def _single_version(tracker: QemuTracker | None) -> str | None:
    """The QEMU version when every traced QEMU binary is of one version; None if none or several."""
    if tracker is None:
        return None
    versions = {tb.binary.version for tb in tracker.traced()}
    return versions.pop() if len(versions) == 1 else None


def _hold_probes_until_exit() -> int:
    """Fork a process that holds our probes until we have exited, then releases them.

    The kernel takes ~0.1 s to release each uprobe and ~0.065 s each tracepoint (about 4 s for
    the full set), and it does so when the last reference goes. With the child holding a
    reference, our own detach is immediate and the release runs after the data is on disk, in
    the child's exit. Returns the child's pid.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # do not hold the caller's pipes open
                os.dup2(null, fd)
            os.setsid()
            select.select([os.pidfd_open(parent)], [], [])  # readable once the collector has exited
        finally:
            os._exit(0)  # exit_files() drops the last references: the kernel detaches everything
    return pid


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
