"""The README's "Trace your own QEMU" block, extracted and run as written (root, bcc, KVM, QEMU)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from pipeline.runstore import open_run

ROOT = Path(__file__).resolve().parent.parent


def recipe() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- recipe -->\n```sh\n(.*?)```\n<!-- end:recipe -->", text, re.S)
    assert block, "README.md lacks the <!-- recipe --> block"
    return block.group(1)


@pytest.mark.real
def test_readme_recipe_runs_as_written(tmp_path):
    require(os.geteuid() == 0, "needs root")
    require(Path("/dev/kvm").exists(), "needs /dev/kvm")
    require(shutil.which("qemu-system-x86_64") is not None, "needs qemu-system-x86_64")
    require(shutil.which("socat") is not None, "needs socat (make setup-host installs it)")
    script = recipe()
    work = tmp_path / "recipe"
    script, n = re.subn(r"^W=\S+;", f"W={work};", script, count=1, flags=re.M)
    assert n == 1, "the recipe starts by naming its work directory W"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # Under errexit, except detect's exit 1, which means "found something": the recipe's point.
    script = script.replace("vmemtrace detect $W/run --fail-on critical",
                            "vmemtrace detect $W/run --fail-on critical || [ $? -eq 1 ]")
    res = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = open_run(work / "run")
    rows = run.row_counts()
    assert rows["memslots"] > 0, rows                       # the kernel's view of QEMU's memslot ioctls
    qemu = run.read_family("qemu").to_pylist()
    assert any(r["event"] == "balloon_target" and r["size"] == 256 << 20 for r in qemu), \
        "QEMU's log says the balloon was asked for 256 MiB"
    assert (work / "run" / "report" / "index.html").exists()
    assert "index.html" in res.stdout
