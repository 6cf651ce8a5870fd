"""`mbedge bench MODEL_DIR ...` on tiny folders: fp32, our int8, and onnxruntime's quantize_dynamic of
the same graph in a folder made elsewhere. Every figure of results.json is recomputed here from the
call times it records; nothing here asserts a speed."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from modernbert_edge.bench import folders
from modernbert_edge.cli import app
from modernbert_edge.cpu import cpu_info

TEXTS = [
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "def add(a, b): return a + b",
    "Water boils at 100 degrees Celsius at sea level.",
    "hello",
]


@pytest.fixture(scope="module")
def three_folders(exported_factory, tmp_path_factory):
    """fp32 (mbedge export), int8 (mbedge quantize) and a quantize_dynamic folder without a manifest."""
    from modernbert_edge.quantize.foreign import quantize_dynamic_int8
    from modernbert_edge.quantize.quantizer import quantize

    fp32 = exported_factory("feature-extraction")
    root = tmp_path_factory.mktemp("bench-folders")
    int8 = root / "int8"
    quantize(fp32, int8, log=lambda _m: None)
    dynamic = root / "dynamic"  # as optimum's ORTQuantizer writes it: model_quantized.onnx, config, tokenizer
    dynamic.mkdir()
    quantize_dynamic_int8(fp32 / "model.onnx", dynamic / "model_quantized.onnx")
    for f in fp32.iterdir():
        if f.is_file() and f.name not in ("model.onnx", "manifest.json"):
            shutil.copy(f, dynamic / f.name)
    texts = root / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    return fp32, int8, dynamic, texts


def _bench(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


def test_three_folders_every_figure_from_the_recorded_times(three_folders, tmp_path):
    fp32, int8, dynamic, texts = three_folders
    out = tmp_path / "out"
    sizes, repeats = [1, 3], 3
    result = _bench(fp32, int8, dynamic, "--input", texts, "--batch-sizes", "3,1", "--repeats", repeats,
                    "--threads", 1, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == folders.SCHEMA and data["task"] == "feature-extraction"
    assert data["machine"]["cpu_info"] == cpu_info().to_dict() and data["machine"]["cpu_line"] == cpu_info().line()
    assert data["machine"]["versions"]["onnxruntime"] and data["machine"]["threads"] == 1
    assert data["settings"]["reference"] == str(fp32) and data["inputs"] == {"source": str(texts), "count": 5}

    labels = [str(fp32), str(int8), str(dynamic)]
    rows = data["rows"]
    assert [(r["folder"], r["batch_size"]) for r in rows] == [(f, b) for b in sizes for f in labels]
    by_folder = {f["folder"]: f for f in data["folders"]}
    assert by_folder[str(dynamic)]["model_file"] == "model_quantized.onnx"
    assert by_folder[str(dynamic)]["precision"] == by_folder[str(int8)]["precision"] == "int8"
    tokenizer = Tokenizer.from_file(str(fp32 / "tokenizer.json"))
    tokens = [len(tokenizer.encode(t).ids) for t in TEXTS]
    for r in rows:
        assert r["error"] is None and r["task"] == "feature-extraction" and r["engine"] == "onnxruntime"
        b = r["batch_size"]
        calls = math.ceil(len(TEXTS) / b)  # every text once, in calls of exactly b texts (wrapping around)
        assert r["calls_per_pass"] == calls and r["texts_per_pass"] == calls * b
        assert r["tokens_per_pass"] == sum(tokens[i % len(TEXTS)] for i in range(calls * b))
        assert len(r["times_s"]) == repeats and all(len(p) == calls for p in r["times_s"])
        assert r["cold_s"] == r["warmup_s"][0] and len(r["warmup_s"]) == calls
        every = np.array([t for p in r["times_s"] for t in p])
        per_pass = np.array([sum(p) for p in r["times_s"]])
        assert r["calls"] == every.size
        for q in (50, 90, 99):
            assert r[f"p{q}_ms"] == pytest.approx(1e3 * np.percentile(every, q), rel=1e-9)
        assert r["texts_per_s"] == pytest.approx(np.median(calls * b / per_pass), rel=1e-9)
        assert r["tokens_per_s"] == pytest.approx(np.median(r["tokens_per_pass"] / per_pass), rel=1e-9)
        assert r["texts_per_s_std"] == pytest.approx(np.std(calls * b / per_pass), rel=1e-9, abs=1e-9)
        assert r["peak_rss_mb"] >= r["load_rss_mb"] > 0 and r["load_s"] > 0 and r["size_mb"] > 0
    # fidelity: against the first folder, the same for each of its rows
    for r in rows:
        f = r["fidelity"]
        if r["folder"] == str(fp32):
            assert f == {"metric": "reference"}
        else:
            assert f["metric"] == "cosine" and f["n"] == 5 and 0.99 < f["worst"] <= f["mean"] <= 1.0 + 1e-6

    table = result.output.splitlines()
    assert table[0].split()[:3] == ["folder", "batch", "engine"] and "fidelity" in table[0]
    assert sum(str(dynamic) in line for line in table) == len(sizes)
    md = (out / "results.md").read_text()
    assert "| folder | batch | engine |" in md and md.count(f"| {dynamic} |") == len(sizes)
    assert cpu_info().line() in md and "reference" in md and "cos 0." in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart skipped" in result.output
    else:
        assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_folder_that_does_not_load_is_one_line(three_folders, tmp_path):
    fp32, _, _, texts = three_folders
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    out = tmp_path / "out"
    result = _bench(fp32, broken, "--input", texts, "--batch-sizes", "1,2", "--repeats", 1, "--threads", 1,
                    "--out", out)  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith(str(broken))]
    assert len(lines) == 1 and "load failed" in lines[0] and "manifest.json" in lines[0]
    assert "error: 1 of 2 folders failed" in result.output
    data = json.loads((out / "results.json").read_text())
    measured = [r for r in data["rows"] if r["error"] is None]
    assert [r["batch_size"] for r in measured] == [1, 2] and all(r["folder"] == str(fp32) for r in measured)


def test_reference_outside_the_folders_runs_untimed(three_folders, tmp_path):
    fp32, int8, _, texts = three_folders
    result = _bench(int8, "--reference", fp32, "--input", texts, "--batch-sizes", 2, "--repeats", 1,
                    "--threads", 1, "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["folder"] for r in data["rows"]] == [str(int8)] and data["rows"][0]["fidelity"]["metric"] == "cosine"
    assert [f.get("reference", False) for f in data["folders"]] == [False, True]
    assert f"{fp32}  reference (not timed)" in result.output


def test_folders_of_different_tasks_are_refused_unless_embed(three_folders, exported_factory, tmp_path):
    fp32, _, _, texts = three_folders
    fill_mask = exported_factory("fill-mask")
    # a fill-mask graph has no hidden states: no advice to embed it, one sentence, nothing written
    result = _bench(fp32, fill_mask, "--input", texts, "--repeats", 1, "--out", tmp_path / "a")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "hold different tasks" in result.output and "--task embed" not in result.output
    assert "cannot be compared" in result.output
    assert not (tmp_path / "a").exists()
    result = _bench(fp32, fill_mask, "--task", "embed", "--input", texts, "--batch-sizes", 2, "--repeats", 1,
                    "--threads", 1, "--out", tmp_path / "b")  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--task embed needs graphs that output hidden states, and {fill_mask} does not" in result.output
    assert not (tmp_path / "b").exists()
    # graphs that all output hidden states (folders made elsewhere may): the advice to embed them holds
    loaded = {"#0": {"folder": "a", "task": "feature-extraction"}, "#1": {"folder": "b", "task": "fill-mask"}}
    hidden = {"last_hidden_state": ["batch", "sequence", 64]}
    outputs = {"#0": hidden, "#1": {**hidden, "logits": ["batch", "sequence", 100]}}
    with pytest.raises(folders.UserError, match="pass --task embed to compare their embeddings"):
        folders._common_task(None, loaded, outputs)


def test_missing_folders_are_refused_before_anything_runs(three_folders, tmp_path):
    fp32, _, _, texts = three_folders
    nope = tmp_path / "nope"
    (tmp_path / "file").write_text("x")
    cases = [
        ((fp32, nope), f"MODEL_DIR {nope} does not exist"),
        ((fp32, tmp_path / "file"), f"MODEL_DIR {tmp_path / 'file'} is not a folder"),
        ((fp32, "--reference", nope), f"--reference {nope} does not exist"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = _bench(*args, "--input", texts, "--repeats", 1, "--out", out)
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.count("\n") == 1 and "loading" not in result.output
        assert not out.exists()


def test_classifiers_whose_heads_differ_are_refused(exported_factory, tmp_path):
    three = exported_factory("text-classification", num_labels=3)
    one = exported_factory("text-classification", num_labels=1)
    result = _bench(three, one, "--repeats", 1, "--batch-sizes", 1, "--threads", 1, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "text-classification heads differ in size" in result.output and "label agreement" not in result.output
    assert not (tmp_path / "out").exists()


def test_options_of_the_other_mode_are_refused(tmp_path):
    result = _bench(tmp_path, "--size", "tiny")
    assert result.exit_code == 2 and "--size applies to the peer race" in result.output
    result = _bench("--batch-sizes", "1,8")
    assert result.exit_code == 2 and "--batch-sizes applies to model folders" in result.output


def test_rounds_are_interleaved():
    """Each round runs every folder once, the first folder rotating; a folder that fails drops out."""
    order = []

    class Fake:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def call(self, *_msg):
            order.append(self.name)
            if self.fail and order.count(self.name) == 2:
                raise RuntimeError("boom")
            return "done", [0.001, 0.002], {}

    workers = {"a": Fake("a"), "b": Fake("b", fail=True), "c": Fake("c")}
    recorded = folders._rounds(workers, {"label": "batch 1"}, ["a", "b", "c"], 3, lambda _m: None)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a"]
    assert recorded["a"] == [[0.001, 0.002]] * 3 and recorded["b"] == "run failed: boom"


def test_fidelity_measures(tmp_path):
    assert folders.fidelity("fill-mask", [[1, 2], [3]], [[1, 5], [3]])["mean"] == pytest.approx(2 / 3)
    labels = folders.fidelity("text-classification", [{"a": 0.9, "b": 0.1}], [{"a": 0.4, "b": 0.6}])
    assert labels["mean"] == 0.0 and labels["max_diff"] == pytest.approx(0.5)
    spans = folders.fidelity("token-classification", [[(0, 3, "PER")], []], [[(0, 3, "PER"), (5, 9, "LOC")], []])
    assert spans["mean"] == pytest.approx(2 / 3)
    assert folders.fidelity("question-answering", [(1, 4), (2, 3)], [(1, 4), (2, 5)])["mean"] == 0.5
    (tmp_path / "onnx").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "onnx" / "model_quantized.onnx").write_bytes(b"")
    hub = folders.target(str(tmp_path / "onnx" / "model_quantized.onnx"))  # a Hub layout's model file
    assert (hub.folder, hub.file) == (tmp_path, "onnx/model_quantized.onnx")
    assert folders.target(str(tmp_path)) == folders.Target(str(tmp_path), tmp_path)
