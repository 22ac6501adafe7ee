"""A short, bounded pass of the atheris harnesses in fuzz/ (the long runs: ``nox -s fuzz``).

Each harness runs 20,000 inputs (about 1.5 s) mutated from the committed seeds in
a subprocess, as libFuzzer wants the process to itself; a crash fails the test with
libFuzzer's report.  Skipped where atheris has no wheel (it needs Linux x86-64).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
RUNS = 20000


@pytest.mark.parametrize("harness", ["http_request", "websocket_frames"])
def test_harness_survives_a_bounded_run(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"{harness}.py"),
            f"-runs={RUNS}",
            "-max_total_time=30",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),  # new inputs land here, not in the committed seeds
            str(FUZZ / "corpus" / harness),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
