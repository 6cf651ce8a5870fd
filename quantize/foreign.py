"""`mbedge quantize` of an ONNX folder made elsewhere (no manifest.json: an optimum export, a Hub
`onnx/model.onnx`): onnxruntime's dynamic int8, since the project's quantizer rewrites its own graph
by node name and cannot read another's.

foreign folder ─ quantize_dynamic (int8 weights per output channel on MatMul/Gemm)
               ─ fidelity of the final output vs fp32 (calibration + held-out) ─ gate ─ folder written atomically
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from modernbert_edge.errors import UserError

if TYPE_CHECKING:
    from modernbert_edge.folders import OutputFolder

METHOD = (
    "onnxruntime quantize_dynamic: int8 weights per output channel on MatMul/Gemm, uint8 activations (dynamic); "
    "columns with a same-sign weight pair above 128 requantized pair-safe (exact on AVX2 without VNNI)"
)


def quantize_dynamic_int8(src: Path, out: Path) -> Path:
    """onnxruntime.quantization.quantize_dynamic(QInt8, per_channel) of an fp32 .onnx file (its external
    data read from beside it); tensors of types it cannot infer (contrib ops) are taken as float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out


def make_pair_safe(qmodel: onnx.ModelProto, fp32: onnx.ModelProto) -> int:
    """Requantize, in place, the columns of quantize_dynamic's int8 weights (`W_quantized`, with its
    per-column `W_scale`) that hold a same-sign pair above the AVX2 kernel's limit
    (quantize/kernels.py), from the fp32 weight `W` where the source graph has it (else from the
    dequantized values); returns how many weights it changed. Others are left as they are and the
    gate reports them."""
    from onnx import numpy_helper

    from modernbert_edge.quantize.kernels import PAIR_LIMIT, pair_safe_int8_columns, u8s8_weights

    inits = {t.name: t for t in qmodel.graph.initializer}
    sources = {t.name: t for t in fp32.graph.initializer}
    changed = 0
    for name, q in u8s8_weights(qmodel)[0].items():
        base = name.removesuffix("_quantized")
        scale_name = base + "_scale"
        t = inits.get(name)
        scale = numpy_helper.to_array(inits[scale_name]) if scale_name in inits else None
        if t is None or scale is None or scale.shape != (q.shape[1],) or tuple(t.dims) != q.shape:
            continue
        qi = q.astype(np.int32)
        if qi.shape[0] % 2:
            qi = np.pad(qi, ((0, 1), (0, 0)))
        a, b = qi[0::2], qi[1::2]
        cols = np.flatnonzero(((a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)).any(axis=0))
        if not len(cols):
            continue
        src = numpy_helper.to_array(sources[base]) if base in sources else None
        w = src if src is not None and src.shape == q.shape else q.astype(np.float32) * scale
        new_q, new_scale = q.copy(), scale.copy()
        new_q[:, cols], new_scale[cols] = pair_safe_int8_columns(w[:, cols].astype(np.float32))
        inits[name].CopyFrom(numpy_helper.from_array(new_q, name))
        inits[scale_name].CopyFrom(numpy_helper.from_array(new_scale.astype(scale.dtype), scale_name))
        changed += 1
    return changed


def quantize_foreign(
    model_dir: Path,
    target: OutputFolder,
    file: str | None,
    mode: str,
    calibration: str | Path | None,
    min_cosine: float,
    force: bool,
    log: Callable[[str], None],
) -> dict:
    """Quantize a foreign folder's graph into target; returns the new manifest (see quantizer.quantize)."""
    from modernbert_edge.export.sentence import read_sentence
    from modernbert_edge.folders import package_versions
    from modernbert_edge.manifest import MODEL_FILE
    from modernbert_edge.quantize.calibration import load_data
    from modernbert_edge.quantize.fidelity import apply_gate, check_gate, compare_models, format_report, load_model
    from modernbert_edge.quantize.output import write_quantized

    if mode != "int8":
        raise UserError(
            f"{model_dir} is an ONNX folder made elsewhere (no manifest.json): it quantizes to --mode int8 only "
            f"(onnxruntime's dynamic quantization), not {mode}; export its checkpoint with mbedge export for {mode}."
        )
    model, manifest = load_model(model_dir, file)
    if manifest["precision"] != "fp32":
        raise UserError(
            f"{model_dir / manifest['model_file']} looks like a {manifest['precision']} model; "
            "quantize the fp32 model file (--file)."
        )
    task = manifest["task"]
    sentence = read_sentence(model_dir, int(manifest["config"].get("hidden_size", 0)))
    data = load_data(model_dir, manifest, calibration)
    log(
        f"calibration: {data.texts} texts from {data.source} "
        f"({len(data.calibration)} + {len(data.heldout)} held-out batches)"
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        qmodel = onnx.load(str(quantize_dynamic_int8(model_dir / manifest["model_file"], Path(tmp) / MODEL_FILE)))
    make_pair_safe(qmodel, model)  # exact on AVX2 without VNNI too (quantize/kernels.py)
    report = apply_gate(compare_models(model, qmodel, task, data, progress=log), min_cosine, force)
    log(f"quantized and evaluated in {time.perf_counter() - t0:.1f} s")
    log(format_report(report, f"int8 (foreign graph) vs fp32 ({task})"))
    check_gate(report, "int8")

    out_manifest = dict(manifest)
    out_manifest.update(
        precision="int8",
        model_file=MODEL_FILE,
        source={"checkpoint": str(model_dir), "file": manifest["model_file"], "foreign": True},
        versions=package_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        quantization={"mode": "int8", "method": METHOD, "foreign_graph": True},
        fidelity=report,
    )
    if sentence is not None:
        out_manifest["sentence"] = sentence

    write_quantized(target, qmodel, model_dir, ["config.json", *manifest["tokenizer_files"]], sentence, out_manifest)
    return out_manifest
