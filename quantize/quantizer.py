"""`mbedge quantize`: fp32 model folder -> int8 / int8-static / int4 model folder, with its fidelity.

fp32 folder ─ calibration batches ─ activation statistics ─ smoothing alpha per projection
            ─ graph rewrite ─ fidelity vs fp32 (calibration + held-out) ─ [float fallback]
            ─ gate (worst-token cosine >= --min-cosine) ─ folder written atomically
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from modernbert_edge.contract import MARK, MARKED_ROWS, feeds
from modernbert_edge.errors import UserError
from modernbert_edge.export import names
from modernbert_edge.manifest import MODEL_FILE
from modernbert_edge.quantize import graph as qg
from modernbert_edge.quantize.calibration import CalibrationSet, load_data
from modernbert_edge.quantize.fidelity import apply_gate, check_gate, compare_models, format_report, load_model
from modernbert_edge.quantize.projections import (
    KEEP_FLOAT_ALWAYS,
    Projection,
    find_projections,
    load_initializers,
    outlier_channels,
)
from modernbert_edge.quantize.smoothing import ActivationStats, Choice, choose_smoothing, collect_stats, error_target

MODES = ("int8", "int8-static", "int4")
FALLBACK_STEPS = (1, 2, 4)  # projections left in float on each retry when the gate fails
METHOD = {
    "int8": "DynamicQuantizeMatMul: int8 weights per output channel, uint8 activations per tensor (dynamic)",
    "int8-static": "QDQ: int8 weights per output channel, uint8 activations per tensor (calibrated ranges)",
    "int4": "MatMulNBits: 4-bit weights in blocks of 32 (accuracy level 4); decoder and embeddings int8",
}


def plan_smoothing(
    model: onnx.ModelProto,
    inits: dict[str, np.ndarray],
    projections: Sequence[Projection],
    data: CalibrationSet,
    log: Callable[[str], None],
    per_token: bool = False,
) -> tuple[dict[str, Choice], dict]:
    """Calibrate, then choose a smoothing alpha per projection (and, with `per_token`, whether its
    activation gets one int8 scale per token); returns the choices and the stats."""
    t0 = time.perf_counter()
    stats = collect_stats(model, list(projections), data.calibration, progress=log)
    choices = {}
    for i, p in enumerate(projections, 1):
        if i % 8 == 1 or i == len(projections):
            log(f"choosing smoothing: projection {i}/{len(projections)}")
        choices[p.name] = choose_smoothing(
            stats[p.name], p.weight_kn(inits), allow_per_token=per_token, target=error_target(p)
        )
    log(
        f"calibrated {len(projections)} projections on {len(data.calibration)} batches "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return choices, stats


def make_plan(
    model: onnx.ModelProto,
    inits: dict[str, np.ndarray],
    projections: Sequence[Projection],
    mode: str,
    keep_float: set[str],
    choices: dict[str, Choice],
    stats: dict[str, ActivationStats],
) -> qg.QuantPlan:
    """One ProjectionPlan per projection: its smoothing scale, float input channels (split) and
    output columns, static activation range and per-token scaling, as `choices` and `mode` imply."""
    table = next((p for p in projections if p.name not in keep_float and p.transposed and _is_table(model, p)), None)
    table_split = None
    if table is not None and mode != "int4":
        parts = [outlier_channels(np.abs(inits[table.weight]).max(axis=0))]
        if table.name in choices:
            parts.append(choices[table.name].split)
        parts = [x for x in parts if x is not None]
        if parts:
            table_split = np.unique(np.concatenate(parts))
    plans = []
    for p in projections:
        c = choices.get(p.name)
        if p.name in keep_float or c is None:
            plans.append(qg.ProjectionPlan(p, keep_float=p.name in keep_float))
            continue
        float_columns = None
        if mode != "int4" and not p.transposed:  # columns that write the residual's outlier channels
            float_columns = outlier_channels(np.abs(p.weight_kn(inits)).max(axis=0))
        plans.append(
            qg.ProjectionPlan(
                p,
                # the table's float channels replace the decoder's smoothing
                scale=None if p is table and table_split is not None else c.scale,
                split=c.split,
                float_columns=float_columns,
                act_range=_static_range(p, c, stats[p.name]) if mode == "int8-static" else None,
                per_token=mode == "int8" and c.per_token,
            )
        )
    return qg.QuantPlan(mode, tuple(plans), table_split)


def _static_range(p: Projection, c: Choice, st: ActivationStats) -> tuple[float, float]:
    """The (min, max) of the smoothed input over the calibration batches; the int8 part of a split
    sees the inlier channels only."""
    s = c.scale if c.scale is not None else np.ones(p.k, dtype=np.float32)
    keep = np.ones(p.k, dtype=bool)
    if c.split is not None:
        keep[c.split] = False
    lo = min(float((lo_c / s)[keep].min()) for _, lo_c, _ in st.samples)
    hi = max(float((hi_c / s)[keep].max()) for _, _, hi_c in st.samples)
    return lo, hi


def _manifest_entry(plan: qg.QuantPlan, pp: qg.ProjectionPlan, choices: dict[str, Choice]) -> dict:
    """A projection's line in the manifest: its precision and, when it was calibrated, its choice."""
    entry: dict = {"precision": plan.precision(pp)}
    c = choices.get(pp.projection.name)
    if c is not None:
        entry.update(
            alpha=c.alpha,
            per_token=c.per_token,
            outlier_channels_in_float=0 if c.split is None else len(c.split),
            simulated_error=round(c.error_mean, 6),
            simulated_error_unsmoothed=round(c.error_plain, 6),
        )
    return entry


