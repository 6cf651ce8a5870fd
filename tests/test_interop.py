"""Runs tests/interop in .venv-interop (optimum and sentence-transformers need transformers < 4.58;
.ci/interop-venv.sh builds it). Skipped, with the reason, where the venv is absent, except in CI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-interop" / "bin" / "python"


def test_interop_suite_passes() -> None:
    if not PYTHON.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PYTHON} is missing: CI must build it with .ci/interop-venv.sh")
        pytest.skip("no .venv-interop: build it with `bash .ci/interop-venv.sh` to run the interop tests")
    proc = subprocess.run(
        [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "interop")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MBEDGE_INTEROP": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
