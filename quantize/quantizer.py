"""`mbedge quantize`: fp32 model folder -> int8 / int8-static / int4 model folder, with its fidelity.

fp32 folder ─ calibration batches ─ activation statistics ─ smoothing alpha per projection
            ─ graph rewrite ─ fidelity vs fp32 (calibration + held-out) ─ [float fallback]
            ─ gate (worst-token cosine >= --min-cosine) ─ folder written atomically
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from modernbert_edge.errors import UserError
from modernbert_edge.manifest import MODEL_FILE, write_manifest
from modernbert_edge.quantize import graph as qg
from modernbert_edge.quantize.calibration import CalibrationSet, calibration_set
from modernbert_edge.quantize.fidelity import apply_gate, compare_models, format_report, load_model
from modernbert_edge.quantize.smoothing import Choice, choose_smoothing, collect_stats, error_target

MODES = ("int8", "int8-static", "int4")
FALLBACK_STEPS = (1, 2, 4)  # projections left in float on each retry when the gate fails
METHOD = {
    "int8": "DynamicQuantizeMatMul: int8 weights per output channel, uint8 activations per tensor (dynamic)",
    "int8-static": "QDQ: int8 weights per output channel, uint8 activations per tensor (calibrated ranges)",
    "int4": "MatMulNBits: 4-bit weights in blocks of 32 (accuracy level 4); decoder and embeddings int8",
}


def pad_token_id(model_dir: Path) -> int | None:
    try:
        value = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("pad_token_id")
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, int) else None


def load_data(model_dir: Path, manifest: dict, calibration: str | Path | None) -> CalibrationSet:
    vocab = int(manifest.get("config", {}).get("vocab_size", 0)) or 2
    return calibration_set(model_dir, vocab, pad_token_id(model_dir), calibration)


def plan_smoothing(
    model: onnx.ModelProto,
    inits: dict[str, np.ndarray],
    projections: Sequence[qg.Projection],
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


def build(
    model: onnx.ModelProto,
    inits: dict[str, np.ndarray],
    projections: Sequence[qg.Projection],
    mode: str,
    keep_float: set[str],
    choices: dict[str, Choice],
    stats: dict,
    per_token: set[str] | None = None,
) -> onnx.ModelProto:
    """The quantized graph with the chosen smoothing, leaving `keep_float` projections in fp32;
    `per_token` (default: the choices' own) names the projections with per-token activation scales."""
    work = dict(inits)  # apply_smoothing copies what it changes
    quantized = [p for p in projections if p.name not in keep_float]
    if per_token is None:
        per_token = {p.name for p in quantized if p.name in choices and choices[p.name].per_token}
    scales = {
        p.name: choices[p.name].scale for p in quantized if p.name in choices and choices[p.name].scale is not None
    }
    absorbers = qg.find_absorbers(model, list(projections))
    muls = None  # set below, once the decoder's smoothing is settled
    splits = {
        p.name: choices[p.name].split for p in quantized if p.name in choices and choices[p.name].split is not None
    }
    ranges = None
    if mode == "int8-static":
        ranges = {}
        for p in quantized:
            s = scales.get(p.name, np.ones(p.k, dtype=np.float32))
            keep = np.ones(p.k, dtype=bool)
            if p.name in splits:
                keep[splits[p.name]] = False  # the int8 part sees the inlier channels only
            lo = min(float((lo_c / s)[keep].min()) for _, lo_c, _ in stats[p.name].samples)
            hi = max(float((hi_c / s)[keep].max()) for _, _, hi_c in stats[p.name].samples)
            ranges[p.name] = (lo, hi)
    col_splits = {}
    for p in quantized:
        if not p.transposed and p.name in choices:  # columns that write the residual's outlier channels
            cols = qg.outlier_channels(np.abs(p.weight_kn(inits)).max(axis=0))
            if cols is not None:
                col_splits[p.name] = cols
    table_split = None
    dec = next((p for p in quantized if p.transposed and _is_table(model, p)), None)
    if dec is not None and mode != "int4":
        parts = [qg.outlier_channels(np.abs(inits[dec.weight]).max(axis=0))]
        if dec.name in choices:
            parts.append(choices[dec.name].split)
        parts = [x for x in parts if x is not None]
        if parts:
            table_split = np.unique(np.concatenate(parts))
            scales.pop(dec.name, None)  # the float channels replace the decoder's smoothing
    muls = qg.apply_smoothing(work, quantized, absorbers, scales)
    table_smooth = next(
        (scales[p.name] for p in quantized if p.transposed and p.name in scales and _is_table(model, p)), None
    )
    return qg.rewrite(
        model,
        work,
        list(projections),
        mode,
        keep_float,
        muls,
        ranges,
        table_smooth,
        splits,
        col_splits,
        table_split,
        per_token,
    )


def _is_table(model: onnx.ModelProto, p: qg.Projection) -> bool:
    return any(n.name == qg.EMBED_GATHER and n.input[0] == p.weight for n in model.graph.node)


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
) -> dict:
    """Quantize an fp32 model folder into out_dir; returns the new manifest (with its fidelity).

    Raises UserError, writing nothing, when the worst-token cosine to fp32 is below min_cosine
    (after leaving the worst projections in float, when `fallback`), unless `force`."""
    from modernbert_edge.export.exporter import package_versions, save_model, write_atomically
    from modernbert_edge.export.sentence import copy_sentence

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}.")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite to replace it.")
    model, manifest = load_model(model_dir)
    if manifest.get("precision", "fp32") != "fp32":
        raise UserError(f"{model_dir} holds a {manifest['precision']} model; quantize the fp32 folder it came from.")
    task = manifest["task"]
    data = load_data(model_dir, manifest, calibration)
    log(
        f"calibration: {data.texts} texts from {data.source} "
        f"({len(data.calibration)} + {len(data.heldout)} held-out batches)"
    )

    inits = qg.load_initializers(model)
    projections = qg.find_projections(model, inits)
    names = {p.name for p in projections}
    unknown = [k for k in keep_float if k not in names]
    if unknown:
        raise UserError(f"--keep-float {unknown[0]} names no projection; the names look like {projections[0].name}.")
    floats = {p.name for p in projections if p.name.startswith(qg.KEEP_FLOAT_ALWAYS)} | set(keep_float)
    if mode == "int4":  # only the int8 DynamicQuantizeMatMul ones (the decoder) are smoothed
        to_smooth = [p for p in projections if p.transposed and p.name not in floats]
    else:
        to_smooth = [p for p in projections if p.name not in floats]
    choices, stats = (
        plan_smoothing(model, inits, to_smooth, data, log, per_token=mode == "int8") if to_smooth else ({}, {})
    )

    t0 = time.perf_counter()
    steps = FALLBACK_STEPS if fallback and mode != "int4" else ()
    ranked = sorted((n for n in choices if n not in floats), key=lambda n: -choices[n].error_worst)
    attempt_floats = set(floats)
    for attempt in range(len(steps) + 1):
        qmodel = build(model, inits, projections, mode, attempt_floats, choices, stats)
        report = compare_models(model, qmodel, task, data, progress=log)
        if report["cosine_worst"] >= min_cosine or attempt == len(steps):
            break
        extra = ranked[: steps[attempt]]
        log(f"worst-token cosine {report['cosine_worst']:.5f} < {min_cosine}: leaving {', '.join(extra)} in float")
        attempt_floats = floats | set(extra)
    apply_gate(report, min_cosine, force)
    log(f"evaluated in {time.perf_counter() - t0:.1f} s")
    table = format_report(report, f"{mode} vs fp32 ({task})")
    log(table)
    if report["gate"]["status"] == "failed":
        raise UserError(
            f"the {mode} model's worst-token cosine to fp32 is {report['cosine_worst']:.5f}, "
            f"below --min-cosine "
            f"{min_cosine}; nothing was written (pass --force to write it anyway)."
        )

    out_manifest = dict(manifest)
    out_manifest.update(
        precision=mode,
        model_file=MODEL_FILE,
        versions=package_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        quantization={
            "mode": mode,
            "method": METHOD[mode],
            "smoothing": "per-channel (SmoothQuant) or outlier channels in float, and per-token activation "
            "scales, chosen per projection by simulated int8 error",
            "projections": {
                p.name: {
                    "precision": "fp32"
                    if p.name in attempt_floats
                    else ("int4" if mode == "int4" and not p.transposed else "int8"),
                    **(
                        {
                            "alpha": choices[p.name].alpha,
                            "per_token": choices[p.name].per_token,
                            "outlier_channels_in_float": 0
                            if choices[p.name].split is None
                            else len(choices[p.name].split),
                            "simulated_error": round(choices[p.name].error_mean, 6),
                            "simulated_error_unsmoothed": round(choices[p.name].error_plain, 6),
                        }
                        if p.name in choices
                        else {}
                    ),
                }
                for p in projections
            },
            "float_layers": sorted(attempt_floats),
            "embeddings": "int8 (hidden, vocab), one scale per vocabulary row"
            if any(i.name.endswith("tok_embeddings.weight_quantized") for i in qmodel.graph.initializer)
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
    source_files = ["config.json", *manifest.get("tokenizer_files", [])]

    def fill(tmp: Path) -> None:
        save_model(qmodel, tmp / MODEL_FILE)
        for f in source_files:
            if (model_dir / f).is_file():
                shutil.copy2(model_dir / f, tmp / f)
        copy_sentence(model_dir, tmp, manifest.get("sentence"))  # sentence-transformers modules, as exported
        write_manifest(tmp, out_manifest)

    write_atomically(out_dir, overwrite, fill)
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.name.startswith(MODEL_FILE))
    log(f"wrote {out_dir} ({size / 1e6:.1f} MB model)")
    return out_manifest
