"""mbedge quantize: every mode on tiny models, the fidelity gate, the outlier-stress model, sizes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from modernbert_edge.cpu import KERNEL_CLASSES, cpu_info
from modernbert_edge.errors import UserError
from modernbert_edge.export import names
from modernbert_edge.export.names import FINAL_HIDDEN
from modernbert_edge.export.tasks import TASKS
from modernbert_edge.quantize import graph as qg
from modernbert_edge.quantize import weights
from modernbert_edge.quantize.calibration import Batch, read_texts
from modernbert_edge.quantize.foreign import quantize_dynamic_int8
from modernbert_edge.quantize.kernels import PAIR_LIMIT, pair_check
from modernbert_edge.quantize.projections import find_absorbers, find_projections, load_initializers
from modernbert_edge.quantize.quantizer import quantize
from modernbert_edge.quantize.smoothing import ERROR_TARGET, ActivationStats, choose_smoothing
from modernbert_edge.runtime.session import create_session

QUIET = {"log": lambda _m: None}
LAYER_PROJECTIONS = (names.ATTN_QKV, names.ATTN_OUT, names.MLP_IN, names.MLP_OUT)


def _run(folder: Path, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    manifest = json.loads((folder / "manifest.json").read_text())
    sess = create_session(folder / manifest["model_file"])
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})


def _ops(folder: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


HEAD_PROJECTIONS = {"head.": names.HEAD_DENSE, "decoder.": names.DECODER, "classifier.": names.CLASSIFIER}
EMITTED = {  # the node the rewrite emits for each quantized projection, by the suffix of its name
    "DynamicQuantizeMatMul": "/DynamicQuantizeMatMul",
    "QuantizeLinear": "/input/QuantizeLinear",
    "MatMulNBits": "/MatMulNBits",
}


def expected_projections(task: str, n_layers: int) -> list[str]:
    """Every projection of every layer, then the head's (from the task's checkpoint tensors)."""
    layers = [names.projection(i, part) for i in range(n_layers) for part in LAYER_PROJECTIONS]
    return layers + [HEAD_PROJECTIONS[k] for k in TASKS[task].head_keys]


def quantized_projections(model: onnx.ModelProto) -> list[str]:
    """The projections the rewrite replaced, one entry per emitted quantized node."""
    return [
        n.name.removesuffix(suffix)
        for n in model.graph.node
        for op, suffix in EMITTED.items()
        if n.op_type == op and n.name.endswith(suffix)
    ]


@pytest.mark.parametrize(
    "task, mode",
    [
        *((task, "int8") for task in sorted(TASKS)),
        ("fill-mask", "int8-static"),
        ("fill-mask", "int4"),
        ("text-classification", "int4"),
        ("token-classification", "int8-static"),
    ],
)
def test_every_projection_of_every_task_is_quantized(exported_factory, tmp_path, task, mode):
    """The quantizer finds each projection by export's names and treats it: none left in float but
    the classifier (kept on purpose), smoothing folded into norms and earlier weights, not Muls."""
    src = exported_factory(task)
    out = tmp_path / "q"
    manifest = quantize(src, out, mode=mode, **QUIET)
    assert manifest["precision"] == mode and manifest["fidelity"]["gate"]["status"] == "passed"
    assert {"model.onnx", "manifest.json", "config.json", "tokenizer.json"} <= {f.name for f in out.iterdir()}
    _assert_every_kernel_class_covered(manifest, out)
    n_layers = manifest["config"]["num_hidden_layers"]
    expected = expected_projections(task, n_layers)
    floats = [names.CLASSIFIER] if names.CLASSIFIER in expected else []
    q = manifest["quantization"]
    assert q["float_layers"] == floats
    assert sorted(q["projections"]) == sorted(expected)
    assert sorted(quantized_projections(onnx.load(str(out / "model.onnx")))) == sorted(set(expected) - set(floats))
    assert len(expected) - len(floats) == 4 * n_layers + {"feature-extraction": 0, "fill-mask": 2}.get(task, 1)

    fp32 = onnx.load(str(src / "model.onnx"))
    absorbers = find_absorbers(fp32, find_projections(fp32, load_initializers(fp32)))
    for i in range(n_layers):
        for part in LAYER_PROJECTIONS:
            kind = "columns" if part in (names.ATTN_OUT, names.MLP_OUT) else "norm"
            if (i, part) == (0, names.ATTN_QKV):
                kind = "mul"  # layer 0 has no attn_norm: its input is the residual stream itself
            assert absorbers[names.projection(i, part)].kind == kind, (i, part)

    ops = _ops(out)
    ref_ops = _ops(src)
    for op in ("MultiHeadAttention", "GroupQueryAttention", "Attention"):
        assert ops[op] == ref_ops[op]  # attention products stay float
    # Same contract as fp32, close outputs on a padded batch.
    rng = np.random.default_rng(0)
    ids = rng.integers(5, manifest["config"]["vocab_size"], size=(2, 40))
    mask = np.ones_like(ids)
    mask[1, 25:] = 0
    ref, got = _run(src, ids, mask), _run(out, ids, mask)
    assert [r.shape for r in ref] == [g.shape for g in got]
    for r, g in zip(ref, got, strict=True):
        rel = 0.15 if mode == "int4" else 0.05
        assert np.abs(r - g).max() <= rel * np.abs(r).max() + 1e-3


def test_runtime_loads_every_mode(exported_factory, tmp_path):
    import modernbert_edge

    src = exported_factory("fill-mask")
    for mode in ("int8", "int8-static", "int4"):
        out = tmp_path / mode
        quantize(src, out, mode=mode, **QUIET)
        model = modernbert_edge.load(out)
        assert model.info.precision == mode
        res = model.run(np.array([[1, 40, 41, 42, 2]]), np.ones((1, 5), dtype=np.int64))
        assert np.isfinite(next(iter(res.values()))).all()


def test_int8_size_and_tied_table(exported_factory, tmp_path):
    src = exported_factory("fill-mask")
    quantize(src, tmp_path / "q", **QUIET)
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    table = "model.embeddings.tok_embeddings.weight"
    assert table not in inits and f"{table}_quantized" in inits  # stored once, in int8
    fp32 = onnx.load(str(src / "model.onnx"))
    params = sum(int(np.prod(t.dims)) for t in fp32.graph.initializer if not t.name.startswith("/"))
    weight_bytes = sum(
        len(t.raw_data) for t in model.graph.initializer if not t.name.startswith(("/model/rotary", "/const"))
    )
    assert weight_bytes <= 1.25 * params  # about one byte per parameter (plus scales and norms)


def _assert_every_kernel_class_covered(manifest: dict, folder: Path) -> None:
    """No int8 weight pair of the folder can saturate AVX2's int16 pair sums, so the gate covers both
    kernel classes with the measured figure, and the manifest says so."""
    kc = manifest["fidelity"]["kernel_classes"]
    check = pair_check(onnx.load(str(folder / "model.onnx")))
    assert check == kc["weights"] and (check["int8_weights"] > 0 or manifest["precision"] == "int4")
    assert check["overflowing_pairs"] == 0 and check["largest_pair_sum"] <= PAIR_LIMIT
    assert kc["cpu"]["int8_kernel_class"] == cpu_info().kernel_class
    assert {c: e["cosine_worst"] for c, e in kc["classes"].items()} == dict.fromkeys(
        KERNEL_CLASSES, manifest["fidelity"]["cosine_worst"]
    )
    assert manifest["fidelity"]["gate"]["kernel_classes"] == sorted(KERNEL_CLASSES)


def _bad_int8(w_kn, product=True):  # three levels per column instead of 255
    amax = np.abs(w_kn).max(axis=0)
    scale = np.where(amax > 0, amax, 1.0).astype(np.float32)
    return np.clip(np.rint(w_kn / scale), -1, 1).astype(np.int8), scale


def test_gate_fails_and_force_writes(exported_factory, tmp_path, monkeypatch):
    src = exported_factory("fill-mask")
    monkeypatch.setattr(weights, "quantize_int8_columns", _bad_int8)
    with pytest.raises(UserError, match="below --min-cosine"):
        quantize(src, tmp_path / "bad", fallback=False, **QUIET)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))  # nothing left behind
    manifest = quantize(src, tmp_path / "forced", fallback=False, force=True, **QUIET)
    assert manifest["fidelity"]["gate"]["status"] == "forced"
    assert json.loads((tmp_path / "forced" / "manifest.json").read_text())["fidelity"]["cosine_worst"] < 0.99


def _final_hidden(model: onnx.ModelProto, batches: list[Batch]) -> np.ndarray:
    """(tokens, D) the final hidden state of every real token (the graph keeps them unpadded)."""
    from modernbert_edge.quantize.smoothing import session_with_outputs

    sess = session_with_outputs(model, [FINAL_HIDDEN])
    rows = [sess.run([FINAL_HIDDEN], b.feeds())[0] for b in batches]
    assert [r.shape[1] for r in rows] == [int(b.attention_mask.sum()) for b in batches]
    return np.concatenate([r[0] for r in rows])


def test_outlier_stress(checkpoint_factory, tmp_path):
    """Residual channels ~20-50x the rest (LayerNorm outputs ten times more): plain dynamic int8
    falls below the gate, ours stays above it.

    initializer_range 0.04 lets the layers write more into the residual stream than a 0.02 init
    does, so that errors in them show; the model stays well conditioned (1 % weight noise keeps
    every token's cosine above 0.999)."""
    from modernbert_edge.export.exporter import export
    from modernbert_edge.quantize.calibration import load_data
    from modernbert_edge.quantize.fidelity import compare_models, load_model
    from modernbert_edge.quantize.foreign import quantize_dynamic_int8

    ckpt = checkpoint_factory(
        "fill-mask",
        outlier_channels=3,
        outlier_scale=40,
        hidden_size=128,
        intermediate_size=192,
        initializer_range=0.04,
    )
    src = tmp_path / "fp32"
    export(str(ckpt), src, validate=False, log=lambda _m: None)
    manifest = quantize(src, tmp_path / "int8", fallback=False, **QUIET)
    fp32, man = load_model(src)
    data = load_data(src, man, None)

    size = np.abs(_final_hidden(fp32, [*data.calibration, *data.heldout])).mean(axis=0)
    outliers = np.argsort(size)[-3:]
    assert 20 <= size[outliers].min() / np.delete(size, outliers).mean() <= 50  # the stress the issue asks for

    baseline = quantize_dynamic_int8(src / "model.onnx", tmp_path / "plain.onnx")
    plain = compare_models(fp32, onnx.load(str(baseline)), "fill-mask", data)
    assert manifest["fidelity"]["cosine_worst"] >= 0.99 > plain["cosine_worst"] + 0.01, plain["cosine_worst"]


def test_int4_packing_matches_matmulnbits():
    rng = np.random.default_rng(0)
    k, n = 64, 24
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed, scale = weights.quantize_int4_blocks(w)
    deq = dequantize_int4_blocks(packed, scale, k)
    assert np.abs(deq - w).max() <= np.abs(w).max() / 7
    node = onnx.helper.make_node(
        "MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=32
    )
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, n])],
        [onnx.numpy_helper.from_array(packed, "b"), onnx.numpy_helper.from_array(scale, "s")],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 20), onnx.helper.make_opsetid("com.microsoft", 1)]
    )
    x = rng.standard_normal((3, k)).astype(np.float32)
    y = create_session(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ deq, rtol=1e-4, atol=1e-4)


