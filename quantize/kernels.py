"""ONNX Runtime's int8 arithmetic, exactly, for both int8 kernel classes (modernbert_edge/cpu.py).

What `DynamicQuantizeMatMul` (and `MatMulInteger`, and the QDQ MatMul that ORT fuses into the same
MLAS kernel) computes on a CPU:

    x (M, K) float ─ dynamic_quantize: u8 a, scale, zero point za    (ORT's DynamicQuantizeLinear)
    acc (M, N) int32 = Σ_k a_k·w_k  −  za·Σ_k w_k                     (int8_product, per kernel class)
    y = float32(acc) · float32(scale · w_scale)

The classes differ in Σ_k a_k·w_k only. int32-accumulating kernels (VNNI, AMX, ARM64, SSE) are exact.
The AVX2 kernel without VNNI (`vpmaddubsw`, MLAS's U8S8 AVX2 kernel) multiplies adjacent pairs of
K — (0, 1), (2, 3), … as it packs B in groups of four — and adds each pair into int16 with
saturation before widening:

    Σ_j clip(a_2j·w_2j + a_2j+1·w_2j+1, −32768, 32767)

So a pair of same-sign weights with |w₁| + |w₂| > 128 can overflow when both activations are near
255 (255 · 129 = 32895 > 32767); a pair with |w₁| + |w₂| ≤ 128 never can, for any activations,
and then both classes give the same integers. `pair_safe_int8_columns` chooses such weights.
tests/test_kernels.py checks these functions bit for bit against onnxruntime on the present CPU
and, where qemu-user is available, on an emulated AVX2 CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from modernbert_edge.cpu import INT16_SATURATING, INT32, KERNEL_CLASSES

if TYPE_CHECKING:
    import onnx

PAIR_LIMIT = 128  # largest |w1| + |w2| of a same-sign pair that cannot saturate: 255 * 128 <= 32767
SCALE_STEPS = 3  # per column, scales tried between amax/127 and the pair-safe scale (6 or 12 steps: 0.1 %
# and 0.5 % less weight error on a Gaussian 768 x 768, for 1.7x and 3x the time)
COLUMN_CHUNK = 2048


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ORT's DynamicQuantizeLinear: uint8, one asymmetric scale per tensor, a range that holds 0."""
    x = np.asarray(x, dtype=np.float32)
    lo = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0.0)
    hi = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0.0)
    scale = np.float32((hi - lo) / np.float32(255.0)) if hi > lo else np.float32(1.0)
    zp = np.uint8(np.rint(np.clip(np.float32(0.0) - lo / scale, 0.0, 255.0)))
    q = np.clip(np.rint(x / scale) + np.float32(zp), 0, 255).astype(np.uint8)
    return q, scale, zp


def int8_product(a: np.ndarray, w: np.ndarray, kernel_class: str, za: int = 0) -> np.ndarray:
    """(M, N) int32: Σ_k (a_k − za)·w_k as `kernel_class` computes it; a uint8 (M, K), w int8 (K, N)."""
    if kernel_class not in KERNEL_CLASSES:
        raise ValueError(f"kernel class must be one of {KERNEL_CLASSES}, got {kernel_class!r}")
    a64, w64 = a.astype(np.int64), w.astype(np.int64)
    if kernel_class == INT32:
        raw = a64 @ w64
    else:
        if a64.shape[1] % 2:  # the kernel pads K with zeros
            a64 = np.pad(a64, ((0, 0), (0, 1)))
            w64 = np.pad(w64, ((0, 1), (0, 0)))
        raw = np.zeros((a64.shape[0], w64.shape[1]), dtype=np.int64)
        for j in range(0, a64.shape[1], 2):  # (M, N) per pair: memory stays M·N
            pair = np.outer(a64[:, j], w64[j]) + np.outer(a64[:, j + 1], w64[j + 1])
            raw += np.clip(pair, -32768, 32767)
    return (raw - int(za) * w64.sum(axis=0)).astype(np.int32)


