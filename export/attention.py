"""Attention of one layer: rotary, then global (full) or local (sliding-window) attention.

(1, T, D) ─ Wqkv ─ to_padded (B, S, 3D) ─ Split(qk | v) ─ RotaryEmbedding(qk as 2N heads) ─ Split(q | k)
          ─ global: make_global_attention | local: make_local_attention ─ (B, S, D) ─ to_tokens ─ Wo ─ (1, T, D)

The graph's flavour (Layout.ops) picks the ops, here and nowhere else: contrib emits ONNX Runtime's
fused com.microsoft MultiHeadAttention / GroupQueryAttention / RotaryEmbedding; portable emits the
standard opset-23 Attention and RotaryEmbedding. Both have the same structure. In contrib an If
picks, per forward pass, the call that suits the batch (see DESIGN.md, Attention); portable has no
If (OpenVINO 2026.4's CPU plugin returns wrong values from these If nodes on dynamic shapes): global
attention always takes the key mask, local attention is always blocked.
"""

from __future__ import annotations

import numpy as np
from onnx import GraphProto

from modernbert_edge.export import names
from modernbert_edge.export.builder import CONTRIB, MS_DOMAIN, PORTABLE, GraphBuilder
from modernbert_edge.export.config import GLOBAL, ModernBertConfig
from modernbert_edge.export.layout import Layout, to_padded, to_tokens
from modernbert_edge.export.ops import make_linear
from modernbert_edge.safetensors import Weights


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


def _rotary_names(layer_type: str) -> tuple[str, str]:
    kind = "global" if layer_type == GLOBAL else "local"
    return f"{names.MODEL}/rotary/{kind}/cos_cache", f"{names.MODEL}/rotary/{kind}/sin_cache"


def add_rotary_caches(g: GraphBuilder, cfg: ModernBertConfig) -> None:
    """One cos/sin pair per attention kind the model has, shared by its layers."""
    for layer_type in sorted(set(cfg.layer_types)):
        cos, sin = rotary_caches(cfg, layer_type)
        cos_name, sin_name = _rotary_names(layer_type)
        g.weight(cos_name, cos)
        g.weight(sin_name, sin)


def make_attention(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, i: int, prefix: str) -> str:
    """(1, T, D) ─ Wqkv ─ to_padded (B, S, 3D) ─ Split(qk | v) ─ Rotary(qk as 2N heads) ─ attention ─ to_tokens ─ Wo

    Rotary runs once on q and k together: treating (B, S, 2D) as 2N heads of the same positions
    is exactly rotary on q and on k.
    """
    name, key = names.attn(i), f"{prefix}layers.{i}.attn"
    d, n = cfg.hidden_size, cfg.num_attention_heads
    layer_type = cfg.layer_types[i]
    qkv = make_linear(g, w, x, f"{key}.Wqkv", d, 3 * d, cfg.attention_bias, names.projection(i, names.ATTN_QKV))
    qkv = to_padded(g, lay, qkv, 3 * d, f"{name}/qkv_padded", zero_pads=False)  # (B, S, 3D)
    qk, v = g.op("Split", [qkv, g.const([2 * d, d])], f"{name}/Split", outputs=2, axis=-1)  # (B, S, 2D), (B, S, D)
    cos, sin = _rotary_names(layer_type)
    if lay.ops == CONTRIB:  # positions from a (1,) offset
        rotary_inputs, domain = [qk, g.const([0]), cos, sin], MS_DOMAIN
    else:  # RotaryEmbedding-23: explicit (B, S) position_ids
        rotary_inputs, domain = [qk, cos, sin, lay.positions], ""
    qk = g.op(
        "RotaryEmbedding", rotary_inputs, f"{name}/RotaryEmbedding", domain=domain, num_heads=2 * n, interleaved=0
    )
    q, k = g.op("Split", [qk, g.const([d, d])], f"{name}/Split_qk", outputs=2, axis=-1)  # (B, S, D) each
    if layer_type == GLOBAL:
        o = make_global_attention(g, lay, q, k, v, n, name)
    else:
        o = make_local_attention(g, lay, q, k, v, n, name)
    o = to_tokens(g, lay, o, d, f"{name}/tokens")  # (1, T, D)
    return make_linear(g, w, o, f"{key}.Wo", d, d, cfg.attention_bias, names.projection(i, names.ATTN_OUT))


def attend(
    g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str, key_mask: str = "", band: str = ""
) -> str:
    """One attention call, (R, Sq, D), (R, T, D), (R, T, D) -> (R, Sq, D), in the graph's flavour.

    key_mask: the keys each row may use, in the flavour's form (Layout.key_mask); band: a
    (1, 1, Sq, T) additive bias. Neither: plain attention (the mask-free fast path of both ops).
        contrib:  MultiHeadAttention(q, k, v, key_padding_mask, attention_bias)
        portable: Attention(q, k, v, attn_mask = band + key bias, broadcast to (R, 1, Sq, T))
    """
    if lay.ops == CONTRIB:
        extra = ["", key_mask, band] if band else ["", key_mask] if key_mask else []
        return g.op(
            "MultiHeadAttention", [q, k, v, *extra], f"{name}/MultiHeadAttention", domain=MS_DOMAIN, num_heads=n
        )
    mask = []
    if band and key_mask:
        mask = [g.op("Add", [band, key_mask], f"{name}/attn_mask")]  # (R, 1, Sq, T)
    elif key_mask:  # ORT's Attention wants the query axis in the mask: (R, 1, 1, T) -> (R, 1, Sq, 1 -> T)
        sq = g.op("Shape", [q], f"{name}/q_len", start=1, end=2)
        shape = g.op("Concat", [g.const([1, 1]), sq, g.const([1])], f"{name}/mask_shape", axis=0)
        mask = [g.op("Expand", [key_mask, shape], f"{name}/attn_mask")]
    elif band:
        mask = [band]
    return g.op("Attention", [q, k, v, *mask], f"{name}/Attention", q_num_heads=n, kv_num_heads=n)