def test_calibration_file_formats(tmp_path):
    five = [f"line {i}" for i in range(5)]
    (tmp_path / "a.txt").write_text("\n\n".join(five) + "\n")
    assert read_texts(tmp_path / "a.txt") == five
    (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in five))
    assert read_texts(tmp_path / "b.jsonl") == five
    (tmp_path / "c.jsonl").write_text('{"label": 1}\n{"text": "two"}\n')
    with pytest.raises(UserError, match="line 1"):
        read_texts(tmp_path / "c.jsonl")
    # Every fifth text is held out, so four are too few, and the message says why (it said "at least 2").
    (tmp_path / "d.txt").write_text("\n".join(five[:4]))
    with pytest.raises(UserError, match="has 4 texts; give at least 5 .*held out"):
        read_texts(tmp_path / "d.txt")
    with pytest.raises(UserError, match="is a folder; give a file of texts"):
        read_texts(tmp_path)


def test_cli_quantize_and_compare(exported_factory, tmp_path):
    from typer.testing import CliRunner

    from modernbert_edge.cli import app

    src = exported_factory("text-classification")
    runner = CliRunner()
    res = runner.invoke(app, ["quantize", str(src), str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(src), str(tmp_path / "q")])
    assert res.exit_code == 0 and "label agreement" in res.output and "token cosine, worst" in res.output
    res = runner.invoke(app, ["quantize", str(src), str(tmp_path / "q2"), "--min-cosine", "1"])
    assert res.exit_code == 2 and "below --min-cosine" in res.output
    res = runner.invoke(app, ["quantize", str(tmp_path / "q"), str(tmp_path / "q3")])
    assert res.exit_code == 2 and "fp32" in res.output