SPEED_SHAPE = (8, 128)  # (batch, tokens) of the speed check after quantizing
SPEED_ROUNDS = 3


def measure_speed(fp32_file: Path, qmodel: onnx.ModelProto, config: dict, rounds: int = SPEED_ROUNDS) -> dict:
    """The quantized graph's speed against its fp32 source on this CPU: one random (8, 128) batch,
    both sessions interleaved (modernbert_edge/timing.py), median of `rounds`, the runtime's default threads.
    Fill-mask graphs decode one marked row per text, as the runtime runs them."""
    from modernbert_edge.cpu import cpu_info
    from modernbert_edge.runtime.session import create_session
    from modernbert_edge.timing import summarize, time_calls

    b, s = SPEED_SHAPE
    s = min(s, int(config.get("max_position_embeddings") or s))
    vocab = int(config.get("vocab_size") or 6)
    rng = np.random.default_rng(0)
    mask = np.ones((b, s), dtype=np.int64)
    if any(p.key == MARKED_ROWS for p in qmodel.metadata_props):
        mask[:, s // 2] = MARK
    feed = feeds(rng.integers(5, max(vocab, 6), size=(b, s), dtype=np.int64), mask)
    sessions = {"fp32": create_session(fp32_file), "quantized": create_session(qmodel.SerializeToString())}
    times = time_calls({k: functools.partial(sess.run, None, feed) for k, sess in sessions.items()}, rounds)
    ms = {k: summarize(t)["median_ms"] for k, t in times.items()}
    return {
        "cpu": cpu_info().line(),
        "int8_kernel_class": cpu_info().kernel_class,
        "shape": f"{b}x{s}",
        "fp32_ms": round(ms["fp32"], 2),
        "quantized_ms": round(ms["quantized"], 2),
        "speedup": round(ms["fp32"] / ms["quantized"], 3),
    }


def _is_table(model: onnx.ModelProto, p: Projection) -> bool:
    return any(n.name == names.EMBED_GATHER and n.input[0] == p.weight for n in model.graph.node)


def _check_engine(engine: str, mode: str, manifest: dict) -> None:
    """The gate's engine can run what this mode writes (OpenVINO reads standard ONNX ops only)."""
    if engine not in ("onnxruntime", "openvino"):
        raise UserError(f"--engine must be onnxruntime or openvino, got {engine!r}.")
    if engine == "openvino":
        if mode != "int8-static" or manifest.get("ops") != "portable":
            raise UserError(
                "OpenVINO runs only --mode int8-static of a folder exported with --ops portable "
                "(the other modes use com.microsoft ops)."
            )
        if importlib.util.find_spec("openvino") is None:
            raise UserError("--engine openvino needs the openvino package: pip install 'modernbert-edge[openvino]'.")


def quantize(
    model_dir: str | Path,
    out_dir: str | Path,
    mode: str = "int8",
    calibration: str | Path | None = None,
    min_cosine: float = 0.99,
    force: bool = False,
    overwrite: bool = False,
    keep_float: Sequence[str] = (),
    fallback: bool = True,
    log: Callable[[str], None] = print,
    engine: str = "onnxruntime",
    file: str | None = None,
) -> dict:
    """Quantize an fp32 model folder into out_dir; returns the new manifest (with its fidelity).

    Raises UserError, writing nothing, when the worst-token cosine to fp32 is below min_cosine
    (after leaving the worst projections in float, when `fallback`), unless `force`. engine: the
    engine the gate runs the quantized model on, the one that will run it ("onnxruntime", or
    "openvino" for int8-static of a portable folder). An ONNX folder made elsewhere (no manifest.json;
    `file` picks its model file) gets onnxruntime's dynamic int8 and the same gate (foreign.py)."""
    from modernbert_edge.folders import OutputFolder
    from modernbert_edge.quantize.output import write_quantized
    from modernbert_edge.runtime.foreign import is_foreign

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}.")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    target = OutputFolder(out_dir, overwrite, sources=[model_dir])  # claimed before the (long) calibration
    if is_foreign(model_dir):
        from modernbert_edge.quantize.foreign import quantize_foreign

        if keep_float or engine != "onnxruntime":
            raise UserError(
                f"{model_dir} is an ONNX folder made elsewhere: --keep-float and --engine work on folders "
                "mbedge export wrote."
            )
        out_manifest = quantize_foreign(model_dir, target, file, mode, calibration, min_cosine, force, log)
        log(f"wrote {out_dir}")
        return out_manifest
    model, manifest = load_model(model_dir, file)
    if manifest.get("precision", "fp32") != "fp32":
        raise UserError(
            f"{model_dir} holds a model already quantized ({manifest['precision']}); quantize the fp32 folder it "
            "came from."
        )
    task = manifest["task"]
    _check_engine(engine, mode, manifest)
    data = load_data(model_dir, manifest, calibration)
    log(
        f"calibration: {data.texts} texts from {data.source} "
        f"({len(data.calibration)} + {len(data.heldout)} held-out batches)"
    )

    inits = load_initializers(model)
    projections = find_projections(model, inits)
    floats = _floats(projections, keep_float)
    if mode == "int4":  # only the int8 DynamicQuantizeMatMul ones (the decoder) are smoothed
        to_smooth = [p for p in projections if p.transposed and p.name not in floats]
    else:
        to_smooth = [p for p in projections if p.name not in floats]
    choices, stats = (
        plan_smoothing(model, inits, to_smooth, data, log, per_token=mode == "int8") if to_smooth else ({}, {})
    )

    t0 = time.perf_counter()
    fallback_steps = FALLBACK_STEPS if fallback and mode != "int4" else ()
    candidates = _Candidates(model, inits, projections, mode, choices, stats)
    plan, qmodel, report = _rewrite_until_gate(candidates, floats, fallback_steps, task, data, min_cosine, engine, log)
    apply_gate(report, min_cosine, force)
    log(f"evaluated in {time.perf_counter() - t0:.1f} s")
    table = format_report(report, f"{mode} on {engine} vs fp32 ({task})")
    log(table)
    check_gate(report, mode)

    speed = measure_speed(model_dir / manifest.get("model_file", MODEL_FILE), qmodel, manifest.get("config") or {})
    log(
        f"speed on this CPU ({speed['cpu']}): {mode} {speed['quantized_ms']:.1f} ms, fp32 {speed['fp32_ms']:.1f} ms "
        f"per {speed['shape']} batch ({speed['speedup']:.2f}x)"
    )
    out_manifest = _quantized_manifest(manifest, mode, plan, qmodel, choices, data, report, speed)
    source_files = ["config.json", *manifest.get("tokenizer_files", [])]
    write_quantized(target, qmodel, model_dir, source_files, manifest.get("sentence"), out_manifest)
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.name.startswith(MODEL_FILE))
    log(f"wrote {out_dir} ({size / 1e6:.1f} MB model)")
    return out_manifest


