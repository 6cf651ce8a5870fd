"""The weight projections of an exported graph, and where each one's smoothing scale can be folded.

A projection is a MatMul on a 2-D initializer (or the fill-mask decoder's Gemm(transB=1)), known by
its node name without the op suffix (`/model/layers.3/attn/Wqkv`, see export/names.py). A per-channel
smoothing scale s (x / s, diag(s) W) is folded, where it can be, into the op that produces x: a
LayerNorm's weight, the V columns of Wqkv (for attention Wo) or the gate columns of Wi (for mlp Wo);
only the inputs that feed the residual stream or the model's outputs get an explicit Mul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from modernbert_edge.export import names

KEEP_FLOAT_ALWAYS = (names.CLASSIFIER,)  # (D, labels): tiny, and it decides the label
_NO_FOLD = (f"{names.FINAL_NORM}/",)  # its output is the model's hidden state: keep it exact
OUTLIER_RATIO = 6.0  # a channel whose max is this many times the median channel's is an outlier
MAX_SPLIT = 16  # at most this many channels go to the float side


@dataclass(frozen=True)
class Projection:
    name: str  # "/model/layers.3/attn/Wqkv": the node name without /MatMul or /Gemm
    node: str  # the node's name
    weight: str  # initializer: (K, N) for MatMul, (N, K) for the decoder's Gemm(transB=1)
    x: str  # the activation input (…, K)
    k: int
    n: int
    transposed: bool  # weight stored (N, K)

    def weight_kn(self, inits: dict[str, np.ndarray]) -> np.ndarray:
        w = inits[self.weight]
        return w.T if self.transposed else w


@dataclass(frozen=True)
class Absorber:
    """Where x's 1/s goes: a norm's weight (and bias), columns of an earlier weight, or a Mul."""

    kind: str  # "norm" | "columns" | "mul"
    params: tuple[str, ...] = ()  # norm: (weight, bias?); columns: (weight, bias?)
    start: int = 0  # columns [start, stop) of the earlier (K, N) weight
    stop: int = 0


def load_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer as a numpy array, by name."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def find_projections(model: onnx.ModelProto, inits: dict[str, np.ndarray]) -> list[Projection]:
    """Every MatMul with a 2-D initializer weight, and a Gemm(transB=1) decoder, in graph order."""
    out = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and inits[node.input[1]].ndim == 2:
            k, n = inits[node.input[1]].shape
            out.append(Projection(node.name.rsplit("/", 1)[0], node.name, node.input[1], node.input[0], k, n, False))
        elif node.op_type == "Gemm" and node.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB", 0) == 1 and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0:
                n, k = inits[node.input[1]].shape
                out.append(Projection(node.name.rsplit("/", 1)[0], node.name, node.input[1], node.input[0], k, n, True))
    return out


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def find_absorbers(model: onnx.ModelProto, projections: list[Projection]) -> dict[str, Absorber]:
    """For each projection, where its input smoothing scale can be folded exactly."""
    producers = {o: node for node in model.graph.node for o in node.output}
    users = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    by_name = {p.name: p for p in projections}
    result = {}
    for p in projections:
        x, absorber = p.x, Absorber("mul")
        node = producers.get(x)
        if node is not None and node.op_type == "Reshape" and len(users.get(x, [])) == 1:
            x, node = node.input[0], producers.get(node.input[0])  # e.g. the decoder's (1,T,D)->(T,D)
        alone = len(users.get(x, [])) == 1 and x not in outputs
        if node is not None and alone and node.op_type == "LayerNormalization" and x == node.output[0]:
            if not node.name.startswith(_NO_FOLD):
                absorber = Absorber("norm", tuple(n for n in node.input[1:3] if n))  # gamma, beta
        in_layer = names.split_layer(p.name)
        if in_layer and in_layer[1] in (names.ATTN_OUT, names.MLP_OUT) and alone:
            i, part = in_layer
            src = by_name.get(names.projection(i, names.ATTN_QKV if part == names.ATTN_OUT else names.MLP_IN))
            if src is not None and not src.transposed:
                # attn: out = softmax(qk) v is linear in v's channels, v = columns [2D, 3D) of Wqkv.
                # mlp: out = act(input) * gate, linear in gate = columns [I, 2I) of Wi.
                start = 2 * p.k if part == names.ATTN_OUT else p.k
                bias = _bias_after(model, src)
                absorber = Absorber("columns", (src.weight, *([bias] if bias else [])), start, start + p.k)
        result[p.name] = absorber
    return result


def _bias_after(model: onnx.ModelProto, p: Projection) -> str | None:
    out = next(n.output[0] for n in model.graph.node if n.name == p.node)
    for node in model.graph.node:
        if node.op_type == "Add" and node.input[0] == out:
            return node.input[1]
    return None


def apply_smoothing(
    inits: dict[str, np.ndarray],
    projections: list[Projection],
    absorbers: dict[str, Absorber],
    scales: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Fold x / s into the absorbers and diag(s) into the weights (in place, on copies of the
    touched arrays); returns {projection: 1/s} for the projections that need an explicit Mul."""
    muls: dict[str, np.ndarray] = {}
    touched: set[str] = set()

    def own(name: str) -> np.ndarray:
        if name not in touched:
            inits[name] = inits[name].astype(np.float32, copy=True)
            touched.add(name)
        return inits[name]

    for p in projections:
        s = scales.get(p.name)
        if s is None:
            continue
        s = s.astype(np.float32)
        w = own(p.weight)
        if p.transposed:
            w *= s[None, :]  # (N, K): scale input channels
        else:
            w *= s[:, None]  # (K, N)
        a = absorbers[p.name]
        if a.kind == "norm":
            for param in a.params:
                own(param)[...] /= s
        elif a.kind == "columns":
            own(a.params[0])[:, a.start : a.stop] /= s[None, :]
            if len(a.params) > 1:
                own(a.params[1])[a.start : a.stop] /= s
        else:
            muls[p.name] = (1.0 / s).astype(np.float32)
    return muls


def outlier_channels(absmax: np.ndarray, ratio: float = OUTLIER_RATIO) -> np.ndarray | None:
    """Channels whose largest value is `ratio` times the median channel's (as LLM.int8() splits
    activations), at most MAX_SPLIT of them; None when there are none (or too many to split)."""
    idx = np.flatnonzero(absmax > ratio * np.median(absmax))
    if not len(idx) or len(idx) > MAX_SPLIT:
        return None
    return idx