def test_per_token_scales_keep_small_tokens():
    """One int8 scale per tensor crushes small tokens; per-token scaling keeps every row's error small."""
    rng = np.random.default_rng(0)
    k, n = 64, 32
    w = rng.standard_normal((k, n)).astype(np.float32)
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="/p/MatMul")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, n])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    inits = load_initializers(model)
    projections = find_projections(model, inits)
    x = rng.standard_normal((16, k)).astype(np.float32) * np.logspace(-3, 2, 16, dtype=np.float32)[:, None]
    x[3] = 0.0  # an all-zero token must stay finite
    errors = {}
    for per_token in (set(), {"/p"}):
        plan = qg.QuantPlan("int8", tuple(qg.ProjectionPlan(p, per_token=p.name in per_token) for p in projections))
        q = qg.rewrite(model, inits, plan)
        ops = Counter(nd.op_type for nd in q.graph.node)
        assert ops["DynamicQuantizeMatMul"] == 1 and ops["ReduceMax"] == len(per_token)
        y = create_session(q.SerializeToString()).run(None, {"x": x})[0]
        assert np.isfinite(y).all()
        ref = x @ w
        errors[bool(per_token)] = np.linalg.norm(y - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
    assert errors[True][np.arange(16) != 3].max() < 0.02  # every token at int8 precision
    assert errors[False][:3].min() > 0.5  # the small tokens were lost without it


def _stats(x: np.ndarray) -> ActivationStats:
    st = ActivationStats(np.abs(x).max(axis=0))
    for rows in np.split(x, 4):  # four calibration batches
        st.samples.append((rows, rows.min(axis=0), rows.max(axis=0)))
    return st


def test_choose_smoothing_takes_the_cheapest_choice_that_is_good_enough():
    """Channel outliers: folded smoothing reaches the target, so no run-time work is added.
    Token outliers (a few huge tokens in a batch): no per-channel scale helps, per-token scales do."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 96)).astype(np.float32) * 0.05
    x = rng.standard_normal((96, 128)).astype(np.float32)

    channels = x.copy()
    channels[:, :3] *= 300.0
    c = choose_smoothing(_stats(channels), w, allow_per_token=True)
    assert c.alpha is not None and c.split is None and not c.per_token
    assert c.error_mean <= ERROR_TARGET < c.error_plain

    tokens = x.copy()
    tokens[::24] *= 300.0  # one huge token per batch
    c = choose_smoothing(_stats(tokens), w, allow_per_token=True)
    assert c.per_token and c.error_mean <= ERROR_TARGET < c.error_plain
    assert not choose_smoothing(_stats(tokens), w, allow_per_token=False).per_token


def _foreign_folder(src: Path, dst: Path) -> Path:
    """src as an ONNX folder made elsewhere: Hub layout (onnx/model.onnx), no manifest.json, a token_type_ids input."""
    import shutil

    (dst / "onnx").mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".json" and f.name != "manifest.json":
            shutil.copy2(f, dst / f.name)
    graph = onnx.load(str(src / "model.onnx"))
    graph.graph.input.append(onnx.helper.make_tensor_value_info("token_type_ids", onnx.TensorProto.INT64, ["b", "s"]))
    onnx.save(graph, str(dst / "onnx" / "model.onnx"))
    return dst


def test_foreign_folder_quantizes_behind_the_gate(exported_factory, tmp_path):
    """An ONNX folder made elsewhere: onnxruntime's dynamic int8, the same gate, a folder the runtime loads."""
    from typer.testing import CliRunner

    from modernbert_edge.cli import app
    from modernbert_edge.runtime import load

    src = exported_factory("feature-extraction")
    hub = _foreign_folder(src, tmp_path / "hub")
    runner = CliRunner()
    res = runner.invoke(app, ["quantize", str(hub), str(tmp_path / "q"), "--file", "onnx/model.onnx"])
    assert res.exit_code == 0, res.output
    assert "token cosine, worst" in res.output and ": passed" in res.output
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["foreign_graph"] is True
    assert manifest["source"] == {"checkpoint": str(hub), "file": "onnx/model.onnx", "foreign": True}
    assert manifest["fidelity"]["cosine_worst"] >= 0.99
    assert {"config.json", "tokenizer.json"} <= {f.name for f in (tmp_path / "q").iterdir()}
    # onnxruntime's own int8 weights hold pairs that saturate on AVX2; the folder written does not
    raw = onnx.load(str(quantize_dynamic_int8(hub / "onnx/model.onnx", tmp_path / "raw.onnx")))
    assert pair_check(raw)["overflowing_pairs"] > 0
    _assert_every_kernel_class_covered(manifest, tmp_path / "q")
    ops = _ops(tmp_path / "q")
    assert ops["MatMul"] < _ops(src)["MatMul"] and ops["DynamicQuantizeLinear"] > 0  # weights now int8

    texts = ["alice works at acme", "the quick brown fox jumps over the lazy dog", "bob"]
    fp32, int8 = load(hub), load(tmp_path / "q")
    assert int8.info.precision == "int8" and int8.task == "feature-extraction"
    a, b = np.asarray(fp32.embed(texts)), np.asarray(int8.embed(texts))
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99, cos
    res = runner.invoke(app, ["run", str(tmp_path / "q"), *texts])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3, res.output

    for a_dir, b_dir in ((hub, tmp_path / "q"), (src, hub)):  # either side foreign
        res = runner.invoke(app, ["compare", str(a_dir), str(b_dir)])
        assert res.exit_code == 0 and "token cosine, worst" in res.output, res.output
    assert "1.00000" in res.output  # the same graph, fed token_type_ids or not

    for args, said in (
        (["--min-cosine", "1"], "below --min-cosine"),  # int8 cannot reach cosine 1
        (["--mode", "int4"], "int8 only"),
    ):
        res = runner.invoke(app, ["quantize", str(hub), str(tmp_path / "q2"), *args])
        assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "q2").exists() and not list(tmp_path.glob(".q2*"))


def dequantize_int4_blocks(packed: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    """The inverse of weights.quantize_int4_blocks: (K, N) float weights."""
    n, nb, half = packed.shape
    q = np.empty((n, nb, 2 * half), dtype=np.float32)
    q[:, :, 0::2], q[:, :, 1::2] = packed & 15, packed >> 4
    w = (q - 8) * scale.reshape(n, nb, 1)
    return w.reshape(n, -1)[:, :k].T