def _floats(projections: Sequence[Projection], keep_float: Sequence[str]) -> set[str]:
    """The projections left in float from the start: KEEP_FLOAT_ALWAYS and --keep-float (each checked)."""
    known = {p.name for p in projections}
    unknown = [k for k in keep_float if k not in known]
    if unknown:
        raise UserError(f"--keep-float {unknown[0]} names no projection; the names look like {projections[0].name}.")
    return {p.name for p in projections if p.name.startswith(KEEP_FLOAT_ALWAYS)} | set(keep_float)


@dataclass(frozen=True)
class _Candidates:
    """What every attempt's plan is made from; `rewrite(floats)` makes one."""

    model: onnx.ModelProto
    inits: dict[str, np.ndarray]
    projections: Sequence[Projection]
    mode: str
    choices: dict[str, Choice]
    stats: dict[str, ActivationStats]

    def rewrite(self, floats: set[str]) -> tuple[qg.QuantPlan, onnx.ModelProto]:
        plan = make_plan(self.model, self.inits, self.projections, self.mode, floats, self.choices, self.stats)
        return plan, qg.rewrite(self.model, self.inits, plan)


def _rewrite_until_gate(
    candidates: _Candidates,
    floats: set[str],
    fallback_steps: Sequence[int],
    task: str,
    data: CalibrationSet,
    min_cosine: float,
    engine: str,
    log: Callable[[str], None],
) -> tuple[qg.QuantPlan, onnx.ModelProto, dict]:
    """Rewrite and measure; while the worst-token cosine is below min_cosine, leave the next
    fallback_steps[i] projections of the largest simulated error in float and try again. Returns the
    last attempt's plan, graph and fidelity report."""
    choices = candidates.choices
    ranked = sorted((n for n in choices if n not in floats), key=lambda n: -choices[n].error_worst)
    attempt_floats = set(floats)
    for attempt in range(len(fallback_steps) + 1):
        plan, qmodel = candidates.rewrite(attempt_floats)
        report = compare_models(candidates.model, qmodel, task, data, progress=log, engine=engine)
        if report["cosine_worst"] >= min_cosine or attempt == len(fallback_steps):
            break
        extra = ranked[: fallback_steps[attempt]]
        log(f"worst-token cosine {report['cosine_worst']:.5f} < {min_cosine}: leaving {', '.join(extra)} in float")
        attempt_floats = floats | set(extra)
    return plan, qmodel, report


