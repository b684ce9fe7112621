"""`vmemtrace collect`: trace real kernel events with eBPF into a run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.runstore import RunError
from vmemtrace.cli.common import RunOpt, counts_text, err, fail


def collect(
    command: Annotated[Optional[list[str]], typer.Argument(
        help="Workload to start and trace with its children; collection stops when it exits.",
        show_default=False)] = None,
    run: RunOpt = ...,
    pid: Annotated[Optional[list[int]], typer.Option("--pid", "-p", help="Trace this process and its "
                                                     "children (repeatable).")] = None,
    comm: Annotated[Optional[str], typer.Option("--comm", help="Trace processes whose name starts with "
                                                "this (e.g. qemu-system), running or started later.")] = None,
    families: Annotated[Optional[list[str]], typer.Option("--families", "-f", help="Only collectors "
                                                          "writing these tables (repeatable).")] = None,
    duration: Annotated[Optional[float], typer.Option("--duration", "-d", help="Stop after this many "
                                                      "seconds.")] = None,
    ring_pages: Annotated[Optional[int], typer.Option(
        help="Pages per BPF ring buffer, for every ring (power of two) [default: each ring's own size, "
             "from what its bursts need].", show_default=False)] = None,
    qemu: Annotated[Optional[str], typer.Option("--qemu", help="QEMU binary whose exported functions get "
                                                "uprobes [default: /usr/bin/qemu-system-x86_64].",
                                                show_default=False)] = None,
    mount: Annotated[bool, typer.Option("--mount", help="Mount tracefs and bpffs if they are not.")] = False,
) -> None:
    """Trace real kernel events with eBPF (bcc) into a run. Needs root.

    `vmemtrace collect --run RUN -- CMD ARGS` traces CMD and its children until it exits, and exits
    with CMD's status. Without CMD, collect runs until --duration passes or SIGINT/SIGTERM; with no
    --pid or --comm it traces every process. Lost events are counted in the manifest and in the
    lost_events table. Exit 2 when the host cannot collect (the message says what to install).
    """
    from collectors.session import Collection, CollectError, preflight

    if not command and duration is None and not (pid or comm):
        fail("give a command after --, or --duration, or --pid/--comm (then stop it with Ctrl-C)")
    try:
        preflight(mount=mount)
        coll = Collection(run, families=families, pids=pid or [], comm=comm, ring_pages=ring_pages,
                          follow_command=bool(command), qemu_binary=qemu)
    except (CollectError, ValueError) as e:
        fail(str(e))

    with err.status("collecting") as status:
        def progress(stats) -> None:
            ev = " ".join(f"{k} {v}" for k, v in sorted(stats.events.items())) or "no events yet"
            lost = sum(stats.lost.values())
            status.update(f"collecting: {ev} | lost {lost}")

        try:
            rc = coll.run(command=command, duration=duration, progress=progress)
        except (CollectError, RunError, ValueError) as e:
            fail(str(e))
    err.print(f"collected into {run}: {counts_text(coll.stats.events)}; lost: {counts_text(coll.stats.lost)}",
              markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(rc)
