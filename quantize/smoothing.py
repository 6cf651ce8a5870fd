"""Calibration statistics and per-channel smoothing for int8 activations with outlier channels.

ONNX Runtime's DynamicQuantizeMatMul quantizes its activation with one scale per tensor, so a few
residual-stream channels that are tens of times larger than the rest leave the others a handful
of int8 levels. Smoothing (SmoothQuant, Xiao et al. 2023) divides each input channel j by

    s_j = max|x_j|^alpha / max|W_j,:|^(1 - alpha)

and multiplies row j of W by s_j: exact in float, and it moves the outliers into the weights,
whose int8 scale is per output column. alpha is chosen per projection, from {none, 0.3, ..., 0.8},
by simulating the int8 product on calibration rows and keeping the smallest error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from modernbert_edge.quantize.calibration import Batch
from modernbert_edge.quantize.graph import Projection

ALPHAS = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # None: no smoothing
ROWS_PER_BATCH = 48  # calibration rows kept per batch and projection, for the error search
MAX_COLUMNS = 2048  # the search looks at this many output columns of wide weights (the decoder)


@dataclass
class ActivationStats:
    """What one projection's input looked like on the calibration batches."""

    absmax: np.ndarray  # (K,) over every token
    lo: float = np.inf  # tensor-wide min and max (static activation ranges)
    hi: float = -np.inf
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    # per batch: (rows (r, K), per-channel min (K,), per-channel max (K,)); the min/max are the
    # batch's, because the dynamic int8 scale is computed over the whole tensor of a call


def session_with_outputs(model: onnx.ModelProto, names: Sequence[str], threads: int = 0):  # noqa: ANN201
    """An ONNX Runtime session of `model` that also returns the tensors `names` (model not changed)."""
    import onnxruntime as ort

    extra = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names]
    model.graph.output.extend(extra)
    try:
        data = model.SerializeToString()
    finally:
        for _ in extra:
            model.graph.output.pop()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def collect_stats(
    model: onnx.ModelProto,
    projections: list[Projection],
    batches: Sequence[Batch],
    progress: Callable[[str], None] = lambda _m: None,
    seed: int = 0,
) -> dict[str, ActivationStats]:
    """Run the fp32 model on the calibration batches and record every projection's input."""
    names = list(dict.fromkeys(p.x for p in projections))
    sess = session_with_outputs(model, names)
    rng = np.random.default_rng(seed)
    stats: dict[str, ActivationStats] = {}
    for b, batch in enumerate(batches, 1):
        progress(f"calibrating: batch {b}/{len(batches)}")
        values = dict(zip(names, sess.run(names, batch.feeds()), strict=True))
        for p in projections:
            x = values[p.x].reshape(-1, p.k).astype(np.float32)
            st = stats.setdefault(p.name, ActivationStats(np.zeros(p.k, dtype=np.float32)))
            st.absmax = np.maximum(st.absmax, np.abs(x).max(axis=0))
            st.lo, st.hi = min(st.lo, float(x.min())), max(st.hi, float(x.max()))
            rows = x if len(x) <= ROWS_PER_BATCH else x[rng.choice(len(x), ROWS_PER_BATCH, replace=False)]
            st.samples.append((rows, x.min(axis=0), x.max(axis=0)))
    return stats


def smoothing_scale(absmax_x: np.ndarray, w_kn: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_j|^(1-alpha), normalized to a geometric mean of 1."""
    wmax = np.maximum(np.abs(w_kn).max(axis=1), 1e-8)
    xmax = np.maximum(absmax_x, 1e-8)
    s = xmax**alpha / wmax ** (1.0 - alpha)
    s = s / np.exp(np.mean(np.log(s)))
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _fake_quant_weight(w_kn: np.ndarray) -> np.ndarray:
    amax = np.abs(w_kn).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(w_kn / scale), -127, 127) * scale


def _fake_quant_dynamic(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """ONNX Runtime's DynamicQuantizeLinear (uint8, asymmetric, range includes 0), then back."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    return (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale


def int8_error(stats: ActivationStats, w_kn: np.ndarray, s: np.ndarray | None) -> tuple[float, float]:
    """(mean, worst) relative row error ||xW - Q(x/s) Q(diag(s) W)|| / ||xW|| on the kept rows."""
    ws = w_kn if s is None else w_kn * s[:, None]
    wq = _fake_quant_weight(ws)
    errs = []
    for rows, lo_c, hi_c in stats.samples:
        ref = rows @ w_kn
        xs = rows if s is None else rows / s
        lo, hi = (lo_c.min(), hi_c.max()) if s is None else ((lo_c / s).min(), (hi_c / s).max())
        got = _fake_quant_dynamic(xs, float(lo), float(hi)) @ wq
        num = np.linalg.norm(ref - got, axis=1)
        errs.append(num / np.maximum(np.linalg.norm(ref, axis=1), 1e-12))
    e = np.concatenate(errs)
    return float(e.mean()), float(e.max())


@dataclass(frozen=True)
class Choice:
    alpha: float | None  # None: not smoothed
    scale: np.ndarray | None  # s (K,)
    error_mean: float  # simulated relative error with this choice
    error_worst: float
    error_plain: float  # mean error without smoothing


def choose_smoothing(
    stats: ActivationStats, w_kn: np.ndarray, alphas: Sequence[float | None] = ALPHAS, seed: int = 0
) -> Choice:
    """The alpha (or none) with the smallest mean simulated error; ties go to less smoothing."""
    if w_kn.shape[1] > MAX_COLUMNS:  # per-column weight scales: a column subset is exact for itself
        cols = np.random.default_rng(seed).choice(w_kn.shape[1], MAX_COLUMNS, replace=False)
        w_eval = w_kn[:, np.sort(cols)]
    else:
        w_eval = w_kn
    best: Choice | None = None
    plain = None
    for alpha in alphas:
        s = None if alpha is None else smoothing_scale(stats.absmax, w_kn, alpha)
        mean, worst = int8_error(stats, w_eval, s)
        plain = mean if alpha is None else plain
        if best is None or mean < best.error_mean * 0.98:
            best = Choice(alpha, s, mean, worst, plain if plain is not None else mean)
    assert best is not None
    return Choice(
        best.alpha, best.scale, best.error_mean, best.error_worst, plain if plain is not None else best.error_mean
    )
