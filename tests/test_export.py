"""Exporter: parity with PyTorch for every task, config format and shape; graph structure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from modernbert_edge.contract import MARKED_ROWS
from modernbert_edge.export import names
from modernbert_edge.export.exporter import export, fused_op_counts
from modernbert_edge.export.tasks import TASKS
from modernbert_edge.manifest import read_manifest
from modernbert_edge.runtime.session import create_session

LAYER_PROJECTIONS = (names.ATTN_QKV, names.ATTN_OUT, names.MLP_IN, names.MLP_OUT)

ATOL = 1e-4
LENGTHS = [1, 7, 63, 64, 65, 129, 300, 700]


def onnx_outputs(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    session = create_session(model_dir / "model.onnx")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input_ids": ids, "attention_mask": mask}), strict=True))


def torch_outputs(ckpt: Path, task: str, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    model = getattr(transformers, TASKS[task].architecture).from_pretrained(str(ckpt)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return {name: getattr(out, name).numpy() for name, _ in TASKS[task].outputs}


def padded_batch(lengths: list[int], vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = max(lengths)
    ids = rng.integers(0, vocab, size=(len(lengths), s), dtype=np.int64)
    mask = (np.arange(s)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


def assert_close_on_valid(ours: dict, ref: dict, mask: np.ndarray, atol: float = ATOL) -> None:
    valid = mask.astype(bool)
    for name, r in ref.items():
        o = ours[name]
        assert o.shape == r.shape, name
        if o.ndim >= 2 and o.shape[:2] == mask.shape:
            o, r = o[valid], r[valid]
        diff = np.abs(o - r).max()
        assert diff <= atol, f"{name}: max abs diff {diff:.2e}"


def assert_rows_alone_match(out: Path, ids: np.ndarray, mask: np.ndarray, batched_outputs: dict) -> None:
    """Each of a few rows run alone gives what it gave inside the padded batch (right padding)."""
    for row in (0, 4, 7):
        n = LENGTHS[row]
        alone = onnx_outputs(out, ids[row : row + 1, :n], mask[row : row + 1, :n])
        for name, value in alone.items():
            batched = batched_outputs[name][row : row + 1]
            if value.ndim >= 2 and value.shape[1] == n:
                batched = batched[:, :n]
            assert np.abs(value - batched).max() <= 1e-5, (name, n)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("flat_config", [False, True], ids=["layer_types", "flat"])
def test_every_task_matches_pytorch_padded_and_alone(task, flat_config, checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory(task, flat_config=flat_config, max_position_embeddings=1024)
    out = tmp_path / "m"
    manifest = export(str(ckpt), out, log=lambda _m: None)
    assert manifest["task"] == task
    assert manifest["validation"]["status"] == "passed"
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    ids, mask = padded_batch(LENGTHS, vocab)
    ours = onnx_outputs(out, ids, mask)
    assert_close_on_valid(ours, torch_outputs(ckpt, task, ids, mask), mask)
    assert_rows_alone_match(out, ids, mask, ours)


def test_left_padding_and_empty_rows_match_pytorch(checkpoint_factory, tmp_path):
    """Long padded batches take GroupQueryAttention only when right-padded; left padding and rows
    with no tokens stay exact (the mask-based path), and an empty row does not break the batch."""
    ckpt = checkpoint_factory("feature-extraction", max_position_embeddings=1024)
    out = tmp_path / "m"
    export(str(ckpt), out, log=lambda _m: None)
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    ids, right = padded_batch([300, 40, 0, 280], vocab, seed=2)
    left = right[:, ::-1].copy()
    model = onnx.load(str(out / "model.onnx"))
    use_gqa = f"{names.LAYOUT}/gqa/use/output_0"
    model.graph.output.append(onnx.helper.make_value_info(use_gqa, onnx.TypeProto()))
    probe = create_session(model.SerializeToString())
    for mask, gqa in ((right, True), (left, False), (right[:, :200], False)):
        assert bool(probe.run([use_gqa], {"input_ids": ids[:, : mask.shape[1]], "attention_mask": mask})[0]) is gqa
    for mask in (right, left):
        ours = onnx_outputs(out, ids, mask)
        ref = torch_outputs(ckpt, "feature-extraction", ids[[0, 1, 3]], mask[[0, 1, 3]])
        assert_close_on_valid({k: v[[0, 1, 3]] for k, v in ours.items()}, ref, mask[[0, 1, 3]])
        assert np.isfinite(ours["last_hidden_state"]).all()


SHAPES = {
    "head_dim_32_odd_layers": dict(num_hidden_layers=5, hidden_size=64, num_attention_heads=2),
    "head_dim_20_no_gqa": dict(hidden_size=60, num_attention_heads=3, intermediate_size=90),
    "head_dim_64_every_2": dict(hidden_size=128, num_attention_heads=2, global_attn_every_n_layers=2),
    "default_window_biases": dict(
        local_attention=128, attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True
    ),
    "tanh_gelu_untied": dict(hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=False),
    "silu_relu_no_decoder_bias": dict(hidden_activation="silu", classifier_activation="relu", decoder_bias=False),
    "window_6_two_layers": dict(local_attention=12, num_hidden_layers=2),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shapes_match_pytorch_at_every_length(shape, checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("fill-mask", max_position_embeddings=1024, **SHAPES[shape])
    out = tmp_path / "m"
    export(str(ckpt), out, log=lambda _m: None)
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    ids, mask = padded_batch(LENGTHS, vocab, seed=1)
    assert_close_on_valid(onnx_outputs(out, ids, mask), torch_outputs(ckpt, "fill-mask", ids, mask), mask)


def test_flat_config_with_global_every_2(checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("feature-extraction", flat_config=True, global_attn_every_n_layers=2, num_hidden_layers=3)
    raw = json.loads((ckpt / "config.json").read_text())
    assert "layer_types" not in raw and raw["global_attn_every_n_layers"] == 2
    manifest = export(str(ckpt), tmp_path / "m", log=lambda _m: None)
    assert manifest["config"]["layer_types"] == ["full_attention", "sliding_attention", "full_attention"]
    assert manifest["validation"]["max_abs_diff"] <= ATOL


def test_encoder_of_a_head_checkpoint(checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("fill-mask")
    manifest = export(str(ckpt), tmp_path / "m", task="feature-extraction", log=lambda _m: None)
    assert manifest["outputs"] == ["last_hidden_state"]
    assert "head.dense.weight" in manifest["source"]["ignored_tensors"]
    assert manifest["validation"]["status"] == "passed"


ATTENTION_OPS = ("MultiHeadAttention", "GroupQueryAttention")


def _one_attention(graph: onnx.GraphProto) -> bool:
    """An If branch runs exactly one attention: one attention node, or one If whose branches each do."""
    nodes = [n for n in graph.node if n.op_type in ATTENTION_OPS or n.op_type == "If"]
    if len(nodes) != 1:
        return False
    node = nodes[0]
    return node.op_type in ATTENTION_OPS or all(_one_attention(a.g) for a in node.attribute if a.g.node)


def attention_per_layer(graph: onnx.GraphProto) -> dict[str, int]:
    """Attention nodes that can run per layer: an If counts once if each branch runs exactly one."""
    counts: dict[str, int] = {}
    for node in graph.node:
        layer = node.name.split("/")[2] if node.name.startswith("/model/layers.") else None
        if node.op_type in ATTENTION_OPS:
            counts[layer] = counts.get(layer, 0) + 1
        elif node.op_type == "If" and layer is not None:
            assert all(_one_attention(a.g) for a in node.attribute if a.g.node), node.name
            counts[layer] = counts.get(layer, 0) + 1
    return counts


def test_structure_counts_fused_ops(exported_factory):
    out = exported_factory("fill-mask", num_hidden_layers=5)
    model = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert attention_per_layer(model.graph) == {f"layers.{i}": 1 for i in range(5)}
    assert ops.count("RotaryEmbedding") == 5
    # embeddings, attn_norm of layers 1.., mlp_norm of every layer, final_norm
    assert ops.count("LayerNormalization") == 1 + 4 + 5 + 1 + 1  # + the head's norm
    assert "Softmax" not in ops and "Erf" not in ops
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]  # the usual contract only
    assert {p.key: p.value for p in model.metadata_props} == {MARKED_ROWS: "2"}
    assert [o.name for o in model.graph.output] == ["logits"]
    node_names = [n.name for n in model.graph.node]
    assert len(set(node_names)) == len(node_names)
    # Each layer's two residual adds sit inside it; the final norm is a norm only.
    residuals = {n.name for n in model.graph.node if n.op_type == "Add" and n.name.endswith("_residual/Add")}
    assert residuals == {f"{f(i)}/Add" for i in range(5) for f in (names.attn_residual, names.mlp_residual)}
    assert [n.op_type for n in model.graph.node if n.name.startswith(names.FINAL_NORM + "/")] == ["LayerNormalization"]
    projections = {n.name.rsplit("/", 1)[0] for n in model.graph.node if n.op_type == "MatMul"}
    assert {names.projection(i, part) for i in range(5) for part in LAYER_PROJECTIONS} <= projections
    manifest = read_manifest(out)
    n_global = manifest["config"]["layer_types"].count("full_attention")
    assert manifest["fused_ops"]["MultiHeadAttention"] == 5
    assert manifest["fused_ops"]["GroupQueryAttention"] == n_global == 2  # found inside the If's else-branch
    assert manifest["fused_ops"]["RotaryEmbedding"] == 5
    assert {"onnx", "onnxruntime", "torch", "transformers"} <= set(manifest["versions"])
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_fused_op_counts_take_the_larger_branch(exported_factory):
    """One branch of an If runs: its ops count as in the branch with more of them, never both."""
    model = onnx.load(str(exported_factory("feature-extraction") / "model.onnx"))
    assert fused_op_counts(model)["MultiHeadAttention"] == 4  # each layer's Ifs hold 2 or 3 MHA nodes
    no_gqa = exported_factory("feature-extraction", **SHAPES["head_dim_20_no_gqa"])
    counts = fused_op_counts(onnx.load(str(no_gqa / "model.onnx")))
    assert "GroupQueryAttention" not in counts and counts["MultiHeadAttention"] == 4


def test_fill_mask_marked_rows_are_the_only_ones_decoded(exported_factory):
    """attention_mask == 2 marks the rows to decode (and counts as 1 everywhere else)."""
    out = exported_factory("fill-mask")
    session = create_session(out / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    ids, mask = padded_batch([70, 30, 5], vocab=400, seed=3)
    full = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    positions = np.array([3, 69, 70 + 29, 140 + 4])  # row-major, as the graph returns them
    marked = mask.copy()
    marked.reshape(-1)[positions] = 2
    part = session.run(None, {"input_ids": ids, "attention_mask": marked})[0]
    assert part.shape == (1, 4, full.shape[-1])
    np.testing.assert_allclose(part[0], full.reshape(-1, full.shape[-1])[positions], atol=1e-5)


@pytest.mark.parametrize("task", ["fill-mask", "text-classification"])
def test_plain_onnxruntime_loads_a_folder_without_warnings(exported_factory, task):
    """At ONNX Runtime's default log level (warnings), loading an exported graph prints nothing."""
    code = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    model = str(exported_factory(task) / "model.onnx")
    proc = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr


def test_session_optimizations_keep_fused_ops(exported_factory, tmp_path, monkeypatch):
    """ORT's optimizer, at the level the runtime uses, must not undo the fused graph (e.g. by failing
    to load a contrib op): the session comes from create_session, which saves its optimized graph here."""
    out = exported_factory("feature-extraction")
    saved = tmp_path / "opt.onnx"
    make_options = ort.SessionOptions

    def saving_options() -> ort.SessionOptions:
        options = make_options()
        options.optimized_model_filepath = str(saved)
        return options

    monkeypatch.setattr(ort, "SessionOptions", saving_options)
    session = create_session(out / "model.onnx")
    monkeypatch.undo()
    assert session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    graph = onnx.load(str(saved)).graph
    assert attention_per_layer(graph) == {f"layers.{i}": 1 for i in range(4)}
    assert "Softmax" not in [n.op_type for n in graph.node]
