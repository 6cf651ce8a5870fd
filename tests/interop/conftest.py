"""Fixtures for the interop tests (run in .venv-interop, see .ci/interop-venv.sh): tiny random
checkpoints and their exports, each built once per session. Exports skip the exporter's own PyTorch
check (the main suite covers it): every test here compares with PyTorch or its library itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from modernbert_edge.bench.checkpoints import make_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    cache: dict[str, Path] = {}

    def make(task: str, **kwargs: object) -> Path:
        key = f"{task}-{sorted(kwargs.items())}"
        if key not in cache:
            cache[key] = make_checkpoint(tmp_path_factory.mktemp(f"ckpt-{task}"), task, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """exported(task) -> this project's export of checkpoint(task), built once."""
    from modernbert_edge.export.exporter import export

    cache: dict[str, Path] = {}

    def make(task: str) -> Path:
        if task not in cache:
            cache[task] = tmp_path_factory.mktemp(f"out-{task}") / "model"
            export(str(checkpoint(task)), cache[task], validate=False, log=lambda _m: None)
        return cache[task]

    return make
