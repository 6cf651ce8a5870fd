"""The bundled modernbert-mini as a real-weights fixture: `mbedge demo` end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from modernbert_edge.cli import app
from modernbert_edge.manifest import read_manifest


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
    assert "Sentence similarity" in result.output and "int8" in result.output


def test_bundled_int8_accuracy_is_recorded_within_a_point():
    from modernbert_edge.demo import BUNDLED

    evaluation = json.loads((BUNDLED / "eval.json").read_text())
    for row in evaluation.values():
        assert row["onnx_fp32"] >= 0.30
        assert abs(row["onnx_int8"] - row["onnx_fp32"]) <= 0.01
