"""The graph rewrite: fp32 export -> int8 / int8-static / int4 graph, node by node, by name.

Each weight projection (a MatMul on an initializer, or the fill-mask decoder's Gemm) is named
for its node without the op suffix (`/model/layers.3/attn/Wqkv`). The rewrite

    x ─ [smooth/Mul] ─ DynamicQuantizeMatMul(W_q int8 (K, N), scale (N,))       int8
    x ─ [smooth/Mul] ─ Q ─ DQ ─ MatMul ─ DQ(W_q, scale, axis=1)                  int8-static
    x ─ [smooth/Mul] ─ MatMulNBits(4-bit blocks of W^T, scales)                  int4

keeps every output tensor name, so the rest of the graph is untouched. A per-channel smoothing
scale s (x / s, diag(s) W) is folded, where it can be, into the op that produces x: a LayerNorm's
weight, the V columns of Wqkv (for attention Wo) or the gate columns of Wi (for mlp Wo); only the
inputs that feed the residual stream or the model's outputs get an explicit Mul.

The tied embedding table is stored once, as int8 (D, V) with one scale per vocabulary row: the
decoder uses it as its int8 weight, and the embedding lookup gathers and dequantizes its columns:

    ids ─ Gather(W_q, axis=1) (D, 1, T) ─ Transpose (1, T, D) ─ Cast ─ Mul(scale[ids]) ─ [Mul(1/s)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
FINAL_HIDDEN = "/model/final_norm/LayerNorm/output_0"  # (1, T, D) final token stream
EMBED_GATHER = "/model/embeddings/tok_embeddings/Gather"
DECODER = "/decoder"
KEEP_FLOAT_ALWAYS = ("/classifier",)  # (D, labels): tiny, and it decides the label
INT4_BLOCK = 32
INT4_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits (see the measurements in the README)
_NORMS = ("LayerNormalization", "SkipLayerNormalization")
_NO_FOLD = ("/model/final_norm/",)  # its output is the model's hidden state: keep it exact


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
        if node is not None and alone and node.op_type in _NORMS and x == node.output[0]:
            if not node.name.startswith(_NO_FOLD):
                skip = node.op_type == "SkipLayerNormalization"
                params = [n for n in node.input[2 if skip else 1 :][:2] if n]  # gamma, beta
                absorber = Absorber("norm", tuple(params))
        m = re.fullmatch(r"(/model/layers\.\d+)/(attn|mlp)/Wo", p.name)
        if m and alone:
            layer, part = m.groups()
            src = by_name.get(f"{layer}/attn/Wqkv" if part == "attn" else f"{layer}/mlp/Wi")
            if src is not None and not src.transposed:
                # attn: out = softmax(qk) v is linear in v's channels, v = columns [2D, 3D) of Wqkv.
                # mlp: out = act(input) * gate, linear in gate = columns [I, 2I) of Wi.
                start = 2 * p.k if part == "attn" else p.k
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
    muls = {}
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


OUTLIER_RATIO = 6.0  # a channel whose max is this many times the median channel's is an outlier
MAX_SPLIT = 16  # at most this many channels go to the float side


def outlier_channels(absmax: np.ndarray, ratio: float = OUTLIER_RATIO) -> np.ndarray | None:
    """Channels whose largest value is `ratio` times the median channel's (as LLM.int8() splits
    activations), at most MAX_SPLIT of them; None when there are none (or too many to split)."""
    idx = np.flatnonzero(absmax > ratio * np.median(absmax))
    if not len(idx) or len(idx) > MAX_SPLIT:
        return None
    return idx


def quantize_int8_columns(w_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: W ≈ q * scale, q in [-127, 127]."""
    amax = np.abs(w_kn).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w_kn / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_int4_blocks(w_kn: np.ndarray, block: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits layout: B (N, K/block, block/2) uint8, two 4-bit values per byte (low first),
    zero point 8 (the default), scales (N * K/block,)."""
    k, n = w_kn.shape
    nb = -(-k // block)
    wt = np.zeros((n, nb * block), dtype=np.float32)
    wt[:, :k] = w_kn.T
    wt = wt.reshape(n, nb, block)
    amax = np.abs(wt).max(axis=2)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = (np.clip(np.rint(wt / scale[:, :, None]), -8, 7) + 8).astype(np.uint8)
    packed = q[:, :, 0::2] | (q[:, :, 1::2] << 4)
    return packed, scale.reshape(-1)


def dequantize_int4_blocks(packed: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    n, nb, half = packed.shape
    q = np.empty((n, nb, 2 * half), dtype=np.float32)
    q[:, :, 0::2], q[:, :, 1::2] = packed & 15, packed >> 4
    w = (q - 8) * scale.reshape(n, nb, 1)
    return w.reshape(n, -1)[:, :k].T


@dataclass
class _Rewriter:
    inits: dict[str, np.ndarray]
    nodes: list[onnx.NodeProto]
    opset: int = 20  # the default domain's: ReduceMax takes its axes as an input from 18 on
    per_token: frozenset[str] = frozenset()  # projections whose activations get one scale per token

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def node(self, op: str, inputs: list[str], name: str, domain: str = "", output: str | None = None, **attrs):  # noqa: ANN003, ANN201
        out = output or f"{name}/output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, domain=domain or None, **attrs))
        return out


def rewrite(
    model: onnx.ModelProto,
    inits: dict[str, np.ndarray],
    projections: list[Projection],
    mode: str,
    keep_float: set[str],
    muls: dict[str, np.ndarray],
    act_ranges: dict[str, tuple[float, float]] | None = None,
    table_smooth: np.ndarray | None = None,
    splits: dict[str, np.ndarray] | None = None,
    col_splits: dict[str, np.ndarray] | None = None,
    table_split: np.ndarray | None = None,
    per_token: set[str] | None = None,
) -> onnx.ModelProto:
    """The quantized model: `inits` already smoothed; projections in keep_float stay MatMul/Gemm.

    table_smooth: the tied decoder's smoothing scale s (its weight, the embedding table, was
      multiplied by s per channel), which the embedding lookup divides back out.
    splits: input channels of a projection multiplied in float beside its int8 MatMul.
    col_splits: output columns of a projection computed in float (those that write the
      residual stream's outlier channels).
    table_split: hidden channels of the tied table kept in float, for the lookup and the decoder.
    per_token: int8 projections whose activation is divided by its per-token absolute maximum
      before DynamicQuantizeMatMul and multiplied back after (see `_emit_per_token`)."""
    by_node = {p.node: p for p in projections if p.name not in keep_float}
    table = _tied_table(model, inits, by_node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 20)
    r = _Rewriter(dict(inits), [], opset, frozenset(per_token or ()) if mode == "int8" else frozenset())
    table_q, unsmooth, table_o = None, None, None
    if table is not None:  # the embedding table, int8 (D, V), shared with a quantized tied decoder
        e = inits[table]  # (V, D)
        if table_split is not None:
            table_o = (
                r.const(f"{table}_outlier_channels", table_split.astype(np.int64)),
                r.const(f"{table}_outliers", e[:, table_split]),
            )
            e = e.copy()
            e[:, table_split] = 0.0
        q, scale = quantize_int8_columns(e.T)  # (D, V), one scale per vocabulary row
        table_q = (r.const(f"{table}_quantized", q), r.const(f"{table}_scale", scale))
        del r.inits[table]
        dec = next((p for p in by_node.values() if p.weight == table), None)
        if dec is not None and table_smooth is not None:
            unsmooth = (1.0 / table_smooth).astype(np.float32)  # the decoder's s lives in the table
    for node in model.graph.node:
        p = by_node.get(node.name)
        if node.name == EMBED_GATHER and table_q is not None:
            _emit_embedding(r, node, table_q, unsmooth, table_o, e.shape[1])
        elif p is None:
            r.nodes.append(node)
        else:
            shared = table_q if p.weight == table else None
            split = (splits or {}).get(p.name)
            cols = (col_splits or {}).get(p.name) if mode != "int4" else None
            if shared is not None and table_o is not None:
                _emit_split_decoder(r, node, p, table_q, table_o, act_ranges)
            elif split is not None and shared is None and not p.transposed and mode != "int4":
                _emit_split(r, node, p, mode, split, act_ranges, cols)
            else:
                _emit_projection(r, node, p, mode, muls.get(p.name), shared, act_ranges, cols)
    used = _used_names(r.nodes)
    # (np.ascontiguousarray would turn 0-d constants, such as a Gather index, into 1-d ones)
    initializers = [numpy_helper.from_array(np.array(v, order="C"), k) for k, v in r.inits.items() if k in used]
    g = model.graph
    graph = helper.make_graph(r.nodes, g.name, g.input, g.output, initializer=initializers, doc_string=g.doc_string)
    opsets = {o.domain: o.version for o in model.opset_import}
    opsets.setdefault(MS_DOMAIN, 1)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    out.ir_version, out.producer_name = model.ir_version, model.producer_name
    out.doc_string = model.doc_string
    return out


def _used_names(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """Every tensor name the nodes read, including inside If branches (outer-scope references)."""
    used = set()
    for n in nodes:
        used.update(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(a.g.node)
    return used


def _tied_table(model: onnx.ModelProto, inits: dict[str, np.ndarray], by_node: dict[str, Projection]) -> str | None:
    """The embedding table's name when it can be stored in int8: not used by a float projection."""
    gather = next((n for n in model.graph.node if n.name == EMBED_GATHER), None)
    if gather is None or gather.input[0] not in inits:
        return None
    table = gather.input[0]
    users = [n for n in model.graph.node if table in n.input and n.name != EMBED_GATHER]
    if any(n.name not in by_node for n in users):
        return None  # a float decoder shares it: keep the fp32 table
    return table


def _emit_embedding(
    r: _Rewriter,
    node: onnx.NodeProto,
    table_q: tuple[str, str],
    unsmooth: np.ndarray | None,
    table_o: tuple[str, str] | None,
    d: int,
) -> None:
    """Gather columns of the int8 (D, V) table and dequantize them (see the module docstring)."""
    name, ids = node.name.rsplit("/", 1)[0], node.input[1]  # ids (1, T)
    q, scale = table_q
    cols = r.node("Gather", [q, ids], node.name, output=f"{name}/columns", axis=1)  # (D, 1, T) int8
    rows = r.node("Transpose", [cols], f"{name}/Transpose", perm=[1, 2, 0])  # (1, T, D)
    rows = r.node("Cast", [rows], f"{name}/Cast", to=TensorProto.FLOAT)
    row_scale = r.node("Gather", [scale, ids], f"{name}/scale/Gather", axis=0)  # (1, T)
    minus_one = r.const("/const/int64/[1]/-1", np.array([-1], dtype=np.int64))
    row_scale = r.node("Unsqueeze", [row_scale, minus_one], f"{name}/scale/Unsqueeze")  # (1, T, 1)
    last = unsmooth is None and table_o is None
    rows = r.node("Mul", [rows, row_scale], f"{name}/Mul", output=node.output[0] if last else None)
    if unsmooth is not None:
        inv = r.const(f"{name}/unsmooth_scale", unsmooth)
        rows = r.node("Mul", [rows, inv], f"{name}/unsmooth/Mul", output=node.output[0] if table_o is None else None)
    if table_o is not None:  # the float outlier channels: (1, T, k) @ one-hot (k, D), added
        idx, vals = table_o
        k = len(r.inits[idx])
        sel = np.zeros((k, d), dtype=np.float32)
        sel[np.arange(k), r.inits[idx]] = 1.0
        o = r.node("Gather", [vals, ids], f"{name}/outliers/Gather", axis=0)  # (1, T, k)
        o = r.node("MatMul", [o, r.const(f"{name}/outliers/placement", sel)], f"{name}/outliers/MatMul")
        r.node("Add", [rows, o], f"{name}/outliers/Add", output=node.output[0])


def _emit_split_decoder(
    r: _Rewriter,
    node: onnx.NodeProto,
    p: Projection,
    table_q: tuple[str, str],
    table_o: tuple[str, str],
    act_ranges: dict[str, tuple[float, float]] | None,
) -> None:
    """The tied decoder when the table's outlier channels are kept in float:

    h ─ Mul(inlier mask) ─ int8 projection on the shared table (outlier rows zero) ─┐
    h ─ Gather(outlier channels) (T, k) ─ Gemm(table_outliers (V, k), transB=1) ────┴─ Add
    """
    x, out = node.input[0], node.output[0]
    idx, vals = table_o
    keep = np.ones(p.k, dtype=np.float32)
    keep[r.inits[idx]] = 0.0
    xo = r.node("Gather", [x, idx], f"{p.name}/outliers/Gather", axis=-1)
    yo = r.node("Gemm", [xo, vals], f"{p.name}/outliers/Gemm", transB=1)
    xi = r.node("Mul", [x, r.const(f"{p.name}/inlier_mask", keep)], f"{p.name}/inliers/Mul")
    stub = helper.make_node("Gemm", [xi, p.weight, *node.input[2:]], [f"{p.name}/inliers/output_0"], name=p.node)
    _emit_projection(r, stub, p, "int8", None, table_q, act_ranges)
    r.node("Add", [stub.output[0], yo], f"{p.name}/outliers/Add", output=out)


def _emit_split(
    r: _Rewriter,
    node: onnx.NodeProto,
    p: Projection,
    mode: str,
    split: np.ndarray,
    act_ranges: dict[str, tuple[float, float]] | None,
    cols: np.ndarray | None = None,
) -> None:
    """LLM.int8()-style decomposition: the few outlier input channels in a float MatMul.

    x ─ Mul(keep mask) ─ int8 projection (outlier rows zeroed) ─┐
    x ─ Gather(outlier channels) (…, k) ─ MatMul (k, N) float ──┴─ Add
    """
    x, out = node.input[0], node.output[0]
    keep = np.ones(p.k, dtype=np.float32)
    keep[split] = 0.0
    w = p.weight_kn(r.inits)
    idx = r.const(f"{p.name}/outlier_channels", split.astype(np.int64))
    xo = r.node("Gather", [x, idx], f"{p.name}/outliers/Gather", axis=-1)
    yo = r.node("MatMul", [xo, r.const(f"{p.weight}_outlier_rows", w[split])], f"{p.name}/outliers/MatMul")
    xi = r.node("Mul", [x, r.const(f"{p.name}/inlier_mask", keep)], f"{p.name}/inliers/Mul")
    r.inits[f"{p.weight}_inliers"] = w * keep[:, None]
    inner = Projection(p.name, p.node, f"{p.weight}_inliers", xi, p.k, p.n, False)
    stub = helper.make_node("MatMul", [xi, inner.weight], [f"{p.name}/inliers/output_0"], name=p.node)
    _emit_projection(r, stub, inner, mode, None, None, act_ranges, cols)
    r.node("Add", [stub.output[0], yo], f"{p.name}/outliers/Add", output=out)


def _emit_projection(
    r: _Rewriter,
    node: onnx.NodeProto,
    p: Projection,
    mode: str,
    inv_s: np.ndarray | None,
    shared: tuple[str, str] | None,
    act_ranges: dict[str, tuple[float, float]] | None,
    cols: np.ndarray | None = None,
) -> None:
    """One projection; `shared` is the int8 table (q, scale) when its weight is the tied table.

    With `cols` (output columns kept in float): y = int8(x) (those columns zero) + (x @ W[:, cols]) @ one-hot
    """
    if cols is not None and shared is None and not p.transposed:
        w = p.weight_kn(r.inits)
        src = node.input[0]
        if inv_s is not None:
            src = r.node("Mul", [src, r.const(f"{p.name}/smooth_scale", inv_s)], f"{p.name}/smooth/Mul")
        sel = np.zeros((len(cols), p.n), dtype=np.float32)
        sel[np.arange(len(cols)), cols] = 1.0
        wf = r.const(f"{p.weight}_float_columns", np.ascontiguousarray(w[:, cols]))
        yo = r.node("MatMul", [src, wf], f"{p.name}/float_columns/MatMul")  # (…, k)
        yo = r.node("MatMul", [yo, r.const(f"{p.name}/float_columns/placement", sel)], f"{p.name}/float_columns/Place")
        w0 = w.copy()
        w0[:, cols] = 0.0
        r.inits[f"{p.weight}_int8_columns"] = w0
        inner = Projection(p.name, p.node, f"{p.weight}_int8_columns", src, p.k, p.n, False)
        stub = helper.make_node("MatMul", [src, inner.weight], [f"{p.name}/int8_columns/output_0"], name=p.node)
        _emit_projection(r, stub, inner, mode, None, None, act_ranges)
        r.node("Add", [stub.output[0], yo], f"{p.name}/float_columns/Add", output=node.output[0])
        return
    x, out = node.input[0], node.output[0]
    if inv_s is not None:
        x = r.node("Mul", [x, r.const(f"{p.name}/smooth_scale", inv_s)], f"{p.name}/smooth/Mul")
    bias = node.input[2] if p.transposed and len(node.input) > 2 and node.input[2] else ""
    w = p.weight_kn(r.inits) if shared is None else None
    if mode == "int4" and not p.transposed:
        packed, scale = quantize_int4_blocks(w)
        b = r.const(f"{p.weight}_q4", packed)
        sc = r.const(f"{p.weight}_q4_scale", scale)
        r.node(
            "MatMulNBits", [x, b, sc], f"{p.name}/MatMulNBits", MS_DOMAIN, output=out,
            K=p.k, N=p.n, bits=4, block_size=INT4_BLOCK, accuracy_level=INT4_ACCURACY_LEVEL,
        )  # fmt: skip
        return
    if shared is not None:
        q, sc = shared
    else:
        wq, scale = quantize_int8_columns(w)
        q, sc = r.const(f"{p.weight}_quantized", wq), r.const(f"{p.weight}_scale", scale)
    if mode == "int8-static" and act_ranges is not None and p.name in act_ranges:
        lo, hi = act_ranges[p.name]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        a_scale = np.float32(max(hi - lo, 1e-8) / 255.0)
        a_zp = np.uint8(np.clip(np.rint(-lo / a_scale), 0, 255))
        xs, xz = (
            r.const(f"{p.name}/input_scale", np.array(a_scale)),
            r.const(f"{p.name}/input_zero_point", np.array(a_zp)),
        )
        xq = r.node("QuantizeLinear", [x, xs, xz], f"{p.name}/input/QuantizeLinear")
        xd = r.node("DequantizeLinear", [xq, xs, xz], f"{p.name}/input/DequantizeLinear")
        zp = r.const(f"{q}_zero_point", np.zeros(p.n, dtype=np.int8))
        wd = r.node("DequantizeLinear", [q, sc, zp], f"{p.name}/weight/DequantizeLinear", axis=1)
        if bias:
            y = r.node("MatMul", [xd, wd], f"{p.name}/MatMul")
            r.node("Add", [y, bias], f"{p.name}/Add", output=out)
        else:
            r.node("MatMul", [xd, wd], f"{p.name}/MatMul", output=out)
        return
    if p.name in r.per_token:
        _emit_per_token(r, p.name, x, q, sc, bias, out)
        return
    inputs = [x, q, sc] + (["", bias] if bias else [])
    r.node("DynamicQuantizeMatMul", inputs, f"{p.name}/DynamicQuantizeMatMul", MS_DOMAIN, output=out)


PER_TOKEN_FLOOR = 1e-20  # all-zero tokens (a padded or masked row) divide by this instead of 0


def _emit_per_token(r: _Rewriter, name: str, x: str, q: str, sc: str, bias: str, out: str) -> None:
    """DynamicQuantizeMatMul with one activation scale per token, exact in float: (x / m) W m = x W.

    x (…, K) ─ Abs ─ ReduceMax(-1, keepdims) ─ Max(floor) = m (…, 1)
    x ─ Div(m) ─ DynamicQuantizeMatMul(q, scale) ─ Mul(m) ─ [Add(bias)]

    ORT quantizes the activation with one uint8 scale per tensor; after the division every token
    spans [-1, 1], so a few large tokens no longer leave the others a handful of levels.
    """
    a = r.node("Abs", [x], f"{name}/per_token/Abs")
    if r.opset >= 18:
        axes = r.const("/const/int64/[1]/-1", np.array([-1], dtype=np.int64))
        m = r.node("ReduceMax", [a, axes], f"{name}/per_token/ReduceMax", keepdims=1)
    else:
        m = r.node("ReduceMax", [a], f"{name}/per_token/ReduceMax", axes=[-1], keepdims=1)
    floor = r.const("/const/float/per_token_floor", np.array(PER_TOKEN_FLOOR, dtype=np.float32))
    m = r.node("Max", [m, floor], f"{name}/per_token/Max")  # (…, 1)
    xs = r.node("Div", [x, m], f"{name}/per_token/Div")
    y = r.node("DynamicQuantizeMatMul", [xs, q, sc], f"{name}/DynamicQuantizeMatMul", MS_DOMAIN)
    if bias:
        y = r.node("Mul", [y, m], f"{name}/per_token/Mul")
        r.node("Add", [y, bias], f"{name}/Add", output=out)
    else:
        r.node("Mul", [y, m], f"{name}/per_token/Mul", output=out)
