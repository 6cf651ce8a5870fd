"""The graph rewrite: fp32 export -> int8 / int8-static / int4 graph, node by node, by name.

The quantizer decides, per projection (see quantize/projections.py), how it is quantized: one
`ProjectionPlan` each, gathered in a frozen `QuantPlan`. `rewrite` carries the plan out:

    x ─ [smooth/Mul] ─ DynamicQuantizeMatMul(W_q int8 (K, N), scale (N,))       int8
    x ─ [smooth/Mul] ─ Q ─ DQ ─ MatMul ─ DQ(W_q, scale, axis=1)                  int8-static
    x ─ [smooth/Mul] ─ MatMulNBits(4-bit blocks of W^T, scales)                  int4

keeping every output tensor name, so the rest of the graph is untouched. Smoothing scales are
folded where they can be (find_absorbers); only the others get the explicit Mul.

The tied embedding table is stored once, as int8 (D, V) with one scale per vocabulary row: the
decoder uses it as its int8 weight, and the embedding lookup gathers and dequantizes its columns:

    ids ─ Gather(W_q, axis=1) (D, 1, T) ─ Transpose (1, T, D) ─ Cast ─ Mul(scale[ids]) ─ [Mul(1/s)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modernbert_edge.export import names
from modernbert_edge.export.builder import MS_DOMAIN, node_domains
from modernbert_edge.quantize import weights
from modernbert_edge.quantize.projections import Projection, apply_smoothing, find_absorbers

INT4_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits (see the measurements in the README)


@dataclass(frozen=True)
class ProjectionPlan:
    """What the quantizer decided for one projection."""

    projection: Projection
    keep_float: bool = False  # left as the fp32 MatMul/Gemm; the fields below then do not apply
    scale: np.ndarray | None = None  # smoothing s (K,): x / s, diag(s) W (folded, or an explicit Mul)
    split: np.ndarray | None = None  # input channels multiplied in float beside the int8 MatMul
    float_columns: np.ndarray | None = None  # output columns computed in float (int8 modes)
    act_range: tuple[float, float] | None = None  # int8-static: the input's calibrated (min, max)
    per_token: bool = False  # int8: one activation scale per token around DynamicQuantizeMatMul


@dataclass(frozen=True)
class QuantPlan:
    """Every projection's plan, in graph order, and the tied embedding table's outlier channels."""

    mode: str  # int8, int8-static or int4 (quantizer.MODES)
    projections: tuple[ProjectionPlan, ...]
    table_split: np.ndarray | None = None  # hidden channels of the tied table kept in float

    def float_names(self) -> list[str]:
        """The projections left in float, sorted."""
        return sorted(pp.projection.name for pp in self.projections if pp.keep_float)

    def precision(self, pp: ProjectionPlan) -> str:
        """fp32, int8 or int4 (int4 mode keeps the decoder's Gemm in int8)."""
        if pp.keep_float:
            return "fp32"
        return "int4" if self.mode == "int4" and not pp.projection.transposed else "int8"


@dataclass
class _Rewriter:
    inits: dict[str, np.ndarray]
    nodes: list[onnx.NodeProto]
    opset: int = 20  # the default domain's: ReduceMax takes its axes as an input from 18 on

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def node(
        self, op: str, inputs: list[str], name: str, domain: str = "", output: str | None = None, **attrs: object
    ) -> str:
        out = output or f"{name}/output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, domain=domain or None, **attrs))
        return out


def rewrite(model: onnx.ModelProto, inits: dict[str, np.ndarray], plan: QuantPlan) -> onnx.ModelProto:
    """The quantized model that `plan` describes; projections it keeps in float stay MatMul/Gemm.

    The smoothing scales are folded first (into copies of the touched initializers; `inits` is
    not changed), then each quantized projection's node is replaced as the plan says."""
    work = dict(inits)
    quantized = [pp for pp in plan.projections if not pp.keep_float]
    absorbers = find_absorbers(model, [pp.projection for pp in plan.projections])
    scales = {pp.projection.name: pp.scale for pp in quantized if pp.scale is not None}
    muls = apply_smoothing(work, [pp.projection for pp in quantized], absorbers, scales)
    by_node = {pp.projection.node: pp for pp in quantized}
    table = _tied_table(model, work, by_node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 20)
    r = _Rewriter(work, [], opset)
    mode = plan.mode
    table_q, unsmooth, table_o = None, None, None
    if table is not None:  # the embedding table, int8 (D, V), shared with a quantized tied decoder
        e = work[table]  # (V, D)
        if plan.table_split is not None:
            table_o = (
                r.const(f"{table}_outlier_channels", plan.table_split.astype(np.int64)),
                r.const(f"{table}_outliers", e[:, plan.table_split]),
            )
            e = e.copy()
            e[:, plan.table_split] = 0.0
        dec = next((pp for pp in by_node.values() if pp.projection.weight == table), None)
        q, scale = weights.quantize_int8_columns(e.T, product=dec is not None)  # (D, V), a scale per vocabulary row
        table_q = (r.const(f"{table}_quantized", q), r.const(f"{table}_scale", scale))
        del r.inits[table]
        if dec is not None and dec.scale is not None:
            unsmooth = (1.0 / dec.scale).astype(np.float32)  # the decoder's s lives in the table
    for node in model.graph.node:
        pp = by_node.get(node.name)
        if node.name == names.EMBED_GATHER and table_q is not None:
            _emit_embedding(r, node, table_q, unsmooth, table_o, e.shape[1])
        elif pp is None:
            r.nodes.append(node)
        else:
            p = pp.projection
            shared = table_q if p.weight == table else None
            if shared is not None and table_o is not None:
                _emit_split_decoder(r, node, p, table_q, table_o, pp)
            elif pp.split is not None and shared is None and not p.transposed and mode != "int4":
                _emit_split(r, node, p, mode, pp)
            else:
                _emit_projection(r, node, p, mode, pp, muls.get(p.name), shared)
    used = _used_names(r.nodes)
    # (np.ascontiguousarray would turn 0-d constants, such as a Gather index, into 1-d ones)
    initializers = [numpy_helper.from_array(np.array(v, order="C"), k) for k, v in r.inits.items() if k in used]
    g = model.graph
    graph = helper.make_graph(r.nodes, g.name, g.input, g.output, initializer=initializers, doc_string=g.doc_string)
    opsets = {o.domain: o.version for o in model.opset_import}
    if MS_DOMAIN in node_domains(graph):  # a portable graph stays free of com.microsoft ops where the mode allows
        opsets.setdefault(MS_DOMAIN, 1)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    out.ir_version, out.producer_name = model.ir_version, model.producer_name
    out.doc_string = model.doc_string
    out.metadata_props.extend(model.metadata_props)  # e.g. the fill-mask graph's marked rows
    return out


def embeddings_int8(model: onnx.ModelProto) -> bool:
    """Whether the embedding lookup reads an int8 table (the rewrite stores a tied table once, in int8)."""
    gather = next((n for n in model.graph.node if n.name == names.EMBED_GATHER), None)
    table = next((t for t in model.graph.initializer if gather is not None and t.name == gather.input[0]), None)
    return table is not None and table.data_type == TensorProto.INT8


def _used_names(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """Every tensor name the nodes read, including inside If branches (outer-scope references)."""
    used = set()
    for n in nodes:
        used.update(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(a.g.node)
    return used


def _tied_table(model: onnx.ModelProto, inits: dict[str, np.ndarray], by_node: dict[str, ProjectionPlan]) -> str | None:
    """The embedding table's name when it can be stored in int8: not used by a float projection."""
    gather = next((n for n in model.graph.node if n.name == names.EMBED_GATHER), None)
    if gather is None or gather.input[0] not in inits:
        return None
    table = gather.input[0]
    users = [n for n in model.graph.node if table in n.input and n.name != names.EMBED_GATHER]
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
    plan: ProjectionPlan,
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
    _emit_projection(r, stub, p, "int8", replace(plan, float_columns=None), None, table_q)
    r.node("Add", [stub.output[0], yo], f"{p.name}/outliers/Add", output=out)


def _emit_split(
    r: _Rewriter,
    node: onnx.NodeProto,
    p: Projection,
    mode: str,
    plan: ProjectionPlan,
) -> None:
    """LLM.int8()-style decomposition: the few outlier input channels in a float MatMul.

    x ─ Mul(keep mask) ─ int8 projection (outlier rows zeroed) ─┐
    x ─ Gather(outlier channels) (…, k) ─ MatMul (k, N) float ──┴─ Add
    """
    x, out = node.input[0], node.output[0]
    split = plan.split
    assert split is not None
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
    _emit_projection(r, stub, inner, mode, plan)
    r.node("Add", [stub.output[0], yo], f"{p.name}/outliers/Add", output=out)


def _emit_projection(
    r: _Rewriter,
    node: onnx.NodeProto,
    p: Projection,
    mode: str,
    plan: ProjectionPlan,
    inv_s: np.ndarray | None = None,
    shared: tuple[str, str] | None = None,
) -> None:
    """One projection; `inv_s` is 1/s for an explicit smoothing Mul (where s did not fold), `shared`
    the int8 table (q, scale) when its weight is the tied table.

    With plan.float_columns: y = int8(x) (those columns zero) + (x @ W[:, cols]) @ one-hot
    """
    cols = plan.float_columns
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
        _emit_projection(r, stub, inner, mode, replace(plan, float_columns=None))
        r.node("Add", [stub.output[0], yo], f"{p.name}/float_columns/Add", output=node.output[0])
        return
    x, out = node.input[0], node.output[0]
    if inv_s is not None:
        x = r.node("Mul", [x, r.const(f"{p.name}/smooth_scale", inv_s)], f"{p.name}/smooth/Mul")
    bias = node.input[2] if p.transposed and len(node.input) > 2 and node.input[2] else ""
    w = p.weight_kn(r.inits) if shared is None else None
    if mode == "int4" and not p.transposed:
        packed, scale = weights.quantize_int4_blocks(w)
        b = r.const(f"{p.weight}_q4", packed)
        sc = r.const(f"{p.weight}_q4_scale", scale)
        r.node(
            "MatMulNBits", [x, b, sc], f"{p.name}/MatMulNBits", MS_DOMAIN, output=out,
            K=p.k, N=p.n, bits=4, block_size=weights.INT4_BLOCK, accuracy_level=INT4_ACCURACY_LEVEL,
        )  # fmt: skip
        return
    if shared is not None:
        q, sc = shared
    else:
        wq, scale = weights.quantize_int8_columns(w)
        q, sc = r.const(f"{p.weight}_quantized", wq), r.const(f"{p.weight}_scale", scale)
    if mode == "int8-static" and plan.act_range is not None:
        lo, hi = plan.act_range
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
    if plan.per_token:
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
