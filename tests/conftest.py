"""Shared fixtures: tiny random checkpoints (built once per session) and their exports."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

from modernbert_edge.bench.checkpoints import make_checkpoint

# Property-based tests: a small budget by default (CI); HYPOTHESIS_PROFILE=full runs 10,000 inputs each.
settings.register_profile("ci", max_examples=150, deadline=None)
settings.register_profile("full", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# tests/interop needs .venv-interop's packages; tests/test_interop.py runs it there with this set.
collect_ignore = [] if os.environ.get("MBEDGE_INTEROP") == "1" else ["interop"]


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """make(task, **kwargs) -> checkpoint folder; identical requests share one folder."""
    cache: dict[str, Path] = {}

    def make(task: str = "fill-mask", **kwargs) -> Path:
        key = hashlib.sha1(json.dumps([task, kwargs], sort_keys=True, default=str).encode()).hexdigest()[:12]
        if key not in cache:
            cache[key] = make_checkpoint(tmp_path_factory.mktemp(f"ckpt-{task}-{key}"), task, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported_factory(tmp_path_factory, checkpoint_factory):
    """export(task, ops="contrib", **kwargs) -> exported model folder (validated against PyTorch), cached."""
    from modernbert_edge.export.exporter import export

    cache: dict[str, Path] = {}

    def make(task: str = "fill-mask", ops: str = "contrib", **kwargs) -> Path:
        key = hashlib.sha1(json.dumps([task, ops, kwargs], sort_keys=True, default=str).encode()).hexdigest()[:12]
        if key not in cache:
            out = tmp_path_factory.mktemp(f"model-{task}-{key}") / "model"
            export(str(checkpoint_factory(task, **kwargs)), out, ops=ops, log=lambda _msg: None)
            cache[key] = out
        return cache[key]

    return make


# tests/test_arm64.py's emulated drivers take about three CPU-minutes. They start with the session's
# first test and run beside the rest of the suite; the tests that need them run last and wait for them.
_ARM64_SELECTED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config, items):
    waiting = [item for item in items if "arm64_drivers" in getattr(item, "fixturenames", ())]
    items[:] = [item for item in items if item not in waiting] + waiting
    config.stash[_ARM64_SELECTED] = bool(waiting)


@pytest.fixture(scope="session")
def arm64_drivers(tmp_path_factory):
    """tests/arm64_jobs.py's Drivers: the background run started; results() waits for it."""
    import arm64_jobs

    drivers = arm64_jobs.start(tmp_path_factory.mktemp("arm64"))
    yield drivers
    drivers.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_arm64_drivers_first(request):
    if request.config.stash.get(_ARM64_SELECTED, False):
        request.getfixturevalue("arm64_drivers")