def _quantized_manifest(
    manifest: dict,
    mode: str,
    plan: qg.QuantPlan,
    qmodel: onnx.ModelProto,
    choices: dict[str, Choice],
    data: CalibrationSet,
    report: dict,
    speed: dict,
) -> dict:
    """The fp32 folder's manifest with the quantized model's precision, method, plan, fidelity and speed."""
    from modernbert_edge.folders import package_versions

    out_manifest = dict(manifest)
    out_manifest.update(
        speed=speed,
        precision=mode,
        model_file=MODEL_FILE,
        versions=package_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        quantization={
            "mode": mode,
            "method": METHOD[mode],
            "smoothing": "per-channel (SmoothQuant) or outlier channels in float, and per-token activation "
            "scales, chosen per projection by simulated int8 error",
            "projections": {pp.projection.name: _manifest_entry(plan, pp, choices) for pp in plan.projections},
            "float_layers": plan.float_names(),
            "embeddings": "int8 (hidden, vocab), one scale per vocabulary row"
            if qg.embeddings_int8(qmodel)
            else "fp32",
            "calibration": {
                "source": data.source,
                "texts": data.texts,
                "calibration_batches": len(data.calibration),
                "heldout_batches": len(data.heldout),
            },
        },
        fidelity=report,
    )
    return out_manifest
