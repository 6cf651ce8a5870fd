"""`mbedge bench` on a tiny checkpoint, and the pieces it is made of."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from modernbert_edge import timing
from modernbert_edge.bench import harness, report
from modernbert_edge.bench.lowerbound import gemm_graph
from modernbert_edge.cli import app
from modernbert_edge.runtime.session import create_session


def test_bench_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "out"
    args = ["bench", "--size", "tiny", "--jobs", "embeddings", "--shapes", "2x48", "--systems", "pytorch,ours-fp32"]
    args += ["--repeats", "2", "--threads", "2", "--out", str(out), "--work", str(tmp_path / "work")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    data = json.loads((out / "results.json").read_text())
    rows = {r["system"]: r for r in data["rows"]}
    assert set(rows) == {"pytorch", "ours-fp32", harness.BOUND}
    for r in rows.values():
        assert r["error"] is None, r
        assert r["job"] == "embeddings" and r["shape"] == "2x48" and r["tokens"] == 96
        assert len(r["times_s"]) == 2 and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
        assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["load_s"] >= 0
    ref_s = float(np.median(rows["pytorch"]["times_s"]))
    for r in rows.values():  # the table's figures are the recorded times' medians (times_s: 10 µs steps)
        median_s = float(np.median(r["times_s"]))
        rel = 1e-5 / median_s + 1e-5 / ref_s + 1e-3
        assert r["median_ms"] == pytest.approx(1e3 * median_s, abs=0.011)
        assert r["tokens_per_s"] == pytest.approx(96 / median_s, rel=rel)
        assert r["speedup_vs_pytorch"] == pytest.approx(ref_s / median_s, rel=rel)
    assert rows["ours-fp32"]["fidelity"]["metric"] == "cosine"
    assert rows["ours-fp32"]["fidelity"]["worst"] > 0.9999  # fp32 export of the same weights
    assert rows["ours-fp32"]["size_mb"] > 0
    assert data["machine"]["threads"] == 2 and data["machine"]["versions"]["onnxruntime"]
    assert data["schema"] == "mbedge.bench.race/1" and data["machine"]["cpu_info"]["int8_kernel_class"]
    # Every target needs a shape or system this run did not time: none may claim a figure.
    assert data["targets"] and all(t["status"] == "not measured" and t["value"] is None for t in data["targets"])

    md = (out / "results.md").read_text()
    assert "| shape | system | median ms |" in md and "modernbert-edge fp32" in md and "## Targets" in md
    if importlib.util.find_spec("matplotlib") is not None:  # optional: the chart is drawn where it is installed
        assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "chart.png").exists()
    assert "target embeddings int8" in result.output
    assert md in result.stdout  # the table on stdout too, not only in results.md


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
    dims = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "vocab_size": 100}
    model = gemm_graph(dims, "fill-mask")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 4 * 2 + 2
    session = create_session(model.SerializeToString())
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


def test_interleave_rotates_and_drops_failures():
    calls = []

    def run(name: str) -> float | None:
        calls.append(name)
        return None if calls.count("b") == 2 and name == "b" else float(len(calls))

    rounds = []
    times = timing.interleave(["a", "b", "c"], 3, run, on_round=rounds.append)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a"]  # round 2 starts at b; b failed there
    assert times == {"a": [1.0, 6.0, 8.0], "b": [2.0], "c": [3.0, 5.0, 7.0]} and rounds == [0, 1, 2]


def test_time_calls_warms_up_and_summarize():
    counts = {"x": 0, "y": 0}

    def bump(name: str):
        return lambda: counts.__setitem__(name, counts[name] + 1)

    times = timing.time_calls({"x": bump("x"), "y": bump("y")}, repeats=4)
    assert counts == {"x": 5, "y": 5} and [len(t) for t in times.values()] == [4, 4]  # one warm-up each
    stats = timing.summarize([0.004, 0.001, 0.003, 0.002, 0.010])
    assert stats["median_ms"] == pytest.approx(3.0) and stats["p90_ms"] == pytest.approx(7.6)


def test_peak_rss_sees_an_allocation():
    code = (
        "import numpy as np; from modernbert_edge.timing import peak_rss_mb; before = peak_rss_mb(); "
        "block = np.ones(200 * 2**20 // 8); print(before, peak_rss_mb())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    assert 10 < before < after - 150  # a fresh process, then 200 MB more


def test_cosines_and_mixed_lengths():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    np.testing.assert_allclose(timing.cosines(a, b), [0.0, 1.0, -1.0])
    assert timing.cosines(a[None], b[None]).shape == (3,)
    lengths = timing.mixed_lengths(500, 16, 20, seed=1)
    assert set(lengths) == set(range(16, 21)) and lengths == timing.mixed_lengths(500, 16, 20, seed=1)


def test_quantization_table(exported_factory, tmp_path):
    """The README's quantization table: fp32, plain quantize_dynamic and ours, on a tiny model."""
    from modernbert_edge.bench import quantization

    src = exported_factory("fill-mask")
    rows = quantization.measure(src, tmp_path, ["int8"], [(2, 16)], repeats=2, log=lambda _m: None)
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["fp32", "quantize_dynamic", "ours int8"]
    assert by_name["ours int8"]["size_mb"] < by_name["fp32"]["size_mb"]
    assert by_name["quantize_dynamic"]["size_mb"] < by_name["fp32"]["size_mb"]
    for name in ("quantize_dynamic", "ours int8"):
        assert by_name[name]["cosine_worst"] > 0.99 and by_name[name]["agreement"] > 0.9
    assert all(r["ms"]["2x16"] > 0 for r in rows)
    table = quantization.format_rows(rows, [(2, 16)]).splitlines()
    assert len(table) == 2 + 3 and "(1.00×)" in table[3]  # the plain baseline against itself


def test_peer_worker_kinds(exported_factory, checkpoint_factory):
    """pytorch-int8 (torch.ao dynamic) and the runtime on OpenVINO, as the bench's workers run them."""
    pytest.importorskip("torch")
    pytest.importorskip("openvino")
    from modernbert_edge.bench import systems as sysmod
    from modernbert_edge.bench.worker import Runner

    assert sysmod.SYSTEMS["pytorch-int8"].kind == "torch-int8"
    assert sysmod.SYSTEMS["ours-openvino-int8"].kind == "openvino"
    assert sysmod.unavailable_reason("ours-openvino-int8") is None
    rows = np.random.default_rng(0).integers(5, 400, size=(2, 48)).tolist()
    case = {"label": "2x48", "rows": rows, "mask_pos": None, "batching": "fixed", "batch_rows": 2}
    outputs = {}
    for kind, path in (
        ("torch", checkpoint_factory("feature-extraction")),
        ("torch-int8", checkpoint_factory("feature-extraction")),
        ("openvino", exported_factory("feature-extraction", ops="portable")),
    ):
        spec = {"kind": kind, "path": str(path), "job": "embeddings", "threads": 1, "architecture": "ModernBertModel"}
        runner = Runner(spec)
        seconds, outputs[kind] = runner.run(case, runner.prepare(case), keep=True)
        assert seconds > 0 and outputs[kind].shape == (2, 64)
    assert timing.cosines(outputs["openvino"], outputs["torch"]).min() > 0.99999  # fp32 graph at f32
    assert timing.cosines(outputs["torch-int8"], outputs["torch"]).min() > 0.9
    assert not np.allclose(outputs["torch-int8"], outputs["torch"], atol=1e-6)  # it did quantize
