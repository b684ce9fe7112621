"""`vmemtrace import ...`: traces users already have, turned into a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.runstore import RunError
from vmemtrace.cli.common import RunOpt, SkipBadOpt, counts_text, fail, out

import_app = typer.Typer(help="Turn traces you already have into a run.", no_args_is_help=True)


@import_app.command("jsonl")
def import_jsonl_cmd(
    files: Annotated[list[Path], typer.Argument(help="JSON Lines trace files, one event per line.",
                                                show_default=False)],
    run: RunOpt,
) -> None:
    """Import JSON Lines events (one object per line, `kind` naming the family).

    The whole input is checked first: a bad line stops the import with its file,
    line number and field, and nothing is written.
    """
    from pipeline.importers import TraceFormatError
    from pipeline.importers.jsonl import import_jsonl

    try:
        counts = import_jsonl(files, run)
    except (TraceFormatError, RunError) as e:
        fail(str(e))
    out.print(f"imported {sum(counts.values())} events into {run} ({counts_text(counts)})", markup=False,
              highlight=False)


@import_app.command("qemu-log")
def import_qemu_log_cmd(
    files: Annotated[list[Path], typer.Argument(help="QEMU trace output: a -D log or stderr (log backend, any "
                                                "prefix form), syslog lines or journalctl output (short, "
                                                "short-iso, short-monotonic, json); gzip accepted.",
                                                show_default=False)],
    run: RunOpt,
    pid: Annotated[Optional[int], typer.Option(help="QEMU's process id [default: the syslog/journal PID, else the "
                                               "process kernel-side events in the run put the log's threads "
                                               "in, else the main thread when the log proves it, else 0 "
                                               "(unknown, said in the manifest)].", show_default=False)] = None,
    comm: Annotated[Optional[str], typer.Option(help="Process name for rows whose thread name the log does not "
                                                "give [default: qemu-system].", show_default=False)] = None,
    clock_offset: Annotated[Optional[int], typer.Option(help="Nanoseconds to subtract from the log's times to get "
                                                        "CLOCK_MONOTONIC [default: aligned on the run's "
                                                        "kernel-side memslot ioctls, else on the clocks a "
                                                        "collector session of the run recorded when the log "
                                                        "lies inside it, else the log keeps its own clock].",
                                                        show_default=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="Host the log was recorded on [default: what syslog or the "
                                                "journal says, else unknown].", show_default=False)] = None,
    kernel: Annotated[Optional[str], typer.Option(help="Kernel release of that host [default: unknown].",
                                                  show_default=False)] = None,
    qemu_version: Annotated[Optional[str], typer.Option(help="QEMU version that wrote the log [default: the QMP "
                                                        "greeting in the log, else unknown].",
                                                        show_default=False)] = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Import QEMU's own trace output: memslots, its view of DMA mappings, balloon, virtio-mem, RAM
    discards, vCPU runs, dirty tracking, PCI config writes.

    A known event whose arguments do not parse stops the import with its file, line and field
    unless --skip-bad; lines that are not trace lines are counted, events outside the catalogue
    are counted by name. Nothing is written when the import is rejected.
    """
    from pipeline.importers import TraceFormatError
    from pipeline.importers.qemu_log import import_qemu_log

    try:
        res = import_qemu_log(files, run, pid=pid, comm=comm, clock_offset_ns=clock_offset, skip_bad=skip_bad,
                              host=host, kernel=kernel, qemu_version=qemu_version)
    except (TraceFormatError, RunError) as e:
        fail(str(e))
    clock = res["clock"]
    if clock["residual_ns"] is None:
        residual = ""
    elif clock["alignment"] == "host":
        residual = f" of collector session {clock['from_session']}, drift {clock['residual_ns']} ns while it ran"
    else:
        residual = f", residual {clock['residual_ns']} ns over {clock['matched_events']} events"
    out.print(f"imported into {run}: {counts_text(res['written'])}; unknown events {sum(res['unknown'].values())}; "
              f"non-trace lines {res['non_trace']}; bad lines {res['bad']}; clock: {clock['domain']} "
              f"(alignment {clock['alignment']}{residual}); pid: {res['pid'] if res['pid'] is not None else 0} "
              f"({res['pid_from']})", markup=False, highlight=False)


@import_app.command("ftrace")
def import_ftrace_cmd(
    files: Annotated[list[Path], typer.Argument(help="tracefs trace / trace_pipe text or trace-cmd report "
                                                "output; gzip accepted.", show_default=False)],
    run: RunOpt,
    trace_clock: Annotated[Optional[str], typer.Option(help="The trace_clock the trace was recorded with, when "
                                                       "the trace does not say; mono gives CLOCK_MONOTONIC "
                                                       "[default: the clock the trace states, else times stay "
                                                       "relative within the file].", show_default=False)] = None,
    clock_offset: Annotated[Optional[int], typer.Option(help="Nanoseconds to subtract from the trace's "
                                                        "times to get CLOCK_MONOTONIC.",
                                                        show_default=False)] = None,
    pid: Annotated[Optional[list[str]], typer.Option(help="PID: QEMU's process id for its threads; TID=PID or "
                                                     "COMM=PID: the process of one thread or thread name "
                                                     "(repeatable) [default: the TGID column, else QEMU's thread "
                                                     "names, else thread ids stand in].", show_default=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="The traced host's name [default: unknown].",
                                                show_default=False)] = None,
    kernel: Annotated[Optional[str], typer.Option(help="The traced host's kernel release [default: unknown].",
                                                  show_default=False)] = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Import ftrace text: discards, MMU notifier, KVM faults/MMIO/SPTEs/KVM_RUN, iommu map/unmap.

    Lines that are not trace lines are counted (manifest non_trace_lines), never lost; a known event
    whose arguments do not match its format stops the import with file, line and field unless
    --skip-bad. Nothing is written to the run unless the whole input was read.
    """
    from pipeline.importers import TraceFormatError
    from pipeline.importers.ftrace import import_ftrace

    try:
        res = import_ftrace(files, run, trace_clock=trace_clock, clock_offset_ns=clock_offset, skip_bad=skip_bad,
                            pids=pid or [], host=host, kernel=kernel)
    except (TraceFormatError, RunError) as e:
        fail(str(e))
    out.print(f"imported into {run}: {counts_text(res['rows'])}; unknown events {sum(res['unknown'].values())}; "
              f"non-trace lines {res['non_trace']}; rejoined lines {res['rejoined']}; bad lines {res['bad']}; "
              f"lost events {res['lost']}; clock: {res['clock']['domain']} ({res['clock']['source']}); "
              f"processes: {res['pid_from']['summary']}", markup=False, highlight=False)