def dynamic_quantize_matmul(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray, kernel_class: str) -> np.ndarray:
    """What DynamicQuantizeMatMul(x, w int8 (K, N), w_scale (N,)) returns under `kernel_class`."""
    lead = x.shape[:-1]
    a, scale, zp = dynamic_quantize(x.reshape(-1, x.shape[-1]))
    acc = int8_product(a, w, kernel_class, int(zp))
    y = acc.astype(np.float32) * (scale * w_scale.astype(np.float32))
    return y.reshape(*lead, w.shape[1])


def max_pair_sum(q: np.ndarray) -> int:
    """The largest |w1| + |w2| over same-sign adjacent pairs along K of an int8 (K, N) weight."""
    q = q.astype(np.int32)
    if q.shape[0] % 2:
        q = np.pad(q, ((0, 1), (0, 0)))
    a, b = q[0::2], q[1::2]
    same = (a * b) > 0
    return int(np.where(same, np.abs(a) + np.abs(b), 0).max(initial=0))


def overflowing_pairs(q: np.ndarray) -> int:
    """How many same-sign pairs of an int8 (K, N) weight can saturate an int16-saturating kernel."""
    q = q.astype(np.int32)
    if q.shape[0] % 2:
        q = np.pad(q, ((0, 1), (0, 0)))
    a, b = q[0::2], q[1::2]
    return int(((a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)).sum())


def _round_pair_safe(t: np.ndarray) -> np.ndarray:
    """t (K, N) in units of the scale -> int levels in [-127, 127] where no same-sign pair sums above
    PAIR_LIMIT: round, then move each offending pair to the nearest point of |q1| + |q2| = PAIR_LIMIT."""
    q = np.clip(np.rint(t), -127, 127)
    a, b = q[0::2], q[1::2]
    over = (a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)
    if over.any():
        ta, tb = np.abs(t[0::2][over]), np.abs(t[1::2][over])
        sign = np.sign(t[0::2][over])
        na = np.clip((ta - tb + PAIR_LIMIT) / 2.0, PAIR_LIMIT - 127, 127)  # projection onto the line
        lo, hi = np.floor(na), np.ceil(na)
        cost = lambda x: (x - ta) ** 2 + (PAIR_LIMIT - x - tb) ** 2  # noqa: E731
        na = np.where(cost(lo) <= cost(hi), lo, hi)
        a[over], b[over] = sign * na, sign * (PAIR_LIMIT - na)
        q[0::2], q[1::2] = a, b
    return q


