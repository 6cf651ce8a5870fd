"""Fixtures for the interop tests (run in .venv-interop, see .ci/interop-venv.sh): tiny random
checkpoints, turned into sentence-transformers models and cross-encoders here."""

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
