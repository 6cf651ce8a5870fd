"""The ModernBERT graph, one function per subgraph, written with ONNX Runtime's fused CPU ops.

Layout (see DESIGN.md): the dense parts (embeddings, projections, MLPs, norms, heads) run on the
real tokens only, as a (1, T, ·) stream where T = number of ones in attention_mask. Attention
scatters its QKV back to the padded (B, S, ·) layout, because the attention kernels want it.

    input_ids, attention_mask (B, S)
      │ gather non-pad tokens
    embeddings ─ LayerNorm                          (1, T, D)
      │
    layer i:  [Add ─ LayerNorm] ─ Wqkv ─ scatter ─ Rotary ─ MHA (global | blocked local) ─ gather ─ Wo
              Add ─ LayerNorm ─ Wi ─ Split ─ act·gate ─ Wo
      │
    final Add ─ LayerNorm ─ task head ─ scatter        (B, S, ·) or (B, ·)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, numpy_helper

from modernbert_edge.export.builder import FLOAT, INT64, MS_DOMAIN, GraphBuilder, tensor_info
from modernbert_edge.export.checkpoint import Weights
from modernbert_edge.export.config import GLOBAL, LOCAL, ModernBertConfig

BAND_MASKED = -1e9  # additive bias for keys outside the local window (exp underflows to exactly 0)
SHORT_LOCAL = 256  # up to this length a dense banded MHA beats blocked attention (8x128: 20 vs 27 ms)
GQA_MIN_SEQ = 256  # padded global attention from this length: GroupQueryAttention skips padded keys
GQA_HEAD_MULTIPLE = 8  # ORT's CPU GroupQueryAttention refuses other head sizes (at run time)


@dataclass(frozen=True)
class Layout:
    """Names of the per-forward tensors that every layer shares (computed once at the top)."""

    tokens: str  # (T,) int64 flat indices of non-pad positions in (B*S)
    scatter_idx: str  # (T, 1) int64, the same indices for ScatterND
    row_of: str  # (B*S,) int64 token row of each padded position (pads: a neighbour's row, or -1)
    batch: str  # (1,) int64 B
    seq: str  # (1,) int64 S
    flat: str  # (1,) int64 B*S
    key_mask: str  # (B, S) int32 attention_mask, for global attention
    unpadded: str  # bool scalar: T == B * S (no padding anywhere), selects mask-free attention
    mask_f: str  # (B, S, 1) float attention_mask, for mean pooling
    local: LocalLayout | None
    gqa: GqaLayout | None  # None: global attention never uses GroupQueryAttention


@dataclass(frozen=True)
class GqaLayout:
    """Inputs of GroupQueryAttention for long right-padded batches in global layers."""

    use: str  # bool scalar: S >= GQA_MIN_SEQ and every row right-padded
    seqlens_k: str  # (B,) int32 length - 1 of each row (0 for an all-padding row)
    total_len: str  # int32 scalar S


@dataclass(frozen=True)
class LocalLayout:
    """Shapes for blocked local attention: chunks of C queries attend to 3C keys."""

    chunk: int  # C
    pads_q: str  # Pad amounts: (B, S, D) -> (B, S', D), S' = ceil(S / C) * C
    pads_kv: str  # (B, S, D) -> (B, C + S' + C, D)
    shape_q: str  # (B * nc, C, D)
    shape_kv4: str  # (B, nc + 2, C, D)
    shape_kv: str  # (B * nc, 3C, D)
    shape_out: str  # (B, S', D)
    slices: tuple[tuple[str, str], ...]  # (start, end) on axis 1 of the (B, nc + 2, ...) view: prev, own, next
    key_mask: str  # (B * nc, 3C) int32
    band: str  # (1, 1, C, 3C) float additive window bias
    short: str  # bool scalar: S <= SHORT_LOCAL, where one dense banded MHA call is cheaper
    dense_band: str  # (1, 1, S', S') window bias, S' = min(S, SHORT_LOCAL): for the short case


def _shape_of(g: GraphBuilder, parts: list[str], name: str) -> str:
    return g.op("Concat", parts, name, axis=0)


def make_layout(g: GraphBuilder, cfg: ModernBertConfig) -> Layout:
    """Token indices, batch dims and masks derived from attention_mask.

    attention_mask (B, S) ─ Reshape(-1) ─ NonZero (1, T) ─ Reshape ─ tokens (T,) / scatter_idx (T, 1)
                          └ CumSum - 1 ─ row_of (B*S,): token row of each padded position
    """
    p = "/model/layout"
    shape = g.op("Shape", ["input_ids"], f"{p}/Shape")
    batch = g.op("Slice", [shape, g.const([0]), g.const([1])], f"{p}/batch")
    seq = g.op("Slice", [shape, g.const([1]), g.const([2])], f"{p}/seq")
    flat = g.op("Mul", [batch, seq], f"{p}/flat")
    mask_flat = g.op("Reshape", ["attention_mask", g.const([-1])], f"{p}/mask_flat")
    nz = g.op("NonZero", [mask_flat], f"{p}/NonZero")  # (1, T)
    tokens = g.op("Reshape", [nz, g.const([-1])], f"{p}/tokens")
    scatter_idx = g.op("Reshape", [nz, g.const([-1, 1])], f"{p}/scatter_idx")
    row_of = g.op("Sub", [g.op("CumSum", [mask_flat, g.const(0)], f"{p}/CumSum"), g.const(1)], f"{p}/row_of")
    key_mask = g.op("Cast", ["attention_mask"], f"{p}/key_mask", to=6)  # int32
    mask_f = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const([-1])], f"{p}/mask3")], f"{p}/mask_f", to=FLOAT)
    n_tokens = g.op("Shape", [tokens], f"{p}/n_tokens")
    unpadded = g.op("Squeeze", [g.op("Equal", [n_tokens, flat], f"{p}/Equal")], f"{p}/unpadded")
    local = make_local_layout(g, cfg, batch, seq, key_mask) if LOCAL in cfg.layer_types else None
    gqa_fits = GLOBAL in cfg.layer_types and cfg.head_dim % GQA_HEAD_MULTIPLE == 0
    gqa = make_gqa_layout(g, seq, key_mask) if gqa_fits else None
    return Layout(tokens, scatter_idx, row_of, batch, seq, flat, key_mask, unpadded, mask_f, local, gqa)


def make_gqa_layout(g: GraphBuilder, seq: str, key_mask: str) -> GqaLayout:
    """GroupQueryAttention takes each row's keys as [0, length), so it serves right-padded masks
    only: a row is right-padded iff its ones sit at 0 .. L-1, i.e. their positions sum to L(L-1)/2."""
    p = "/model/layout/gqa"
    i32 = np.int32
    lengths = g.op("ReduceSum", [key_mask, g.const([1])], f"{p}/lengths", keepdims=0)  # (B,)
    total_len = g.op("Cast", [g.op("Squeeze", [seq], f"{p}/seq_s")], f"{p}/total_len", to=6)  # int32
    positions = g.op("Range", [g.const(0, i32), total_len, g.const(1, i32)], f"{p}/positions")
    pos = g.op("Mul", [key_mask, positions], f"{p}/pos")
    pos_sum = g.op("ReduceSum", [pos, g.const([1])], f"{p}/pos_sum", keepdims=0)  # (B,)
    len_m1 = g.op("Sub", [lengths, g.const(1, i32)], f"{p}/len_m1")
    prefix_sum = g.op("Div", [g.op("Mul", [lengths, len_m1], f"{p}/len_sq"), g.const(2, i32)], f"{p}/prefix_sum")
    off = g.op("Abs", [g.op("Sub", [pos_sum, prefix_sum], f"{p}/pos_diff")], f"{p}/pos_abs")
    misplaced = g.op("ReduceSum", [off, g.const([0])], f"{p}/misplaced", keepdims=0)
    right_padded = g.op("Equal", [misplaced, g.const(0, i32)], f"{p}/right_padded")
    long = g.op("Squeeze", [g.op("GreaterOrEqual", [seq, g.const([GQA_MIN_SEQ])], f"{p}/long")], f"{p}/long_s")
    use = g.op("And", [long, right_padded], f"{p}/use")
    seqlens_k = g.op("Max", [len_m1, g.const(0, i32)], f"{p}/seqlens_k")  # an all-padding row: one ignored key
    return GqaLayout(use, seqlens_k, total_len)


def make_local_layout(g: GraphBuilder, cfg: ModernBertConfig, batch: str, seq: str, key_mask: str) -> LocalLayout:
    """Shapes and masks for blocked local attention (exact for |i - j| <= window).

    A chunk of C >= window queries at [cC, cC + C) sees every key of its window among the keys of
    chunks c-1, c, c+1, so each query attends to 3C keys instead of S, and a constant (C, 3C)
    band bias removes the keys farther than the window.

    key_mask (B, S) ─ Pad (C, S'-S+C) ─ Reshape (B, nc+2, C) ─ 3 Slices ─ Concat ─ (B*nc, 3C)
    """
    p = "/model/layout/local"
    w, d = cfg.window, cfg.hidden_size
    c = max(w, 32)  # chunk length: at least the half window, and not so small that MHA calls are tiny
    seq_up = g.op("Add", [seq, g.const([c - 1])], f"{p}/seq_up")
    nc = g.op("Div", [seq_up, g.const([c])], f"{p}/nc")
    seq_pad = g.op("Mul", [nc, g.const([c])], f"{p}/seq_pad")  # S'
    tail = g.op("Sub", [seq_pad, seq], f"{p}/tail")  # S' - S
    tail_kv = g.op("Add", [tail, g.const([c])], f"{p}/tail_kv")
    zero, cc = g.const([0]), g.const([c])
    pads_q = _shape_of(g, [zero, zero, zero, zero, tail, zero], f"{p}/pads_q")
    pads_kv = _shape_of(g, [zero, cc, zero, zero, tail_kv, zero], f"{p}/pads_kv")
    pads_mask = _shape_of(g, [zero, cc, zero, tail_kv], f"{p}/pads_mask")
    batch_chunks = g.op("Mul", [batch, nc], f"{p}/batch_chunks")
    nc2 = g.op("Add", [nc, g.const([2])], f"{p}/nc2")
    nc1 = g.op("Add", [nc, g.const([1])], f"{p}/nc1")
    dd = g.const([d])
    shape_q = _shape_of(g, [batch_chunks, cc, dd], f"{p}/shape_q")
    shape_kv4 = _shape_of(g, [batch, nc2, cc, dd], f"{p}/shape_kv4")
    shape_kv = _shape_of(g, [batch_chunks, g.const([3 * c]), dd], f"{p}/shape_kv")
    shape_out = _shape_of(g, [batch, seq_pad, dd], f"{p}/shape_out")
    slices = ((g.const([0]), nc), (g.const([1]), nc1), (g.const([2]), nc2))

    mask = g.op("Pad", [key_mask, pads_mask], f"{p}/mask_pad")  # (B, C + S' + C), pads are 0
    mask = g.op("Reshape", [mask, _shape_of(g, [batch, nc2, cc], f"{p}/shape_mask3")], f"{p}/mask_chunks")
    parts = [
        g.op("Slice", [mask, start, end, g.const([1])], f"{p}/mask_slice_{i}") for i, (start, end) in enumerate(slices)
    ]
    mask = g.op("Concat", parts, f"{p}/mask_concat", axis=2)  # (B, nc, 3C)
    key_mask_local = g.op(
        "Reshape", [mask, _shape_of(g, [batch_chunks, g.const([3 * c])], f"{p}/shape_mask")], f"{p}/key_mask"
    )

    qi = np.arange(c)[:, None] + c  # query position inside the 3C key span
    kj = np.arange(3 * c)[None, :]
    band = np.where(np.abs(qi - kj) <= w, 0.0, BAND_MASKED).astype(np.float32)[None, None]
    band_name = g.weight("/model/layout/local/band_bias", band)

    # Short sequences: one (S', S') band bias, S' = min(S, SHORT_LOCAL) so it stays small when unused.
    seq_s = g.op("Squeeze", [g.op("Min", [seq, g.const([SHORT_LOCAL])], f"{p}/short_len")], f"{p}/short_len_s")
    short = g.op("Squeeze", [g.op("LessOrEqual", [seq, g.const([SHORT_LOCAL])], f"{p}/short_cmp")], f"{p}/short")
    pos = g.op("Range", [g.const(0), seq_s, g.const(1)], f"{p}/pos")
    dist = g.op(
        "Abs",
        [g.op("Sub", [g.op("Unsqueeze", [pos, g.const([1])], f"{p}/pos_q"), pos], f"{p}/dist_signed")],
        f"{p}/dist",
    )
    near = g.op("LessOrEqual", [dist, g.const(w)], f"{p}/near")
    dense = g.op("Where", [near, g.const(0.0, np.float32), g.const(BAND_MASKED, np.float32)], f"{p}/dense_band2d")
    dense = g.op("Unsqueeze", [dense, g.const([0, 1])], f"{p}/dense_band")
    return LocalLayout(
        c, pads_q, pads_kv, shape_q, shape_kv4, shape_kv, shape_out, slices, key_mask_local, band_name, short, dense
    )


def to_padded(g: GraphBuilder, lay: Layout, x: str, width: int, name: str, zero_pads: bool = True) -> str:
    """(1, T, F) token stream -> (B, S, F) by one row Gather (row_of).

    Padded positions receive a copy of some real row: attention masks those keys and its padded
    queries are dropped again, so zero_pads=False there; outputs get zeros (a Mul by the mask).
    """
    rows = g.op("Reshape", [x, g.const([-1, width])], f"{name}/rows")
    padded = g.op("Gather", [rows, lay.row_of], f"{name}/Gather", axis=0)  # (B*S, F)
    shape = _shape_of(g, [lay.batch, lay.seq, g.const([width])], f"{name}/shape")
    padded = g.op("Reshape", [padded, shape], f"{name}/Reshape")
    return g.op("Mul", [padded, lay.mask_f], f"{name}/zero_pads") if zero_pads else padded


def to_tokens(g: GraphBuilder, lay: Layout, x: str, width: int, name: str) -> str:
    """(B, S, F) -> (1, T, F): the rows of non-pad positions."""
    rows = g.op("Reshape", [x, g.const([-1, width])], f"{name}/rows")
    picked = g.op("Gather", [rows, lay.tokens], f"{name}/Gather", axis=0)
    return g.op("Unsqueeze", [picked, g.const([0])], f"{name}/Unsqueeze")


def _float_tensor(value: float):
    return numpy_helper.from_array(np.array([value], dtype=np.float32))


def make_linear(g: GraphBuilder, w: Weights, x: str, key: str, d_in: int, d_out: int, bias: bool, name: str) -> str:
    """x @ W^T (+ b): the checkpoint's (out, in) weight is stored transposed as (in, out) under its key."""
    weight = g.weight(f"{key}.weight", w.get(f"{key}.weight", (d_out, d_in)).T)
    y = g.op("MatMul", [x, weight], f"{name}/MatMul")
    if bias:
        y = g.op("Add", [y, g.weight(f"{key}.bias", w.get(f"{key}.bias", (d_out,)))], f"{name}/Add")
    return y


def make_activation(g: GraphBuilder, x: str, act: str, name: str) -> str:
    if act == "gelu":
        return g.op("Gelu", [x], f"{name}/Gelu", approximate="none")
    if act in ("gelu_pytorch_tanh", "gelu_new"):
        return g.op("Gelu", [x], f"{name}/Gelu", approximate="tanh")
    if act in ("silu", "swish"):
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")
    if act == "relu":
        return g.op("Relu", [x], f"{name}/Relu")
    raise ValueError(f"activation {act} not handled")  # config.py rejects these first


def _norm_inputs(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, key: str) -> list[str]:
    d = cfg.hidden_size
    inputs = [g.weight(f"{key}.weight", w.get(f"{key}.weight", (d,)))]
    if cfg.norm_bias:
        inputs.append(g.weight(f"{key}.bias", w.get(f"{key}.bias", (d,))))
    return inputs


def make_layer_norm(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str, key: str, name: str) -> str:
    return g.op(
        "LayerNormalization",
        [x, *_norm_inputs(g, w, cfg, key)],
        f"{name}/LayerNorm",
        axis=-1,
        epsilon=cfg.norm_eps,
    )


def make_residual_norm(
    g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str, residual: str, key: str, name: str
) -> tuple[str, str]:
    """(LayerNorm(x + residual), x + residual) as Add ─ LayerNormalization.

    Not SkipLayerNormalization: on ORT 1.32's CPU provider it measured 4-7x slower than Add plus
    LayerNormalization on (1024, 768) (4-7 ms vs 0.9-1 ms, 2 threads; see DESIGN.md).
    """
    total = g.op("Add", [x, residual], f"{name}/Add")
    return make_layer_norm(g, w, cfg, total, key, name), total


def make_embeddings(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, prefix: str) -> str:
    """input_ids (B, S) ─ gather non-pad ─ Gather(tok_embeddings) ─ LayerNorm ─ (1, T, D)"""
    name = "/model/embeddings"
    key = f"{prefix}embeddings.tok_embeddings.weight"
    table = g.weight(key, w.get(key, (cfg.vocab_size, cfg.hidden_size)))
    ids = g.op("Reshape", ["input_ids", g.const([1, -1])], f"{name}/ids_flat")
    ids = g.op("Gather", [ids, lay.tokens], f"{name}/ids_tokens", axis=1)  # (1, T)
    x = g.op("Gather", [table, ids], f"{name}/tok_embeddings/Gather", axis=0)  # (1, T, D)
    return make_layer_norm(g, w, cfg, x, f"{prefix}embeddings.norm", f"{name}/norm")


def rotary_caches(cfg: ModernBertConfig, layer_type: str) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches (max_positions, head_dim / 2), computed in float32 the way transformers does."""
    theta, factor = cfg.rope(layer_type)
    dim = cfg.head_dim
    inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(
        np.float32
    )
    inv_freq = (inv_freq / np.float32(factor)).astype(np.float32)
    freqs = np.arange(cfg.max_position_embeddings, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def make_attention(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, i: int, prefix: str) -> str:
    """(1, T, D) ─ Wqkv ─ scatter (B, S, 3D) ─ Split(qk | v) ─ Rotary(qk as 2N heads) ─ MHA ─ gather ─ Wo

    Rotary runs once on q and k together: treating (B, S, 2D) as 2N heads of the same positions
    is exactly rotary on q and on k.
    """
    name, key = f"/model/layers.{i}/attn", f"{prefix}layers.{i}.attn"
    d, n = cfg.hidden_size, cfg.num_attention_heads
    layer_type = cfg.layer_types[i]
    qkv = make_linear(g, w, x, f"{key}.Wqkv", d, 3 * d, cfg.attention_bias, f"{name}/Wqkv")
    qkv = to_padded(g, lay, qkv, 3 * d, f"{name}/qkv_padded", zero_pads=False)  # (B, S, 3D)
    qk, v = g.op("Split", [qkv, g.const([2 * d, d])], f"{name}/Split", outputs=2, axis=-1)
    kind = "global" if layer_type == GLOBAL else "local"
    cos, sin = f"/model/rotary/{kind}/cos_cache", f"/model/rotary/{kind}/sin_cache"
    qk = g.op(
        "RotaryEmbedding",
        [qk, g.const([0]), cos, sin],
        f"{name}/RotaryEmbedding",
        domain=MS_DOMAIN,
        num_heads=2 * n,
        interleaved=0,
    )
    q, k = g.op("Split", [qk, g.const([d, d])], f"{name}/Split_qk", outputs=2, axis=-1)
    if layer_type == GLOBAL:
        o = make_global_attention(g, lay, q, k, v, n, name)
    else:
        o = make_local_attention(g, lay, q, k, v, n, name)
    o = to_tokens(g, lay, o, d, f"{name}/tokens")
    return make_linear(g, w, o, f"{key}.Wo", d, d, cfg.attention_bias, f"{name}/Wo")


def make_global_attention(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str) -> str:
    """Full bidirectional attention, (B, S, D) each -> (B, S, D).

    If(no padding anywhere) ─ then: MHA(q, k, v)                      MLAS flash path: no S x S buffer
                            └ else: If(S >= GQA_MIN_SEQ and right padding)
                                    ├ then: GQA(q, k, v, seqlens_k)   causal=0; skips each row's padded keys
                                    └ else: MHA(q, k, v, key_mask)    padded keys masked

    GroupQueryAttention with causal=0 gives MHA's outputs on real rows, and on padded batches of
    long rows it is faster (8 x ~450 tokens, 30 % padding: 31 vs 42 ms a layer); on short rows it
    is slower (8 x 128: 11-13 vs 8 ms), hence the length test. Head sizes that are not a multiple
    of GQA_HEAD_MULTIPLE (no `lay.gqa`) keep MHA for every padded batch.
    """

    def mha(branch: str, extra: list[str]) -> GraphProto:
        sub = g.branch()
        out = sub.op(
            "MultiHeadAttention",
            [q, k, v, *extra],
            f"{name}/{branch}/MultiHeadAttention",
            domain=MS_DOMAIN,
            num_heads=n,
        )
        return sub.subgraph(f"{name}/{branch}".replace("/", "_"), out)

    if lay.gqa is None:
        padded_graph = mha("padded", ["", lay.key_mask])
        return g.op("If", [lay.unpadded], f"{name}/If", then_branch=mha("unpadded", []), else_branch=padded_graph)
    gqa = g.branch()
    out = gqa.op(
        "GroupQueryAttention",
        [q, k, v, "", "", lay.gqa.seqlens_k, lay.gqa.total_len],
        f"{name}/padded_long/GroupQueryAttention",
        domain=MS_DOMAIN,
        outputs=3,
        num_heads=n,
        kv_num_heads=n,
        causal=0,
    )[0]
    padded = g.branch()
    out_padded = padded.op(
        "If",
        [lay.gqa.use],
        f"{name}/padded/If",
        then_branch=gqa.subgraph(f"{name}/padded_long".replace("/", "_"), out),
        else_branch=mha("padded", ["", lay.key_mask]),
    )
    padded_graph = padded.subgraph(f"{name}/padded_outer".replace("/", "_"), out_padded)
    return g.op("If", [lay.unpadded], f"{name}/If", then_branch=mha("unpadded", []), else_branch=padded_graph)


def make_local_attention(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str) -> str:
    """Sliding-window attention, exact for |i - j| <= window.

    If(S <= SHORT_LOCAL) ─ then: MHA(q, k, v, key_mask, dense (S, S) band)
                         └ else: blocked (make_blocked_attention): work grows as S * 3C, not S^2
    """
    loc = lay.local
    assert loc is not None
    short = g.branch()
    out_short = short.op(
        "MultiHeadAttention",
        [q, k, v, "", lay.key_mask, loc.dense_band],
        f"{name}/short/MultiHeadAttention",
        domain=MS_DOMAIN,
        num_heads=n,
    )
    long = g.branch()
    out_long = make_blocked_attention(long, lay, q, k, v, n, f"{name}/blocked")
    return g.op(
        "If",
        [loc.short],
        f"{name}/If",
        then_branch=short.subgraph(f"{name}/short".replace("/", "_"), out_short),
        else_branch=long.subgraph(f"{name}/blocked".replace("/", "_"), out_long),
    )


def make_blocked_attention(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str) -> str:
    """Blocked sliding-window attention (see make_local_layout); work grows as S * 3C, not S^2.

    q (B, S, D) ─ Pad ─ Reshape (B*nc, C, D) ────────────────────────────┐
    k (B, S, D) ─ Pad ─ Reshape (B, nc+2, C, D) ─ Slices prev|own|next ─ Concat ─ (B*nc, 3C, D)
    v  likewise                                                           ├─ MHA(+band, key_mask) ─ (B, S', D) ─ Slice S
    """
    loc = lay.local
    assert loc is not None
    q = g.op("Reshape", [g.op("Pad", [q, loc.pads_q], f"{name}/q/Pad"), loc.shape_q], f"{name}/q/Reshape")

    def blocks(t: str, tag: str) -> str:
        t = g.op("Pad", [t, loc.pads_kv], f"{name}/{tag}/Pad")
        t = g.op("Reshape", [t, loc.shape_kv4], f"{name}/{tag}/Chunks")
        parts = [
            g.op("Slice", [t, start, end, g.const([1])], f"{name}/{tag}/Slice_{j}")
            for j, (start, end) in enumerate(loc.slices)
        ]
        t = g.op("Concat", parts, f"{name}/{tag}/Concat", axis=2)
        return g.op("Reshape", [t, loc.shape_kv], f"{name}/{tag}/Reshape")

    o = g.op(
        "MultiHeadAttention",
        [q, blocks(k, "k"), blocks(v, "v"), "", loc.key_mask, loc.band],
        f"{name}/MultiHeadAttention",
        domain=MS_DOMAIN,
        num_heads=n,
    )
    o = g.op("Reshape", [o, loc.shape_out], f"{name}/out/Reshape")
    return g.op("Slice", [o, g.const([0]), lay.seq, g.const([1])], f"{name}/out/Slice")


def make_mlp(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str, i: int, prefix: str) -> str:
    """(1, T, D) ─ Wi (2I) ─ Split ─ act(input) * gate ─ Wo ─ (1, T, D)"""
    name, key = f"/model/layers.{i}/mlp", f"{prefix}layers.{i}.mlp"
    d, inter = cfg.hidden_size, cfg.intermediate_size
    h = make_linear(g, w, x, f"{key}.Wi", d, 2 * inter, cfg.mlp_bias, f"{name}/Wi")
    inp, gate = g.op("Split", [h, g.const([inter, inter])], f"{name}/Split", outputs=2, axis=-1)
    a = make_activation(g, inp, cfg.hidden_activation, f"{name}/act")
    a = g.op("Mul", [a, gate], f"{name}/gate/Mul")
    return make_linear(g, w, a, f"{key}.Wo", inter, d, cfg.mlp_bias, f"{name}/Wo")


def make_encoder(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, prefix: str) -> str:
    """Embeddings and all layers; returns the final-normed token stream (1, T, D).

    Each sublayer output is added to the residual right before the next norm, which gives both the
    normed input of the next sublayer and the new residual. Layer 0 has no attn_norm.
    """
    for kind in sorted(set(cfg.layer_types)):
        cos, sin = rotary_caches(cfg, kind)
        tag = "global" if kind == GLOBAL else "local"
        g.weight(f"/model/rotary/{tag}/cos_cache", cos)
        g.weight(f"/model/rotary/{tag}/sin_cache", sin)

    residual = make_embeddings(g, w, cfg, lay, prefix)
    x, pending = residual, None  # pending: the last sublayer output not yet added to the residual
    for i in range(cfg.num_hidden_layers):
        if pending is not None:
            x, residual = make_residual_norm(
                g, w, cfg, pending, residual, f"{prefix}layers.{i}.attn_norm", f"/model/layers.{i}/attn_norm"
            )
        a = make_attention(g, w, cfg, lay, x, i, prefix)
        x, residual = make_residual_norm(
            g, w, cfg, a, residual, f"{prefix}layers.{i}.mlp_norm", f"/model/layers.{i}/mlp_norm"
        )
        pending = make_mlp(g, w, cfg, x, i, prefix)
    out, _ = make_residual_norm(g, w, cfg, pending, residual, f"{prefix}final_norm", "/model/final_norm")
    return out


def make_prediction_head(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str) -> str:
    """dense ─ act ─ LayerNorm: ModernBertPredictionHead, shared by every head."""
    d = cfg.hidden_size
    h = make_linear(g, w, x, "head.dense", d, d, cfg.classifier_bias, "/head/dense")
    h = make_activation(g, h, cfg.classifier_activation, "/head/act")
    return make_layer_norm(g, w, cfg, h, "head.norm", "/head/norm")


def make_decoder(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, h: str, prefix: str) -> str:
    """(1, T, D) -> (1, T, V). A tied decoder reuses the embedding table through Gemm(transB=1)."""
    d, v = cfg.hidden_size, cfg.vocab_size
    rows = g.op("Reshape", [h, g.const([-1, d])], "/decoder/rows")
    if "decoder.weight" in w or not cfg.tie_word_embeddings:
        table = g.weight("decoder.weight", w.get("decoder.weight", (v, d)))
    else:
        table = f"{prefix}embeddings.tok_embeddings.weight"  # registered by make_embeddings
    inputs = [rows, table]
    if cfg.decoder_bias:
        inputs.append(g.weight("decoder.bias", w.get("decoder.bias", (v,))))
    logits = g.op("Gemm", inputs, "/decoder/Gemm", transB=1)
    return g.op("Unsqueeze", [logits, g.const([0])], "/decoder/Unsqueeze")


def make_selected_rows(g: GraphBuilder, lay: Layout, x: str, width_in: int, head, width: int, name: str) -> str:  # noqa: ANN001
    """Run a per-token head on all tokens, or only on the positions the caller asks for.

    The optional input `mask_positions` (M,) holds flat indices b * S + s into the padded batch.
    Empty (the default): head on all T tokens, output (B, S, F) with zeros at pads — the public
    contract. Given: head on those M rows only, output (1, M, F). Fill-mask uses this to run the
    vocabulary decoder at [MASK] positions only. The choice is shape arithmetic, not an If.

    rows = Concat(Gather(CumSum(mask) - 1, positions), Range(0, T if empty else 0))
    """
    positions = g.optional_input("mask_positions", np.zeros((0,), np.int64), ["positions"])
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
        value=_float_tensor(0.0),
    )
    out = g.op("ScatterND", [zeros, idx, y], f"{name}/ScatterND")
    full_shape = g.op("Concat", [lay.batch, lay.seq, f], f"{name}/full_shape", axis=0)
    picked_shape = g.op("Concat", [g.const([1]), n, f], f"{name}/picked_shape", axis=0)
    shape = g.op("Where", [every, full_shape, picked_shape], f"{name}/shape")
    return g.op("Reshape", [out, shape], f"{name}/Reshape")


def make_classifier(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, h: str, n_out: int) -> str:
    return make_linear(g, w, h, "classifier", cfg.hidden_size, n_out, True, "/classifier")


def make_pooling(g: GraphBuilder, cfg: ModernBertConfig, lay: Layout, hidden: str) -> str:
    """(B, S, D) with zeros at pads -> (B, D): the CLS row, or the mean over real tokens."""
    if cfg.classifier_pooling == "cls":
        return g.op("Gather", [hidden, g.const(0)], "/pool/cls/Gather", axis=1)
    total = g.op("ReduceSum", [hidden, g.const([1])], "/pool/mean/ReduceSum", keepdims=0)
    count = g.op("ReduceSum", [lay.mask_f, g.const([1])], "/pool/mean/count", keepdims=0)  # (B, 1)
    return g.op("Div", [total, count], "/pool/mean/Div")


GRAPH_INPUTS = [
    tensor_info("input_ids", INT64, ["batch", "sequence"]),
    tensor_info("attention_mask", INT64, ["batch", "sequence"]),
]
