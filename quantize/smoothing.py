"""Calibration statistics and per-channel smoothing for int8 activations with outlier channels.

ONNX Runtime's DynamicQuantizeMatMul quantizes its activation with one scale per tensor, so a few
residual-stream channels that are tens of times larger than the rest leave the others a handful
of int8 levels. Smoothing (SmoothQuant, Xiao et al. 2023) divides each input channel j by

    s_j = max|x_j|^alpha / max|W_j,:|^(1 - alpha)

and multiplies row j of W by s_j: exact in float, and it moves the outliers into the weights,
whose int8 scale is per output column. alpha is chosen per projection, from {none, 0.3, ..., 0.8},
by simulating the int8 product on calibration rows and keeping the smallest error; treatments that
add run-time work (outlier channels in float, per-token scales) are used only where smoothing
misses the error target (`choose_smoothing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from modernbert_edge.export import names
from modernbert_edge.quantize.calibration import Batch
from modernbert_edge.quantize.projections import Projection, outlier_channels
from modernbert_edge.quantize.weights import dequantize_int8_columns

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

ALPHAS = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # None: no smoothing
ROWS_PER_BATCH = 24  # calibration rows kept per batch and projection, for the error search
MAX_COLUMNS = 768  # the search looks at this many output columns of wide weights (the decoder)


@dataclass
class ActivationStats:
    """What one projection's input looked like on the calibration batches."""

    absmax: np.ndarray  # (K,) over every token
    lo: float = np.inf  # tensor-wide min and max (static activation ranges)
    hi: float = -np.inf
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    # per batch: (rows (r, K), per-channel min (K,), per-channel max (K,)); the min/max are the
    # batch's, because the dynamic int8 scale is computed over the whole tensor of a call

    def rows(self) -> np.ndarray:
        """(R, K) every batch's kept rows, stacked."""
        return np.concatenate([r for r, _, _ in self.samples])


def serialize_with_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> bytes:
    """`model` serialized with the tensors `outputs` as extra graph outputs (model not changed)."""
    extra = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs]
    model.graph.output.extend(extra)
    try:
        return model.SerializeToString()
    finally:
        for _ in extra:
            model.graph.output.pop()


def session_with_outputs(model: onnx.ModelProto, outputs: Sequence[str], threads: int = 0) -> InferenceSession:
    """An ONNX Runtime session of `model` that also returns the tensors `outputs` (model not changed)."""
    from modernbert_edge.runtime.session import create_session

    return create_session(serialize_with_outputs(model, outputs), threads)


def collect_stats(
    model: onnx.ModelProto,
    projections: list[Projection],
    batches: Sequence[Batch],
    progress: Callable[[str], None] = lambda _m: None,
    seed: int = 0,
) -> dict[str, ActivationStats]:
    """Run the fp32 model on the calibration batches and record every projection's input."""
    from modernbert_edge.runtime.session import run_graph

    inputs = list(dict.fromkeys(p.x for p in projections))
    sess = session_with_outputs(model, inputs)
    rng = np.random.default_rng(seed)
    stats: dict[str, ActivationStats] = {}
    for b, batch in enumerate(batches, 1):
        progress(f"calibrating: batch {b}/{len(batches)}")
        values = dict(zip(inputs, run_graph(sess, inputs, batch.feeds(), "the fp32 model"), strict=True))
        for p in projections:
            x = values[p.x].reshape(-1, p.k).astype(np.float32)
            st = stats.setdefault(p.name, ActivationStats(np.zeros(p.k, dtype=np.float32)))
            st.absmax = np.maximum(st.absmax, np.abs(x).max(axis=0))
            st.lo, st.hi = min(st.lo, float(x.min())), max(st.hi, float(x.max()))
            rows = x if len(x) <= ROWS_PER_BATCH else x[rng.choice(len(x), ROWS_PER_BATCH, replace=False)]
            st.samples.append((rows, x.min(axis=0), x.max(axis=0)))
    return stats


