"""`mbedge bench` on a tiny checkpoint, and the pieces it is made of."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from modernbert_edge.bench import harness, report
from modernbert_edge.bench.lowerbound import gemm_graph
from modernbert_edge.cli import app


def test_bench_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "out"
    args = ["bench", "--size", "tiny", "--jobs", "embeddings", "--shapes", "2x48", "--systems", "pytorch,ours-fp32"]
    args += ["--repeats", "1", "--out", str(out), "--work", str(tmp_path / "work")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    data = json.loads((out / "results.json").read_text())
    rows = {r["system"]: r for r in data["rows"]}
    assert set(rows) == {"pytorch", "ours-fp32", harness.BOUND}
    for r in rows.values():
        assert r["error"] is None, r
        assert r["job"] == "embeddings" and r["shape"] == "2x48" and r["tokens"] == 96
        assert len(r["times_s"]) == 1 and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
        assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["load_s"] >= 0
    assert rows["pytorch"]["speedup_vs_pytorch"] == 1.0
    assert rows["ours-fp32"]["fidelity"]["metric"] == "cosine"
    assert rows["ours-fp32"]["fidelity"]["worst"] > 0.9999  # fp32 export of the same weights
    assert rows["ours-fp32"]["size_mb"] > 0
    assert data["machine"]["threads"] == 2 and data["machine"]["versions"]["onnxruntime"]
    assert {t["status"] for t in data["targets"]} <= {"met", "NOT met", "not measured"}

    md = (out / "results.md").read_text()
    assert "| shape | system | median ms |" in md and "modernbert-edge fp32" in md and "## Targets" in md
    if (out / "chart.png").exists():  # matplotlib is optional
        assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target embeddings int8" in result.output


def test_bad_shape_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--size", "tiny", "--shapes", "8by128", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "8by128" in result.output and "Traceback" not in result.output


def test_mixed_rows_and_masks():
    tokens = harness.Tokens(vocab=512, cls=1, sep=2, pad=3, mask=4)
    (mixed,) = harness.parse_shapes("mixed")
    rows, positions = harness.make_rows(mixed, tokens, fill_mask=True)
    lengths = [len(r) for r in rows]
    assert len(rows) == harness.MIXED_TEXTS and min(lengths) >= 16 and max(lengths) <= 1000
    assert all((r == 4).sum() == 1 and r[p] == 4 for r, p in zip(rows, positions, strict=True))
    assert all(r[0] == 1 and r[-1] == 2 for r in rows)
    again, _ = harness.make_rows(mixed, tokens, fill_mask=True)
    assert all(np.array_equal(a, b) for a, b in zip(rows, again, strict=True))  # fixed seed
    assert [s.label for s in harness.parse_shapes("1x128, 8x128,mixed")] == ["1x128", "8x128", "mixed"]


def test_gemm_graph_runs():
    import onnxruntime as ort

    dims = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "vocab_size": 100}
    model = gemm_graph(dims, "fill-mask")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 4 * 2 + 2
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden, logits = session.run(None, {"x": np.ones((5, 32), np.float32), "h": np.ones((2, 32), np.float32)})
    assert hidden.shape == (5, 32) and logits.shape == (2, 100)  # the decoder runs on the masked rows only


def test_target_checks():
    def row(shape: str, system: str, ms: float, **kw) -> dict:
        return {"job": "embeddings", "shape": shape, "system": system, "median_ms": ms, "error": None, **kw}

    rows = [
        row("8x128", "pytorch", 700.0),
        row("8x128", "ours-int8", 100.0),
        row("8x128", "trace-int8", 150.0),
        row("8x128", "int8-gemm-bound", 80.0),
        row("mixed", "ours-int8", 1.0, tokens_per_s=3000.0),
        row("mixed", "ours-int8-padded", 1.0, tokens_per_s=1000.0),
    ]
    by_name = {t["target"]: t for t in report.check_targets(rows)}
    assert by_name["embeddings int8 ≥ 6× PyTorch eager at 8×128"]["status"] == "met"
    assert by_name["embeddings int8 ≥ 2× traced int8 at every shape"]["status"] == "NOT met"
    assert by_name["embeddings int8 ≥ 4× PyTorch eager at 1×2048"]["status"] == "not measured"
    assert by_name["embeddings mixed batch int8 tokens/s ≥ 1.5× same graph, input order, padded"]["value"] == 3.0
    assert by_name["embeddings int8 full model ≤ 1.5× its int8-GEMM lower bound at 8×128"]["status"] == "met"