def pair_safe_int8_columns(
    w_kn: np.ndarray, steps: int = SCALE_STEPS, chunk: int = COLUMN_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column, W ≈ q · scale, with no same-sign adjacent pair along K above
    PAIR_LIMIT: exact on every int8 kernel class. Per column, the scale with the smallest squared
    weight error among `steps` values from amax/127 (plain 8-bit, offending pairs moved onto the
    limit) to the smallest scale at which no pair offends (no pair moved). Columns are done `chunk`
    at a time, in float32 (a (768, 50368) table in a few seconds, in bounded memory)."""
    w = np.asarray(w_kn, dtype=np.float32)
    k, n = w.shape
    if k % 2:
        w = np.concatenate([w, np.zeros((1, n), dtype=np.float32)])
    q = np.empty(w.shape, dtype=np.int8)
    scale = np.empty(n, dtype=np.float32)
    for c0 in range(0, n, chunk):
        q[:, c0 : c0 + chunk], scale[c0 : c0 + chunk] = _pair_safe_block(w[:, c0 : c0 + chunk], steps)
    return q[:k], scale


def _pair_safe_block(w: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """pair_safe_int8_columns of a (K even, n) float32 block."""
    aw = np.abs(w)
    amax = aw.max(axis=0)
    same = (w[0::2] * w[1::2]) > 0
    pair_max = np.where(same, aw[0::2] + aw[1::2], np.float32(0)).max(axis=0)
    lo = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    hi = np.maximum(lo, pair_max / np.float32(PAIR_LIMIT)).astype(np.float32)
    best_q = _round_pair_safe(w / lo)
    best_scale = lo.copy()
    todo = np.flatnonzero(hi > lo)  # columns whose plain rounding could offend
    if len(todo):
        wt, lo_t, hi_t = w[:, todo], lo[todo], hi[todo]
        best_err = ((best_q[:, todo] * lo_t - wt) ** 2).sum(axis=0)
        for f in np.linspace(0.0, 1.0, steps, dtype=np.float32)[1:]:
            s = lo_t + (hi_t - lo_t) * f
            cand = _round_pair_safe(wt / s)
            err = ((cand * s - wt) ** 2).sum(axis=0)
            better = err < best_err
            cols = todo[better]
            best_q[:, cols], best_scale[cols], best_err[better] = cand[:, better], s[better], err[better]
    return best_q.astype(np.int8), best_scale


def saturation_error(x: np.ndarray, q: np.ndarray, w_scale: np.ndarray) -> float:
    """max |y_saturating − y_int32| / max |y_int32| of DynamicQuantizeMatMul on x: what the
    int16-saturating class loses against the exact one on these activations."""
    exact = dynamic_quantize_matmul(x, q, w_scale, INT32)
    sat = dynamic_quantize_matmul(x, q, w_scale, INT16_SATURATING)
    return float(np.abs(sat - exact).max() / max(float(np.abs(exact).max()), 1e-30))


# op: the input index of its int8 weight, for ops that multiply uint8 activations by int8 weights in
# MLAS's u8×s8 kernel (ORT's optimized graphs and optimum's exports use the last three)
U8S8_OPS = {"DynamicQuantizeMatMul": 1, "MatMulInteger": 1, "MatMulIntegerToFloat": 1, "QLinearMatMul": 3,
            "QGemm": 3, "QAttention": 1}  # fmt: skip
_PASS_THROUGH = ("Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten")


def u8s8_weights(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], int]:
    """The int8 weights that a graph multiplies with uint8 activations in MLAS's u8×s8 kernel (B of
    U8S8_OPS, and int8 tensors that a DequantizeLinear feeds, through shape ops, to a MatMul or Gemm:
    a QDQ pair ORT fuses into the same kernel), in the main graph and inside If/Loop bodies, as
    (K, N) arrays by name; and how many such products have a weight that is not a constant here
    (computed at run time: nothing can be said of it)."""
    import onnx
    from onnx import numpy_helper

    found: dict[str, np.ndarray] = {}
    unresolved = 0

    def visit(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> None:
        nonlocal unresolved
        inits = {**outer, **{t.name: t for t in graph.initializer}}
        producers = {o: n for n in graph.node for o in n.output}
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, inits)
                for sub in attr.graphs:
                    visit(sub, inits)
            name = None
            if node.op_type in U8S8_OPS and len(node.input) > U8S8_OPS[node.op_type]:
                name = node.input[U8S8_OPS[node.op_type]]
            elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
                src = producers.get(node.input[1])
                while src is not None and src.op_type in _PASS_THROUGH:
                    src = producers.get(src.input[0])
                if src is None or src.op_type != "DequantizeLinear":
                    continue
                name = src.input[0]
                if name in inits and inits[name].data_type != onnx.TensorProto.INT8:
                    continue  # uint8 weights (u8u8 kernel, which widens to int16 operands) or others
            if not name:
                continue
            t = inits.get(name)
            if t is None:
                unresolved += 1
            elif t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2:
                w = numpy_helper.to_array(t)
                if node.op_type in ("Gemm", "QGemm") and any(a.name == "transB" and a.i for a in node.attribute):
                    w = w.T
                found[name] = np.moveaxis(w, -2, 0).reshape(w.shape[-2], -1)  # (K, every column)

    visit(model.graph, {})
    return found, unresolved


def pair_check(model: onnx.ModelProto) -> dict:
    """How many weight pairs of the graph's u8×s8 products can saturate an int16-saturating kernel;
    `unresolved`: products whose weight is computed at run time (then nothing is proved)."""
    ws, unresolved = u8s8_weights(model)
    return {
        "int8_weights": len(ws),
        "largest_pair_sum": max((max_pair_sum(q) for q in ws.values()), default=0),
        "overflowing_pairs": sum(overflowing_pairs(q) for q in ws.values()),
        "unresolved": unresolved,
    }