def smoothing_scale(absmax_x: np.ndarray, w_kn: np.ndarray, alpha: float, wmax: np.ndarray | None = None) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_j|^(1-alpha), normalized to a geometric mean of 1 (`wmax`:
    max|W_j| when the caller has it)."""
    wmax = np.maximum(np.abs(w_kn).max(axis=1) if wmax is None else wmax, 1e-8)
    xmax = np.maximum(absmax_x, 1e-8)
    s = xmax**alpha / wmax ** (1.0 - alpha)
    s = s / np.exp(np.mean(np.log(s)))
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _fake_quant_dynamic(x: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """ONNX Runtime's DynamicQuantizeLinear (uint8, asymmetric, range includes 0), then back;
    lo and hi are the tensor's range, or one range per row as (r, 1) arrays."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    return (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale


def per_token_max(x: np.ndarray) -> np.ndarray:
    """(r, 1) the largest |x| of each row, floored like the graph's per-token scale."""
    from modernbert_edge.quantize.graph import PER_TOKEN_FLOOR

    return np.maximum(np.abs(x).max(axis=1, keepdims=True), PER_TOKEN_FLOOR)


def quantized_weight(w_kn: np.ndarray, s: np.ndarray | None, split: np.ndarray | None) -> np.ndarray:
    """Q(diag(s) W) as the int8 graph holds it, the split input channels' rows zeroed."""
    keep = np.ones(w_kn.shape[0], dtype=bool)
    if split is not None:
        keep[split] = False
    ws = w_kn if s is None else w_kn * s[:, None]
    return dequantize_int8_columns(ws * keep[:, None])