def _mha(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str, **masks: str) -> GraphProto:
    """An If branch holding one attention call (`attend`)."""
    sub = g.branch()
    out = attend(sub, lay, q, k, v, n, name, **masks)
    return sub.subgraph(name.replace("/", "_"), out)


def make_global_attention(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str) -> str:
    """Full bidirectional attention, (B, S, D) each -> (B, S, D).

    If(no padding anywhere) ─ then: MHA(q, k, v)                      MLAS flash path: no S x S buffer
                            └ else: If(S >= GQA_MIN_SEQ and right padding)
                                    ├ then: GQA(q, k, v, seqlens_k)   causal=0; skips each row's padded keys
                                    └ else: MHA(q, k, v, key_mask)    padded keys masked

    GroupQueryAttention with causal=0 gives MHA's outputs on real rows, and is faster on long
    padded rows, slower on short ones, hence the length test (figures in DESIGN.md). Head sizes
    that are not a multiple of GQA_HEAD_MULTIPLE (no `lay.gqa`) keep MHA for every padded batch.
    """
    if lay.ops == PORTABLE:  # no If (see make_attention): the key mask always, zeros when nothing is padded
        return attend(g, lay, q, k, v, n, name, key_mask=lay.key_mask)
    unpadded = _mha(g, lay, q, k, v, n, f"{name}/unpadded")
    if lay.gqa is None:
        padded_graph = _mha(g, lay, q, k, v, n, f"{name}/padded", key_mask=lay.key_mask)
        return g.op("If", [lay.unpadded], f"{name}/If", then_branch=unpadded, else_branch=padded_graph)
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
        else_branch=_mha(g, lay, q, k, v, n, f"{name}/padded", key_mask=lay.key_mask),
    )
    padded_graph = padded.subgraph(f"{name}/padded_outer".replace("/", "_"), out_padded)
    return g.op("If", [lay.unpadded], f"{name}/If", then_branch=unpadded, else_branch=padded_graph)


def make_local_attention(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str) -> str:
    """Sliding-window attention, exact for |i - j| <= window, (B, S, D) each -> (B, S, D).

    If(S <= SHORT_LOCAL) ─ then: MHA(q, k, v, key_mask, dense (S, S) band)
                         └ else: blocked (make_blocked_attention): work grows as S * 3C, not S^2
    """
    loc = lay.local
    assert loc is not None
    if lay.ops == PORTABLE:  # no If (see make_attention): blocked at every length
        return make_blocked_attention(g, lay, q, k, v, n, f"{name}/blocked")
    short = _mha(g, lay, q, k, v, n, f"{name}/short", key_mask=lay.key_mask, band=loc.dense_band)
    long = g.branch()
    out_long = make_blocked_attention(long, lay, q, k, v, n, f"{name}/blocked")
    blocked = long.subgraph(f"{name}/blocked".replace("/", "_"), out_long)
    return g.op("If", [loc.short], f"{name}/If", then_branch=short, else_branch=blocked)


def make_blocked_attention(g: GraphBuilder, lay: Layout, q: str, k: str, v: str, n: int, name: str) -> str:
    """Blocked sliding-window attention (see make_local_layout); work grows as S * 3C, not S^2.

    q (B, S, D) ─ Pad ─ Reshape (B*nc, C, D) ────────────────────────────┐
    k (B, S, D) ─ Pad ─ Reshape (B, nc+2, C, D) ─ Slices prev|own|next ─ Concat ─ (B*nc, 3C, D)
    v  likewise                                                           ├─ attend ─ (B, S', D) ─ Slice S
    """
    loc = lay.local
    assert loc is not None
    q = g.op("Reshape", [g.op("Pad", [q, loc.pads_q], f"{name}/q/Pad"), loc.shape_q], f"{name}/q/Reshape")

    def blocks(t: str, tag: str) -> str:
        t = g.op("Pad", [t, loc.pads_kv], f"{name}/{tag}/Pad")  # (B, C + S' + C, D)
        t = g.op("Reshape", [t, loc.shape_kv4], f"{name}/{tag}/Chunks")  # (B, nc + 2, C, D)
        parts = [
            g.op("Slice", [t, start, end, g.const([1])], f"{name}/{tag}/Slice_{j}")
            for j, (start, end) in enumerate(loc.slices)
        ]
        t = g.op("Concat", parts, f"{name}/{tag}/Concat", axis=2)  # (B, nc, 3C, D)
        return g.op("Reshape", [t, loc.shape_kv], f"{name}/{tag}/Reshape")  # (B * nc, 3C, D)

    o = attend(g, lay, q, blocks(k, "k"), blocks(v, "v"), n, name, key_mask=loc.key_mask, band=loc.band)  # (B*nc, C, D)
    o = g.op("Reshape", [o, loc.shape_out], f"{name}/out/Reshape")  # (B, S', D)
    return g.op("Slice", [o, g.const([0]), lay.seq, g.const([1])], f"{name}/out/Slice")
