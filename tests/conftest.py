import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmemtrace.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
ON_CI = os.environ.get("CI") == "true"


@pytest.fixture
def cli():
    """Run the real `vmemtrace` CLI in-process: cli("detect", run) -> Result (exit_code, stdout)."""
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def require(condition: bool, reason: str) -> None:
    """Skip a real-event test that cannot run here; under CI (CI=true) that is a failure."""
    if condition:
        return
    if ON_CI:
        pytest.fail(f"CI can trace real events, but: {reason}")
    pytest.skip(reason)


def require_bcc() -> None:
    """Skip (fail under CI) a real-event test when bcc's Python module is not importable."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "bcc is not importable (make setup-host)")
