"""`vmemtrace collect`: trace real kernel events with eBPF into a run."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from vmemtrace.cli.common import RunOpt, counts_text, err, fail, say

# Without a terminal (CI logs, `2> file`), one line of counts this often instead of a spinner.
PLAIN_PROGRESS_SECONDS = 10.0


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
    qemu: Annotated[Optional[list[str]], typer.Option("--qemu", help="Also probe this QEMU binary from the "
                                                      "start, before a traced process runs it (repeatable). "
                                                      "Without it, QEMU probes go on the executable of each "
                                                      "traced process.", show_default=False)] = None,
    mount: Annotated[bool, typer.Option("--mount", help="Mount tracefs and bpffs if they are not.")] = False,
) -> None:
    """Trace real kernel events with eBPF (bcc) into a run. Needs root.

    `vmemtrace collect --run RUN -- CMD ARGS` traces CMD and its children until it exits, and exits
    with CMD's status. Without CMD, collect runs until --duration passes or SIGINT/SIGTERM; with no
    --pid or --comm it traces every process. QEMU's own probes (exported functions, USDT) are
    attached to whichever QEMU binary each traced process runs. Lost events are counted in the
    manifest and in the lost_events table. Exit 2 when the host cannot collect (the message says
    what to install) or the target cannot be traced.
    """
    from collectors.session import Collection, CollectError, preflight

    if not command and duration is None and not (pid or comm):
        fail("give a command after --, or --duration, or --pid/--comm (then stop it with Ctrl-C)")
    try:
        preflight(mount=mount)
        coll = Collection(run, families=families, pids=pid or [], comm=comm, ring_pages=ring_pages,
                          follow_command=bool(command), qemu_binaries=qemu or [], background_detach=True)
    except (CollectError, ValueError) as e:
        fail(str(e))

    last_line = [0.0]  # when plain progress last printed

    def banner(a) -> None:
        last_line[0] = time.monotonic()
        if command:
            target = f"{' '.join(command)} and its children"
        else:
            parts = [f"pid {p}" for p in pid or []] + ([f"processes named {comm}*"] if comm else [])
            target = (" + ".join(parts) + " and their children") if parts else "every process"
        where = f"new run {run}" if a.appending_to is None else \
            f"run {run}, appending session {a.appending_to + 1} to its {a.appending_to}"
        say(f"vmemtrace collect: tracing {target}", to_err=True)
        say(f"  writing to {where}", to_err=True)
        say(f"  collectors: {', '.join(a.collectors)}; tables: {', '.join(a.families)}", to_err=True)
        say(f"  attached {len(a.attached)} probes; missing {len(a.missing)}"
            + (f": {', '.join(a.missing)}" if a.missing else ""), to_err=True)
        say(f"  {a.rings} rings, {a.ring_bytes >> 20} MiB locked", to_err=True)
        say("Ctrl-C to stop." if not command else "Ctrl-C to stop early.", to_err=True)

    def line(stats) -> str:
        ev = counts_text(stats.events) if stats.events else "no events yet"
        return f"{ev} | lost {sum(stats.lost.values())}"

    try:
        if err.is_terminal:
            with err.status("collecting") as status:
                rc = coll.run(command=command, duration=duration, on_attached=banner,
                              say=lambda m: err.print(m, markup=False, highlight=False),
                              progress=lambda stats: status.update(f"collecting: {line(stats)}"),
                              on_detach=lambda: status.update("detaching..."))
        else:
            def plain(stats) -> None:
                if time.monotonic() - last_line[0] >= PLAIN_PROGRESS_SECONDS:
                    say(f"collecting: {line(stats)}", to_err=True)
                    last_line[0] = time.monotonic()

            rc = coll.run(command=command, duration=duration, on_attached=banner, progress=plain,
                          on_detach=lambda: say("detaching...", to_err=True), say=lambda m: say(m, to_err=True))
    except (CollectError, ValueError) as e:
        fail(str(e))
    say(f"collected into {run}: {counts_text(coll.stats.events)}; lost: {counts_text(coll.stats.lost)}"
        f"; detached in {coll.detach_seconds:.2f} s", to_err=True)
    if comm and not coll.comm_matched:
        say(f"vmemtrace: warning: no process named {comm}* ran while collecting", to_err=True)
    raise typer.Exit(rc)
