"""The layer stack: embeddings, then one `make_layer` per layer, then the final norm.

input_ids (B, S) ─ gather real tokens ─ tok_embeddings ─ LayerNorm     (1, T, D)
  │
make_layer(0) … make_layer(L-1)                                         (1, T, D)
  │
final_norm ─ LayerNorm                                                  (1, T, D) to the task head
"""

from __future__ import annotations

from modernbert_edge.contract import INPUT_IDS
from modernbert_edge.export import names
from modernbert_edge.export.attention import add_rotary_caches, make_attention
from modernbert_edge.export.builder import GraphBuilder
from modernbert_edge.export.config import ModernBertConfig
from modernbert_edge.export.layout import Layout
from modernbert_edge.export.ops import make_activation, make_layer_norm, make_linear, make_residual
from modernbert_edge.safetensors import Weights


def make_embeddings(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, prefix: str) -> str:
    """input_ids (B, S) ─ Gather(tokens) (1, T) ─ Gather(tok_embeddings) ─ LayerNorm ─ (1, T, D)"""
    name = names.EMBEDDINGS
    key = f"{prefix}embeddings.tok_embeddings.weight"
    table = g.weight(key, w.get(key, (cfg.vocab_size, cfg.hidden_size)))
    ids = g.op("Reshape", [INPUT_IDS, g.const([1, -1])], f"{name}/ids_flat")
    ids = g.op("Gather", [ids, lay.tokens], f"{name}/ids_tokens", axis=1)  # (1, T)
    x = g.op("Gather", [table, ids], names.EMBED_GATHER, axis=0)  # (1, T, D)
    return make_layer_norm(g, w, cfg, x, f"{prefix}embeddings.norm", f"{name}/norm")


def make_mlp(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str, i: int, prefix: str) -> str:
    """(1, T, D) ─ Wi (1, T, 2I) ─ Split ─ act(input) * gate (1, T, I) ─ Wo ─ (1, T, D)"""
    name, key = names.mlp(i), f"{prefix}layers.{i}.mlp"
    d, inter = cfg.hidden_size, cfg.intermediate_size
    h = make_linear(g, w, x, f"{key}.Wi", d, 2 * inter, cfg.mlp_bias, names.projection(i, names.MLP_IN))
    inp, gate = g.op("Split", [h, g.const([inter, inter])], f"{name}/Split", outputs=2, axis=-1)
    a = make_activation(g, inp, cfg.hidden_activation, f"{name}/act")
    a = g.op("Mul", [a, gate], f"{name}/gate/Mul")
    return make_linear(g, w, a, f"{key}.Wo", inter, d, cfg.mlp_bias, names.projection(i, names.MLP_OUT))


def make_layer(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, i: int, prefix: str) -> str:
    """One ModernBERT layer on the residual stream, (1, T, D) -> (1, T, D).

    x ─┬─ attn_norm ─ attention ─ Add ─┬─ mlp_norm ─ mlp ─ Add ─ x
       └───────────────────────────────┘└─────────────────────┘
    Layer 0 has no attn_norm (an Identity in the checkpoint): the embeddings' norm precedes it.
    """
    key = f"{prefix}layers.{i}"
    h = x if i == 0 else make_layer_norm(g, w, cfg, x, f"{key}.attn_norm", names.attn_norm(i))
    x = make_residual(g, x, make_attention(g, w, cfg, lay, h, i, prefix), names.attn_residual(i))
    h = make_layer_norm(g, w, cfg, x, f"{key}.mlp_norm", names.mlp_norm(i))
    return make_residual(g, x, make_mlp(g, w, cfg, h, i, prefix), names.mlp_residual(i))


def make_encoder(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, prefix: str) -> str:
    """Embeddings, every layer and the final norm; returns the final token stream (1, T, D)."""
    add_rotary_caches(g, cfg)
    x = make_embeddings(g, w, cfg, lay, prefix)
    for i in range(cfg.num_hidden_layers):
        x = make_layer(g, w, cfg, lay, x, i, prefix)
    return make_layer_norm(g, w, cfg, x, f"{prefix}final_norm", names.FINAL_NORM)