def int8_error(
    stats: ActivationStats,
    w_kn: np.ndarray,
    s: np.ndarray | None,
    split: np.ndarray | None = None,
    per_token: bool = False,
    ref: np.ndarray | None = None,
    wq: np.ndarray | None = None,
) -> tuple[float, float]:
    """(mean, worst) relative row error ||xW - Q(x/s) Q(diag(s) W)|| / ||xW|| on the kept rows.

    With `split`, those input channels are multiplied in float and left out of the int8 product.
    With `per_token`, each row is divided by its largest |value| before the (per-tensor) int8
    quantization, as the graph's per-token scaling does; otherwise the range is the batch's.
    `ref` (x @ w_kn for stats.rows()) and `wq` (Q(diag(s) W) with the split rows zeroed, as
    quantized_weight gives it) may be passed to save recomputing them per candidate."""
    rows = stats.rows()  # (R, K)
    keep = np.ones(w_kn.shape[0], dtype=bool)
    if split is not None:
        keep[split] = False
    if wq is None:
        wq = quantized_weight(w_kn, s, split)
    xs = (rows if s is None else rows / s) * keep
    if per_token:
        m = per_token_max(xs)
        xq = _fake_quant_dynamic(xs / m, -1.0, 1.0) * m
    else:  # each batch's own tensor range, repeated for its kept rows
        inv = np.ones(w_kn.shape[0], dtype=np.float32) if s is None else 1.0 / s
        lo = np.concatenate([np.full(len(r), (lo_c * inv)[keep].min()) for r, lo_c, _ in stats.samples])
        hi = np.concatenate([np.full(len(r), (hi_c * inv)[keep].max()) for r, _, hi_c in stats.samples])
        xq = _fake_quant_dynamic(xs, lo[:, None], hi[:, None])
    got = xq.astype(np.float32) @ wq
    if split is not None:
        got += rows[:, split] @ w_kn[split]
    if ref is None:
        ref = rows @ w_kn  # (R, N)
    e = np.linalg.norm(ref - got, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    return float(e.mean()), float(e.max())


@dataclass(frozen=True)
class Choice:
    alpha: float | None  # None: not smoothed
    scale: np.ndarray | None  # s (K,)
    split: np.ndarray | None  # input channels multiplied in float beside the int8 MatMul
    error_mean: float  # simulated relative error with this choice
    error_worst: float
    error_plain: float  # mean error without smoothing
    per_token: bool = False  # activation scaled per token around DynamicQuantizeMatMul


ERROR_TARGET = 0.02  # simulated relative error taken as good enough: int8 (per-tensor activation,
# per-column weight) of an outlier-free, Gaussian-like activation simulates to about 0.012
HEAD_ERROR_TARGET = 0.005  # head projections run on a few rows in the runtime (masked, pooled) and
# write the prediction directly, so extra work on them is cheap and their error is not averaged away
COSTLY_GAIN = 0.8  # a costly candidate that misses the target must cut the error to this fraction


def error_target(p: Projection) -> float:
    """ERROR_TARGET for the encoder layers' projections, HEAD_ERROR_TARGET for the task head's."""
    return ERROR_TARGET if names.split_layer(p.name) is not None else HEAD_ERROR_TARGET


def choose_smoothing(
    stats: ActivationStats,
    w_kn: np.ndarray,
    alphas: Sequence[float | None] = ALPHAS,
    allow_split: bool = True,
    allow_per_token: bool = False,
    target: float = ERROR_TARGET,
    seed: int = 0,
) -> Choice:
    """The cheapest choice that simulates to `target` or better.

    Smoothing is free at run time (folded into the weights), so the alpha (or none) with the
    smallest simulated error comes first; a candidate must beat the ones before it by 2 %, so ties
    go to the simpler graph. Only when that misses the target are the candidates that add work
    tried, cheapest first: the outlier split (a float MatMul of a few channels, two passes over the
    activation), then per-token activation scales (with `allow_per_token`; about four passes),
    then both. The first group that reaches the target wins; if none does, the lowest error wins,
    provided it cuts the free choice's error to COSTLY_GAIN of it."""
    if w_kn.shape[1] > MAX_COLUMNS:  # per-column weight scales: a column subset is exact for itself
        cols = np.random.default_rng(seed).choice(w_kn.shape[1], MAX_COLUMNS, replace=False)
        w_eval = np.ascontiguousarray(w_kn[:, np.sort(cols)])
    else:
        w_eval = w_kn
    ref = stats.rows() @ w_eval
    wmax = np.abs(w_kn).max(axis=1)
    scales = {a: smoothing_scale(stats.absmax, w_kn, a, wmax) for a in alphas if a is not None}

    Candidate = tuple[float | None, np.ndarray | None, bool]  # alpha, split channels, per-token

    weights: dict[tuple, np.ndarray] = {}  # (alpha, split) -> quantized weight: per-token candidates share it

    def best_of(candidates: Sequence[Candidate], best: Choice | None = None) -> Choice:
        """The candidate with the smallest error, each beating `best` and those before it by 2 %."""
        for alpha, sp, per_token in candidates:
            s = None if alpha is None else scales[alpha]
            key = (alpha, None if sp is None else tuple(sp))
            if key not in weights:
                weights[key] = quantized_weight(w_eval, s, sp)
            mean, worst = int8_error(stats, w_eval, s, sp, per_token, ref, weights[key])
            if best is None or mean < best.error_mean * 0.98:
                best = Choice(alpha, s, sp, mean, worst, 0.0, per_token)
        assert best is not None
        return best

    unsmoothed = best_of([(None, None, False)])
    free = best_of([(a, None, False) for a in alphas if a is not None], unsmoothed if None in alphas else None)
    split = outlier_channels(stats.absmax) if allow_split else None
    groups = []
    if split is not None:
        groups.append([(None, split, False)])
    if allow_per_token:
        groups.append([(a, None, True) for a in alphas])
        if split is not None:
            groups.append([(None, split, True)])
    best = free
    if free.error_mean > target:
        costly = [best_of(g) for g in groups]
        reached = [c for c in costly if c.error_mean <= target]
        if reached:
            best = reached[0]
        elif costly:
            lowest = min(costly, key=lambda c: c.error_mean)
            best = lowest if lowest.error_mean < COSTLY_GAIN * free.error_mean else free
    return dataclasses.replace(best, error_plain=unsmoothed.error_mean)
