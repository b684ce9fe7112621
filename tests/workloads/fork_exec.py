"""A traced workload that forks, execs and exits: each stage makes one madvise(MADV_DONTNEED) of a
size that names it, so the collected rows say which process (and which program) made it.

    python -m tests.workloads.fork_exec parent PROOF.json EXEC_PATH
    (EXEC_PATH: a link to the interpreter under another name, so the exec'd program's comm differs)
"""

import json
import os
import sys

from pipeline.constants import MADV_DONTNEED, PAGE_SIZE
from tests.workloads.libc import anon, madvise

SIZES = {"parent": 5 * PAGE_SIZE, "child": 6 * PAGE_SIZE, "exec": 7 * PAGE_SIZE}


def discard(stage: str) -> dict:
    m, addr = anon(SIZES[stage])
    ret = madvise(addr, SIZES[stage], MADV_DONTNEED)
    m.close()
    return {"stage": stage, "pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(),
            "size": SIZES[stage], "ret": ret}


def main() -> None:
    stage, proof = sys.argv[1], sys.argv[2]
    if stage == "exec":
        with open(proof, "a") as f:
            f.write(json.dumps(discard("exec")) + "\n")
        return
    with open(proof, "a") as f:
        f.write(json.dumps(discard("parent")) + "\n")
    child = os.fork()
    if child == 0:
        with open(proof, "a") as f:
            f.write(json.dumps(discard("child")) + "\n")
        os.execv(sys.argv[3], [sys.argv[3], "-m", "tests.workloads.fork_exec", "exec", proof])
    _, status = os.waitpid(child, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
