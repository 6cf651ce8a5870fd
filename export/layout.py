"""Layout arithmetic: the per-forward index tensors, shapes and masks every layer shares.

The dense parts of the graph (embeddings, projections, MLPs, norms, heads) run on the real tokens
only, as a (1, T, ·) stream where T = number of ones in attention_mask; attention runs in the
padded (B, S, ·) layout its kernels want. This module computes, once per forward, how to move
between the two (`to_padded`, `to_tokens`) and the inputs of the attention variants.

    input_ids, attention_mask (B, S)
      │
    make_layout ─ tokens (T,), row_of (B*S,), B, S, masks      ─┬─ local: LocalLayout (blocked attention)
                                                                 └─ gqa:   GqaLayout (padded global attention)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modernbert_edge.contract import ATTENTION_MASK, INPUT_IDS
from modernbert_edge.export import names
from modernbert_edge.export.builder import CONTRIB, FLOAT, PORTABLE, GraphBuilder
from modernbert_edge.export.config import GLOBAL, LOCAL, ModernBertConfig

BAND_MASKED = -1e9  # additive bias for keys outside the local window (exp underflows to exactly 0)
SHORT_LOCAL = 256  # up to this length a dense banded MHA beats blocked attention (see DESIGN.md)
GQA_MIN_SEQ = 256  # padded global attention from this length: GroupQueryAttention skips padded keys
GQA_HEAD_MULTIPLE = 8  # ORT's CPU GroupQueryAttention refuses other head sizes (at run time)


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
    key_mask: str  # keys of each chunk in the flavour's form (Layout.key_mask): (B * nc, 3C) or (B * nc, 1, 1, 3C)
    band: str  # (1, 1, C, 3C) float additive window bias
    short: str | None  # bool scalar: S <= SHORT_LOCAL, where one dense banded MHA call is cheaper (contrib)
    dense_band: str | None  # (1, 1, S', S') window bias, S' = min(S, SHORT_LOCAL): the short case (contrib)


@dataclass(frozen=True)
class Layout:
    """Names of the per-forward tensors that every layer shares (computed once at the top)."""

    tokens: str  # (T,) int64 flat indices of non-pad positions in (B*S)
    scatter_idx: str  # (T, 1) int64, the same indices for ScatterND (the fill-mask head's output)
    row_of: str  # (B*S,) int64 token row of each padded position (pads: a neighbour's row, or -1)
    batch: str  # (1,) int64 B
    seq: str  # (1,) int64 S
    flat: str  # (1,) int64 B*S
    ops: str  # the graph's flavour (builder.OPS): which attention and rotary ops the layers emit
    # keys to attend, in the flavour's form: contrib (B, S) int32 attention_mask (MultiHeadAttention's
    # key_padding_mask); portable (B, 1, 1, S) float additive bias, 0 or BAND_MASKED (Attention's attn_mask)
    key_mask: str
    positions: str | None  # (B, S) int64 0 .. S-1: RotaryEmbedding-23's position_ids (portable only)
    unpadded: str  # bool scalar: T == B * S (no padding anywhere), selects mask-free attention
    mask_f: str  # (B, S, 1) float attention_mask, for mean pooling and zeroing padded outputs
    local: LocalLayout | None  # None: the model has no local layers
    gqa: GqaLayout | None  # None: global attention never uses GroupQueryAttention


def shape_of(g: GraphBuilder, parts: list[str], name: str) -> str:
    """Concat of (1,) int64 parts: a shape or Pad amounts built at run time."""
    return g.op("Concat", parts, name, axis=0)


def make_layout(g: GraphBuilder, cfg: ModernBertConfig, ops: str = CONTRIB) -> Layout:
    """Token indices, batch dims and masks derived from attention_mask.

    attention_mask (B, S) ─ Min(·, 1) ─ mask (B, S) 0/1: a MARK (2, rows a head decodes) counts as 1
    mask ─ Reshape(-1) ─ NonZero (1, T) ─ Reshape ─ tokens (T,) / scatter_idx (T, 1)
         └ CumSum - 1 ─ row_of (B*S,): token row of each padded position
    """
    p = names.LAYOUT
    shape = g.op("Shape", [INPUT_IDS], f"{p}/Shape")
    batch = g.op("Slice", [shape, g.const([0]), g.const([1])], f"{p}/batch")
    seq = g.op("Slice", [shape, g.const([1]), g.const([2])], f"{p}/seq")
    flat = g.op("Mul", [batch, seq], f"{p}/flat")
    mask = g.op("Min", [ATTENTION_MASK, g.const(1)], f"{p}/mask01")  # every consumer below reads 0/1
    mask_flat = g.op("Reshape", [mask, g.const([-1])], f"{p}/mask_flat")
    nz = g.op("NonZero", [mask_flat], f"{p}/NonZero")  # (1, T)
    tokens = g.op("Reshape", [nz, g.const([-1])], f"{p}/tokens")
    scatter_idx = g.op("Reshape", [nz, g.const([-1, 1])], f"{p}/scatter_idx")
    row_of = g.op("Sub", [g.op("CumSum", [mask_flat, g.const(0)], f"{p}/CumSum"), g.const(1)], f"{p}/row_of")
    key_mask_i32 = g.op("Cast", [mask], f"{p}/key_mask", to=6)  # int32
    key_mask, positions = key_mask_i32, None
    if ops == PORTABLE:
        key_mask = key_bias(g, key_mask_i32, f"{p}/key_bias")  # (B, 1, 1, S)
        pos = g.op("Range", [g.const(0), g.op("Squeeze", [seq], f"{p}/seq_s"), g.const(1)], f"{p}/positions_1d")
        positions = g.op("Expand", [pos, shape_of(g, [batch, seq], f"{p}/shape_bs")], f"{p}/positions")  # (B, S)
    mask_f = g.op("Cast", [g.op("Unsqueeze", [mask, g.const([-1])], f"{p}/mask3")], f"{p}/mask_f", to=FLOAT)
    n_tokens = g.op("Shape", [tokens], f"{p}/n_tokens")
    unpadded = g.op("Squeeze", [g.op("Equal", [n_tokens, flat], f"{p}/Equal")], f"{p}/unpadded")
    local = make_local_layout(g, cfg, batch, seq, key_mask_i32, ops) if LOCAL in cfg.layer_types else None
    gqa_fits = ops == CONTRIB and GLOBAL in cfg.layer_types and cfg.head_dim % GQA_HEAD_MULTIPLE == 0
    gqa = make_gqa_layout(g, seq, key_mask_i32) if gqa_fits else None
    return Layout(
        tokens=tokens,
        scatter_idx=scatter_idx,
        row_of=row_of,
        batch=batch,
        seq=seq,
        flat=flat,
        ops=ops,
        key_mask=key_mask,
        positions=positions,
        unpadded=unpadded,
        mask_f=mask_f,
        local=local,
        gqa=gqa,
    )


def key_bias(g: GraphBuilder, key_mask: str, name: str) -> str:
    """(R, T) int32 mask of keys -> (R, 1, 1, T) float additive bias: 0 for keys, BAND_MASKED for pads."""
    f = g.op("Cast", [key_mask], f"{name}/Cast", to=FLOAT)
    bias = g.op(
        "Mul",
        [g.op("Sub", [f, g.const(1.0, np.float32)], f"{name}/Sub"), g.const(-BAND_MASKED, np.float32)],
        f"{name}/Mul",
    )
    return g.op("Unsqueeze", [bias, g.const([1, 2])], f"{name}/Unsqueeze")


def make_gqa_layout(g: GraphBuilder, seq: str, key_mask: str) -> GqaLayout:
    """GroupQueryAttention takes each row's keys as [0, length), so it serves right-padded masks
    only: a row is right-padded iff its ones sit at 0 .. L-1, i.e. their positions sum to L(L-1)/2.

    key_mask (B, S) ─ ReduceSum ─ lengths (B,) ─ L(L-1)/2 ─────────┐
                    └ Mul(0 .. S-1) ─ ReduceSum ─ position sums ───┴─ all equal? ─ And(S >= GQA_MIN_SEQ) ─ use
    """
    p = f"{names.LAYOUT}/gqa"
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
    return GqaLayout(use=use, seqlens_k=seqlens_k, total_len=total_len)


def make_local_layout(
    g: GraphBuilder, cfg: ModernBertConfig, batch: str, seq: str, key_mask: str, ops: str = CONTRIB
) -> LocalLayout:
    """Shapes and masks for blocked local attention (exact for |i - j| <= window).

    A chunk of C >= window queries at [cC, cC + C) sees every key of its window among the keys of
    chunks c-1, c, c+1, so each query attends to 3C keys instead of S, and a constant (C, 3C)
    band bias removes the keys farther than the window.

    key_mask (B, S) ─ Pad (C, S'-S+C) ─ Reshape (B, nc+2, C) ─ 3 Slices ─ Concat ─ (B*nc, 3C)
    """
    p = f"{names.LAYOUT}/local"
    w, d = cfg.window, cfg.hidden_size
    c = max(w, 32)  # chunk length: at least the half window, and not so small that MHA calls are tiny
    seq_up = g.op("Add", [seq, g.const([c - 1])], f"{p}/seq_up")
    nc = g.op("Div", [seq_up, g.const([c])], f"{p}/nc")
    seq_pad = g.op("Mul", [nc, g.const([c])], f"{p}/seq_pad")  # S'
    tail = g.op("Sub", [seq_pad, seq], f"{p}/tail")  # S' - S
    tail_kv = g.op("Add", [tail, g.const([c])], f"{p}/tail_kv")
    zero, cc = g.const([0]), g.const([c])
    pads_q = shape_of(g, [zero, zero, zero, zero, tail, zero], f"{p}/pads_q")
    pads_kv = shape_of(g, [zero, cc, zero, zero, tail_kv, zero], f"{p}/pads_kv")
    pads_mask = shape_of(g, [zero, cc, zero, tail_kv], f"{p}/pads_mask")
    batch_chunks = g.op("Mul", [batch, nc], f"{p}/batch_chunks")
    nc2 = g.op("Add", [nc, g.const([2])], f"{p}/nc2")
    nc1 = g.op("Add", [nc, g.const([1])], f"{p}/nc1")
    dd = g.const([d])
    shape_q = shape_of(g, [batch_chunks, cc, dd], f"{p}/shape_q")
    shape_kv4 = shape_of(g, [batch, nc2, cc, dd], f"{p}/shape_kv4")
    shape_kv = shape_of(g, [batch_chunks, g.const([3 * c]), dd], f"{p}/shape_kv")
    shape_out = shape_of(g, [batch, seq_pad, dd], f"{p}/shape_out")
    slices = ((g.const([0]), nc), (g.const([1]), nc1), (g.const([2]), nc2))

    mask = g.op("Pad", [key_mask, pads_mask], f"{p}/mask_pad")  # (B, C + S' + C), pads are 0
    mask = g.op("Reshape", [mask, shape_of(g, [batch, nc2, cc], f"{p}/shape_mask3")], f"{p}/mask_chunks")
    parts = [
        g.op("Slice", [mask, start, end, g.const([1])], f"{p}/mask_slice_{i}") for i, (start, end) in enumerate(slices)
    ]
    mask = g.op("Concat", parts, f"{p}/mask_concat", axis=2)  # (B, nc, 3C)
    key_mask_local = g.op(
        "Reshape", [mask, shape_of(g, [batch_chunks, g.const([3 * c])], f"{p}/shape_mask")], f"{p}/key_mask"
    )
    if ops == PORTABLE:
        key_mask_local = key_bias(g, key_mask_local, f"{p}/key_bias")  # (B * nc, 1, 1, 3C)

    qi = np.arange(c)[:, None] + c  # query position inside the 3C key span
    kj = np.arange(3 * c)[None, :]
    band = np.where(np.abs(qi - kj) <= w, 0.0, BAND_MASKED).astype(np.float32)[None, None]
    band_name = g.weight(f"{p}/band_bias", band)

    short, dense = (None, None) if ops == PORTABLE else make_short_band(g, seq, w)
    return LocalLayout(
        chunk=c,
        pads_q=pads_q,
        pads_kv=pads_kv,
        shape_q=shape_q,
        shape_kv4=shape_kv4,
        shape_kv=shape_kv,
        shape_out=shape_out,
        slices=slices,
        key_mask=key_mask_local,
        band=band_name,
        short=short,
        dense_band=dense,
    )


def make_short_band(g: GraphBuilder, seq: str, w: int) -> tuple[str, str]:
    """Short sequences: one (S', S') band bias, S' = min(S, SHORT_LOCAL) so it stays small when unused.

    Returns (short: bool scalar S <= SHORT_LOCAL, dense_band (1, 1, S', S'))."""
    p = f"{names.LAYOUT}/local"
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
    return short, g.op("Unsqueeze", [dense, g.const([0, 1])], f"{p}/dense_band")


def to_padded(g: GraphBuilder, lay: Layout, x: str, width: int, name: str, zero_pads: bool = True) -> str:
    """(1, T, F) token stream -> (B, S, F) by one row Gather (row_of).

    Padded positions receive a copy of some real row: attention masks those keys and its padded
    queries are dropped again, so zero_pads=False there; outputs get zeros (a Mul by the mask).
    """
    rows = g.op("Reshape", [x, g.const([-1, width])], f"{name}/rows")
    padded = g.op("Gather", [rows, lay.row_of], f"{name}/Gather", axis=0)  # (B*S, F)
    shape = shape_of(g, [lay.batch, lay.seq, g.const([width])], f"{name}/shape")
    padded = g.op("Reshape", [padded, shape], f"{name}/Reshape")
    return g.op("Mul", [padded, lay.mask_f], f"{name}/zero_pads") if zero_pads else padded


def to_tokens(g: GraphBuilder, lay: Layout, x: str, width: int, name: str) -> str:
    """(B, S, F) -> (1, T, F): the rows of non-pad positions."""
    rows = g.op("Reshape", [x, g.const([-1, width])], f"{name}/rows")
    picked = g.op("Gather", [rows, lay.tokens], f"{name}/Gather", axis=0)
    return g.op("Unsqueeze", [picked, g.const([0])], f"{name}/Unsqueeze")
