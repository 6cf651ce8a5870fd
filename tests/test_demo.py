"""The bundled modernbert-mini as a real-weights fixture: `mbedge demo` end to end."""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import json
import os
import pathlib
import re
import textwrap

import numpy as np
from typer.testing import CliRunner

from modernbert_edge.cli import app
from modernbert_edge.demo import SIMILARITY_EXAMPLES
from modernbert_edge.manifest import read_manifest
from modernbert_edge.runtime import Model, load
from modernbert_edge.runtime.batching import pad


def docstring_paragraphs() -> list[str]:
    """English prose about Python (the bundled model's domain): standard-library docstring paragraphs."""
    texts = set()
    for module in (str, list, dict, set, json, collections, itertools, os.path, pathlib.Path, re, functools, textwrap):
        for name, obj in inspect.getmembers(module):
            for para in (inspect.getdoc(obj) or "").split("\n\n") if not name.startswith("_") else ():
                para = " ".join(para.split())
                if 8 <= len(para.split()) <= 60 and not para.startswith(">>>"):
                    texts.add(para)
    return sorted(texts)


def masked_accuracy(model: Model, texts: list[str]) -> float:
    """Masked-token top-1 of a fill-mask model: 15 % of each text's inner tokens masked (the same
    ones for every model: seeded), vocabulary logits at the masked rows only."""
    rng = np.random.default_rng(0)
    correct = total = 0
    for i in range(0, len(texts), 16):
        rows = [e.ids for e in model.tokenizer.encode(texts[i : i + 16])]
        ids, mask = pad(rows, model.info.pad_token_id)
        picked = np.zeros(ids.shape, dtype=bool)
        for r, row in enumerate(rows):
            inner = np.arange(1, len(row) - 1)
            picked[r, rng.choice(inner, size=max(1, int(0.15 * len(inner))), replace=False)] = True
        masked = np.where(picked, model.tokenizer.mask_id, ids)
        logits = model.run(masked, mask, mask_positions=np.flatnonzero(picked))[model.info.outputs[0]][0]  # (M, V)
        correct += int((logits.argmax(-1) == ids[picked]).sum())
        total += int(picked.sum())
    assert total > 500, total  # enough masks for a figure to a point
    return correct / total


def test_demo_exports_quantizes_and_runs_the_bundled_model(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    for task in ("fill-mask", "feature-extraction"):
        fp32, int8 = read_manifest(tmp_path / f"{task}-fp32"), read_manifest(tmp_path / f"{task}-int8")
        assert fp32["validation"]["status"] == "passed"  # real weights match PyTorch
        assert int8["precision"] == "int8"
        assert int8["fidelity"]["gate"]["status"] == "passed"
    assert "'3'" in result.output and "'arguments'" in result.output  # trained predictions, fp32 and int8
    assert result.output.count("fp32: '3'") == 1 and result.output.count("int8: '3'") == 1

    # The printed similarities are the models' cosines, pair by pair, and int8 keeps them.
    printed = [tuple(map(float, m)) for m in re.findall(r"^  (\d\.\d{3}) \| (\d\.\d{3})  '", result.output, re.M)]
    pairs = [(i, j) for i in range(len(SIMILARITY_EXAMPLES)) for j in range(i + 1, len(SIMILARITY_EXAMPLES))]
    assert len(printed) == len(pairs)
    for column, precision in enumerate(("fp32", "int8")):
        emb = load(tmp_path / f"feature-extraction-{precision}", threads=1).embed(SIMILARITY_EXAMPLES)
        expected = [float(emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j])) for i, j in pairs]
        np.testing.assert_allclose([p[column] for p in printed], expected, atol=6e-4)
    assert max(abs(a - b) for a, b in printed) <= 0.01

    # int8's masked-token accuracy is within a point of fp32's, and fp32's shows trained weights.
    texts = docstring_paragraphs()
    scores = {p: masked_accuracy(load(tmp_path / f"fill-mask-{p}", threads=1), texts) for p in ("fp32", "int8")}
    assert scores["fp32"] >= 0.15, scores  # a random model scores about 1 / vocabulary
    assert abs(scores["int8"] - scores["fp32"]) <= 0.01, scores


def test_demo_checks_threads_before_exporting(tmp_path):
    """A bad --threads is refused before the exports and quantization (nothing written, no time spent)."""
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--threads", "99999"])
    assert result.exit_code == 2, result.output
    assert "threads must be an integer" in result.output
    assert "[demo]" not in result.output and not (tmp_path / "demo").exists()
