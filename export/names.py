"""Node names of the exported graph that other code addresses (quantization, fidelity, tests).

Names are hierarchical (`/model/layers.3/attn/Wqkv/MatMul`); a weight projection is known by its
node name without the op suffix (`/model/layers.3/attn/Wqkv`). export builds its nodes from these
functions and constants, and quantize finds them by the same ones, so a rename is made here once.
"""

from __future__ import annotations

import re

MODEL = "/model"
LAYOUT = f"{MODEL}/layout"
EMBEDDINGS = f"{MODEL}/embeddings"
EMBED_GATHER = f"{EMBEDDINGS}/tok_embeddings/Gather"  # the token-embedding lookup, (1, T) -> (1, T, D)
FINAL_NORM = f"{MODEL}/final_norm"
FINAL_HIDDEN = f"{FINAL_NORM}/LayerNorm/output_0"  # (1, T, D): the final token stream of every task

# Task heads
HEAD_DENSE = "/head/dense"  # ModernBertPredictionHead's dense projection (D, D)
HEAD_ACT = "/head/act"
HEAD_NORM = "/head/norm"
DECODER = "/decoder"  # fill-mask: (D, V), a Gemm(transB=1) on the (tied) embedding table
CLASSIFIER = "/classifier"  # classification and question answering: (D, labels)

# The four projections of a layer, relative to the layer's name
ATTN_QKV = "attn/Wqkv"
ATTN_OUT = "attn/Wo"
MLP_IN = "mlp/Wi"
MLP_OUT = "mlp/Wo"

_LAYER = re.compile(r"/model/layers\.(\d+)/(.+)")


def layer(i: int) -> str:
    """`/model/layers.{i}`"""
    return f"{MODEL}/layers.{i}"


def attn(i: int) -> str:
    return f"{layer(i)}/attn"


def mlp(i: int) -> str:
    return f"{layer(i)}/mlp"


def attn_norm(i: int) -> str:
    return f"{layer(i)}/attn_norm"


def mlp_norm(i: int) -> str:
    return f"{layer(i)}/mlp_norm"


def attn_residual(i: int) -> str:
    return f"{layer(i)}/attn_residual"


def mlp_residual(i: int) -> str:
    return f"{layer(i)}/mlp_residual"


def projection(i: int, part: str) -> str:
    """A layer projection's name, e.g. projection(3, ATTN_QKV) == '/model/layers.3/attn/Wqkv'."""
    return f"{layer(i)}/{part}"


def split_layer(name: str) -> tuple[int, str] | None:
    """(layer index, the rest) of a name inside a layer, e.g. (3, 'attn/Wqkv'); None outside the layers."""
    m = _LAYER.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None
