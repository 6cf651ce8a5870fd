"""The small building blocks every part of the graph uses: a linear layer, an activation, a norm,
a residual add."""

from __future__ import annotations

from modernbert_edge.export.builder import GraphBuilder
from modernbert_edge.export.config import ModernBertConfig
from modernbert_edge.safetensors import Weights


def make_linear(g: GraphBuilder, w: Weights, x: str, key: str, d_in: int, d_out: int, bias: bool, name: str) -> str:
    """x @ W^T (+ b): the checkpoint's (out, in) weight is stored transposed as (in, out) under its key.

    (…, d_in) ─ MatMul `{name}/MatMul` ─ [Add `{name}/Add`] ─ (…, d_out)
    """
    weight = g.weight(f"{key}.weight", w.get(f"{key}.weight", (d_out, d_in)).T)
    y = g.op("MatMul", [x, weight], f"{name}/MatMul")
    if bias:
        y = g.op("Add", [y, g.weight(f"{key}.bias", w.get(f"{key}.bias", (d_out,)))], f"{name}/Add")
    return y


def make_activation(g: GraphBuilder, x: str, act: str, name: str) -> str:
    """The config's activation by name (config.py rejects names not handled here)."""
    if act == "gelu":
        return g.op("Gelu", [x], f"{name}/Gelu", approximate="none")
    if act in ("gelu_pytorch_tanh", "gelu_new"):
        return g.op("Gelu", [x], f"{name}/Gelu", approximate="tanh")
    if act in ("silu", "swish"):
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")
    if act == "relu":
        return g.op("Relu", [x], f"{name}/Relu")
    raise ValueError(f"activation {act} not handled")


def make_layer_norm(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, x: str, key: str, name: str) -> str:
    """LayerNormalization over the last axis; the bias only when the config has norm_bias."""
    d = cfg.hidden_size
    inputs = [g.weight(f"{key}.weight", w.get(f"{key}.weight", (d,)))]
    if cfg.norm_bias:
        inputs.append(g.weight(f"{key}.bias", w.get(f"{key}.bias", (d,))))
    return g.op("LayerNormalization", [x, *inputs], f"{name}/LayerNorm", axis=-1, epsilon=cfg.norm_eps)


def make_residual(g: GraphBuilder, residual: str, update: str, name: str) -> str:
    """residual + update, a plain Add.

    Not fused into SkipLayerNormalization with the next norm: on ORT 1.32's CPU provider that
    measured 4-7x slower than Add plus LayerNormalization (see DESIGN.md).
    """
    return g.op("Add", [update, residual], f"{name}/Add")
