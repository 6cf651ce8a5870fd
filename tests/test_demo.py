"""The bundled modernbert-mini as a real-weights fixture: `mbedge demo` end to end."""

from __future__ import annotations

import re

import numpy as np
from typer.testing import CliRunner

from modernbert_edge.cli import app
from modernbert_edge.demo import SIMILARITY_EXAMPLES
from modernbert_edge.manifest import read_manifest
from modernbert_edge.runtime import load


def test_demo_exports_quantizes_and_runs_the_bundled_model(tmp_path, masked_accuracy):
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

    # int8 masked-token accuracy within a point of fp32's, on text the model has not been scored on.
    scores = {}
    for precision in ("fp32", "int8"):
        model = load(tmp_path / f"fill-mask-{precision}", threads=1)
        name = model.info.outputs[0]

        def predict(ids, mask, positions, model=model, name=name):
            return model.run(ids, mask, mask_positions=positions)[name][0]  # (M, V)

        def encode(texts, model=model):
            return [e.ids for e in model.tokenizer.encode(texts)]

        pad_id, mask_id = model.info.pad_token_id, model.tokenizer.mask_id
        scores[precision] = masked_accuracy(encode, predict, pad_id, mask_id)
    assert scores["fp32"] >= 0.15, scores  # trained weights: a random model scores ~0
    assert abs(scores["int8"] - scores["fp32"]) <= 0.01, scores
