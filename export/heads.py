"""The task heads' subgraphs, on the final token stream (1, T, D).

    fill-mask:        selected rows ─ head (dense ─ act ─ LayerNorm) ─ decoder      (B, S, V) or (1, M, V)
    classification:   to_padded ─ pool (CLS | mean) ─ head ─ classifier             (B, labels)
    token / QA:       head ─ classifier ─ to_padded                                  (B, S, labels)

export/tasks.py puts them together, one table row per task.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import numpy_helper

from modernbert_edge.contract import ATTENTION_MASK, MARK, MARKED_ROWS
from modernbert_edge.export import names
from modernbert_edge.export.builder import GraphBuilder
from modernbert_edge.export.config import ModernBertConfig
from modernbert_edge.export.layout import Layout
from modernbert_edge.export.ops import make_activation, make_layer_norm, make_linear
from modernbert_edge.safetensors import Weights


def make_prediction_head(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str) -> str:
    """(…, D) ─ dense ─ act ─ LayerNorm ─ (…, D): ModernBertPredictionHead, shared by every head."""
    d = cfg.hidden_size
    h = make_linear(g, w, x, "head.dense", d, d, cfg.classifier_bias, names.HEAD_DENSE)
    h = make_activation(g, h, cfg.classifier_activation, names.HEAD_ACT)
    return make_layer_norm(g, w, cfg, h, "head.norm", names.HEAD_NORM)


def make_decoder(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, h: str, prefix: str) -> str:
    """(1, R, D) ─ Gemm(transB=1) ─ (1, R, V). A tied decoder reuses the embedding table."""
    d, v = cfg.hidden_size, cfg.vocab_size
    rows = g.op("Reshape", [h, g.const([-1, d])], f"{names.DECODER}/rows")
    if "decoder.weight" in w or not cfg.tie_word_embeddings:
        table = g.weight("decoder.weight", w.get("decoder.weight", (v, d)))
    else:
        table = f"{prefix}embeddings.tok_embeddings.weight"  # registered by make_embeddings
    inputs = [rows, table]
    if cfg.decoder_bias:
        inputs.append(g.weight("decoder.bias", w.get("decoder.bias", (v,))))
    logits = g.op("Gemm", inputs, f"{names.DECODER}/Gemm", transB=1)
    return g.op("Unsqueeze", [logits, g.const([0])], f"{names.DECODER}/Unsqueeze")


def make_selected_rows(
    g: GraphBuilder, lay: Layout, x: str, width_in: int, head: Callable[[str], str], width: int, name: str
) -> str:
    """Run a per-token head on all tokens, or only on the positions the caller asks for.

    Positions where attention_mask == MARK (2; the layout reads them as 1) are the rows to decode:
    positions (M,) = their flat indices b * S + s, row-major. None (any 0/1 mask): head on all T
    tokens, output (B, S, F) with zeros at pads — the public contract. Some: head on those M rows
    only, output (1, M, F). Fill-mask uses this to run the vocabulary decoder at [MASK] positions
    only. The choice is shape arithmetic, not an If; the graph's metadata says it offers it.

    rows = Concat(Gather(row_of, positions), Range(0, T if M == 0 else 0))      (R,) R = M or T
    x (1, T, D) ─ Gather(rows) ─ head ─ (R, F) ─ ScatterND into zeros (B*S or M, F) ─ Reshape
    """
    g.metadata[MARKED_ROWS] = str(MARK)
    marked = g.op(
        "Equal",
        [g.op("Reshape", [ATTENTION_MASK, g.const([-1])], f"{name}/mask_flat"), g.const(MARK)],
        f"{name}/marked",
    )
    positions = g.op(
        "Reshape", [g.op("NonZero", [marked], f"{name}/NonZero"), g.const([-1])], f"{name}/positions"
    )  # (M,)
    zero = g.const([0])
    n = g.op("Reshape", [g.op("Size", [positions], f"{name}/Size"), g.const([1])], f"{name}/n")
    every = g.op("Equal", [n, zero], f"{name}/every")  # (1,) bool
    n_tokens = g.op("Shape", [lay.tokens], f"{name}/n_tokens")
    k = g.op("Squeeze", [g.op("Where", [every, n_tokens, zero], f"{name}/k")], f"{name}/k_scalar")
    m = g.op("Squeeze", [g.op("Where", [every, zero, n], f"{name}/m")], f"{name}/m_scalar")
    one, zero_s = g.const(1), g.const(0)
    all_rows = g.op("Range", [zero_s, k, one], f"{name}/all_rows")
    rows = g.op(
        "Concat",
        [g.op("Gather", [lay.row_of, positions], f"{name}/picked_rows", axis=0), all_rows],
        f"{name}/rows",
        axis=0,
    )
    x2d = g.op("Reshape", [x, g.const([-1, width_in])], f"{name}/x2d")
    y = head(g.op("Gather", [x2d, rows], f"{name}/Gather", axis=0))
    y = g.op("Reshape", [y, g.const([-1, width])], f"{name}/y2d")  # (R, F)
    picked = g.op("Range", [zero_s, m, one], f"{name}/out_picked")
    picked_idx = g.op("Unsqueeze", [picked, g.const([1])], f"{name}/out_picked2d")
    idx = g.op(
        "Concat",
        [picked_idx, g.op("Gather", [lay.scatter_idx, all_rows], f"{name}/out_all", axis=0)],
        f"{name}/out_idx",
        axis=0,
    )
    f = g.const([width])
    n_out = g.op("Where", [every, lay.flat, n], f"{name}/n_out")
    zeros = g.op(
        "ConstantOfShape",
        [g.op("Concat", [n_out, f], f"{name}/zeros_shape", axis=0)],
        f"{name}/zeros",
        value=numpy_helper.from_array(np.array([0.0], dtype=np.float32)),
    )
    out = g.op("ScatterND", [zeros, idx, y], f"{name}/ScatterND")
    full_shape = g.op("Concat", [lay.batch, lay.seq, f], f"{name}/full_shape", axis=0)
    picked_shape = g.op("Concat", [g.const([1]), n, f], f"{name}/picked_shape", axis=0)
    shape = g.op("Where", [every, full_shape, picked_shape], f"{name}/shape")
    return g.op("Reshape", [out, shape], f"{name}/Reshape")


def make_classifier(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, h: str, n_out: int) -> str:
    """(…, D) ─ classifier (with its bias) ─ (…, n_out)"""
    return make_linear(g, w, h, "classifier", cfg.hidden_size, n_out, True, names.CLASSIFIER)


def make_pooling(g: GraphBuilder, cfg: ModernBertConfig, lay: Layout, hidden: str) -> str:
    """(B, S, D) with zeros at pads -> (B, D): the CLS row, or the mean over real tokens."""
    if cfg.classifier_pooling == "cls":
        return g.op("Gather", [hidden, g.const(0)], "/pool/cls/Gather", axis=1)
    total = g.op("ReduceSum", [hidden, g.const([1])], "/pool/mean/ReduceSum", keepdims=0)
    count = g.op("ReduceSum", [lay.mask_f, g.const([1])], "/pool/mean/count", keepdims=0)  # (B, 1)
    return g.op("Div", [total, count], "/pool/mean/Div")
