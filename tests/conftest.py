"""Shared fixtures: tiny random checkpoints (built once per session) and their exports."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modernbert_edge.bench.checkpoints import make_checkpoint


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
    """export(task, **kwargs) -> exported model folder (validated against PyTorch), cached."""
    from modernbert_edge.export.exporter import export

    cache: dict[str, Path] = {}

    def make(task: str = "fill-mask", **kwargs) -> Path:
        key = hashlib.sha1(json.dumps([task, kwargs], sort_keys=True, default=str).encode()).hexdigest()[:12]
        if key not in cache:
            out = tmp_path_factory.mktemp(f"model-{task}-{key}") / "model"
            export(str(checkpoint_factory(task, **kwargs)), out, log=lambda _msg: None)
            cache[key] = out
        return cache[key]

    return make


def _docstring_paragraphs() -> list[str]:
    """English prose about Python (the bundled model's domain): standard-library docstring paragraphs."""
    import collections
    import functools
    import inspect
    import itertools
    import os
    import pathlib
    import re
    import textwrap

    texts = set()
    for module in (str, list, dict, set, json, collections, itertools, os.path, pathlib.Path, re, functools, textwrap):
        for name, obj in inspect.getmembers(module):
            for para in (inspect.getdoc(obj) or "").split("\n\n") if not name.startswith("_") else ():
                para = " ".join(para.split())
                if 8 <= len(para.split()) <= 60 and not para.startswith(">>>"):
                    texts.add(para)
    return sorted(texts)


@pytest.fixture(scope="session")
def masked_accuracy():
    """accuracy(encode, predict, pad_id, mask_id) -> masked-token top-1 on standard-library docstrings.

    encode(texts) -> token-id rows; predict(masked ids (B, S), mask (B, S), flat positions (M,)) -> (M, V)
    logits. 15 % of each row's inner tokens are masked, the same ones for every model (seeded)."""
    import numpy as np

    from modernbert_edge.runtime.batching import pad

    texts = _docstring_paragraphs()

    def accuracy(encode, predict, pad_id: int, mask_id: int) -> float:
        rng = np.random.default_rng(0)
        correct = total = 0
        for i in range(0, len(texts), 16):
            rows = encode(texts[i : i + 16])
            ids, mask = pad(rows, pad_id)
            picked = np.zeros(ids.shape, dtype=bool)
            for r, row in enumerate(rows):
                inner = np.arange(1, len(row) - 1)
                picked[r, rng.choice(inner, size=max(1, int(0.15 * len(inner))), replace=False)] = True
            masked = np.where(picked, mask_id, ids)
            logits = predict(masked, mask, np.flatnonzero(picked))
            correct += int((logits.argmax(-1) == ids[picked]).sum())
            total += int(picked.sum())
        assert total > 500, total  # enough masks for a figure to a point
        return correct / total

    return accuracy
