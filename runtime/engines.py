"""Engines that run a model folder: ONNX Runtime (every folder) and OpenVINO (portable folders).

    open_session(info, engine) ─ "onnxruntime" ─ session.OrtSession (CPU provider)
                               ├ "openvino"    ─ OpenVinoSession (CPU plugin, the portable graph)
                               └ "auto"        ─ AUTO_RULE

Both implement session.Session, what Model uses: input_names, output_names, output_shapes, mark (the
mask value that marks rows to decode, or None) and run(input_ids, attention_mask). OpenVINO reads only
standard ONNX ops: folders exported with `--ops portable`, in fp32 or quantized with
`--mode int8-static` (QDQ); `int8` (dynamic) uses com.microsoft DynamicQuantizeMatMul.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modernbert_edge.contract import INPUTS, feeds
from modernbert_edge.cpu import INT16_SATURATING, INT32, cpu_info
from modernbert_edge.errors import UserError
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.folder import ModelInfo
from modernbert_edge.runtime.options import ENGINES, HELP, Engine, choice

if TYPE_CHECKING:
    from modernbert_edge.runtime.session import Session

ONNXRUNTIME, OPENVINO, AUTO = Engine.ONNXRUNTIME.value, Engine.OPENVINO.value, Engine.AUTO.value
OPENVINO_PRECISIONS = ("fp32", "int8-static")  # what a portable folder holds in standard ops only
# OpenVINO's CPU plugin, per folder precision. fp32 folders run at f32: the exported graph's precision
# (parity <= 1e-4). int8-static folders run at OpenVINO's default precision (bf16 between the int8
# matmuls on CPUs with AVX512-BF16 or AMX, f32 elsewhere); the fidelity gate of
# `mbedge quantize --engine openvino` measures exactly this configuration.
OPENVINO_CONFIGS = {
    "fp32": {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    "int8-static": {"PERFORMANCE_HINT": "LATENCY"},
}
# Measured with bench/engines.py (ModernBERT-base shape, 2 threads, three interleaved runs on a shared
# Zen 4 machine; README, Engines): OpenVINO on an int8-static folder ran 1.0-1.6x faster than
# onnxruntime on the same file from 8 x 128 to 1 x 2048 (0.7-1.4x at 1 x 128); on an fp32 folder at
# f32 it was not consistently faster (0.6-1.3x). Hence:
# On an AVX2 CPU without VNNI (AMD EPYC, CPU family 23; shared/notes/cpu-classes.md, base shape, 2 threads,
# median of 3) OpenVINO ran the int8-static folder 1.8-2.1x slower than onnxruntime ran our int8 folder
# (8 x 128: 7.51 against 3.54 s): the rule is one per int8 kernel class (modernbert_edge/cpu.py).
AUTO_RULE = (
    "openvino for int8-static folders exported with --ops portable when openvino is installed and the CPU "
    "has VNNI or AMX (where it was measured faster), else onnxruntime"
)
# What int8 buys in speed over fp32, per kernel class, as measured (base shape, 2 threads, onnxruntime):
INT8_SPEED = {
    INT32: "int8 ran 3.0-4.4x PyTorch fp32 eager at base shape (embeddings and fill-mask, 1 x 128 to 1 x 8192, "
    "2 threads) on an AMD EPYC Zen 4 (AVX512-VNNI; docs/bench.md)",
    INT16_SATURATING: "int8 ran 1.00-1.14x this project's fp32 on an AMD EPYC with AVX2 only (8 x 128, 1 x 512; "
    "docs/cpu-classes.md): on this CPU class int8 buys a smaller file, not speed",
}

ENGINE_HELP = HELP["engine"]


def engine_line(info: ModelInfo, engine: str) -> str:
    """What runs the folder and why, for `mbedge info`: 'openvino (auto: ...)'."""
    if engine == OPENVINO:
        hint = OPENVINO_CONFIGS[info.precision].get("INFERENCE_PRECISION_HINT", "its default precision")
        return f"{OPENVINO} (CPU plugin at {hint}; auto: {AUTO_RULE})"
    if not openvino_installed():
        return f"{ONNXRUNTIME} (openvino is not installed)"
    reason = openvino_blocker(info)
    return f"{ONNXRUNTIME} ({f'OpenVINO cannot run it: {reason}' if reason else f'auto: {AUTO_RULE}'})"


def _has_vnni() -> bool:
    """VNNI or AMX: the x86 CPUs on which OpenVINO's int8 was measured faster than onnxruntime's (Zen 4);
    on AVX2 without them it was 2.1x slower; on SSE-only x86 and ARM64 it was not measured."""
    f = cpu_info().features
    return any(f.get(k) for k in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_lines(info: ModelInfo) -> list[str]:
    """For `mbedge info`: whether the folder's fidelity gate covered this CPU's int8 kernel class, and
    what int8 buys here in speed (INT8_SPEED); empty for an fp32 folder."""
    if info.precision == "fp32":
        return []
    cpu = cpu_info()
    fidelity = info.manifest.get("fidelity") or {}
    classes = (fidelity.get("kernel_classes") or {}).get("classes") or {}
    entry = classes.get(cpu.kernel_class) if isinstance(classes, dict) else None
    cosine = entry.get("cosine_worst") if isinstance(entry, dict) else None
    if isinstance(cosine, (int, float)):
        lines = [f"gate covered this CPU's {cpu.kernel_class} int8 kernels: worst-token cosine {cosine:.5f}"]
    elif isinstance(entry, dict):  # recorded, not covered: written past the gate with --force
        lines = [
            f"WARNING: this folder's fidelity gate did not cover this CPU's {cpu.kernel_class} int8 kernels "
            f"({entry.get('how')}); it was written with --force"
        ]
    elif cpu.kernel_class == INT16_SATURATING:
        lines = [
            f"WARNING: this folder's fidelity gate did not cover this CPU's {cpu.kernel_class} int8 kernels "
            "(AVX2 without VNNI), where int8 weight pairs can overflow: quantize the fp32 folder again "
            "with this version of mbedge"
        ]
    else:
        lines = ["the folder records no fidelity per int8 kernel class (made before they were recorded, or elsewhere)"]
    forced = _forced_gate_line(fidelity)
    if forced:
        lines.insert(0, forced)
    speed = info.manifest.get("speed")
    if isinstance(speed, dict) and isinstance(speed.get("speedup"), (int, float)):
        lines.append(
            f"when quantized: {speed['speedup']:.2f}x its fp32 source at {speed.get('shape')} "
            f"on {speed.get('cpu', 'an unrecorded CPU')}"
        )
    return [*lines, INT8_SPEED[cpu.kernel_class]]


def _forced_gate_line(fidelity: dict) -> str | None:
    """The warning for a folder that FAILED its fidelity gate and was written anyway (--force), or None."""
    gate = fidelity.get("gate") if isinstance(fidelity, dict) else None
    if not isinstance(gate, dict) or gate.get("status") != "forced":
        return None
    why = []
    cosine, least = fidelity.get("cosine_worst"), gate.get("min_cosine")
    if isinstance(cosine, (int, float)) and isinstance(least, (int, float)) and cosine < least:
        why.append(f"worst-token cosine {cosine:.5f} < --min-cosine {least}")
    if gate.get("not_covered"):
        why.append(f"{', '.join(map(str, gate['not_covered']))} int8 kernels not covered")
    reason = f" ({'; '.join(why)})" if why else ""
    return f"WARNING: this folder FAILED its fidelity gate{reason} and was written with --force"


class EngineMissingError(UserError):
    """The engine asked for is not installed."""


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def openvino_blocker(info: ModelInfo) -> str | None:
    """Why OpenVINO cannot run this folder (one clause), or None when it can."""
    if info.manifest.get("ops") != "portable":
        return "it was exported with ONNX Runtime's com.microsoft ops (export it with --ops portable)"
    if info.precision not in OPENVINO_PRECISIONS:
        return (
            f"its {info.precision} graph uses com.microsoft ops "
            "(quantize the portable fp32 folder with --mode int8-static)"
        )
    if info.task == "fill-mask":  # its marked-rows head is checked on onnxruntime only
        return "fill-mask folders run on onnxruntime only (their marked-rows head is not verified on OpenVINO)"
    return None


def choose_engine(info: ModelInfo, engine: str) -> str:
    """The engine that will run the folder: `engine`, or for "auto" the one AUTO_RULE gives."""
    engine = choice("engine", engine, ENGINES)
    if engine == AUTO:
        runs_it = openvino_installed() and openvino_blocker(info) is None
        return OPENVINO if runs_it and _has_vnni() and info.precision == "int8-static" else ONNXRUNTIME
    if engine == OPENVINO:
        reason = openvino_blocker(info)  # first: installing openvino would not help
        if reason:
            raise UserError(f"{info.folder} cannot run on OpenVINO: {reason}.")
        if not openvino_installed():
            raise EngineMissingError(
                "engine 'openvino' needs the openvino package: pip install 'modernbert-edge[openvino]'."
            )
    return engine


def open_session(
    info: ModelInfo, engine: str = AUTO, threads: int | None = None, spinning: bool | str = False
) -> tuple[Session, str]:
    """A session for the folder's model file on the chosen engine, and that engine's name."""
    chosen = choose_engine(info, engine)
    if chosen == OPENVINO:
        return OpenVinoSession(info.model_path, threads, OPENVINO_CONFIGS[info.precision]), chosen
    from modernbert_edge.runtime.session import OrtSession

    return OrtSession(info.model_path, threads=threads, spinning=spinning), chosen


class OpenVinoSession:
    """The model file compiled by OpenVINO's CPU plugin (a session.Session); `run` is safe to call from
    several threads (one infer request per thread)."""

    def __init__(self, model_path: Path | bytes, threads: int | None = None, config: dict | None = None) -> None:
        import openvino as ov

        if threads is not None and threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = one per physical core), got {threads}")
        settings = dict(OPENVINO_CONFIGS["fp32"] if config is None else config)
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        source = (model_path, b"") if isinstance(model_path, bytes) else (str(model_path),)
        if isinstance(model_path, bytes):
            model_path = "the serialized model"
        try:
            self._compiled = core.compile_model(core.read_model(*source), "CPU", settings)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError for unreadable or unconvertible models
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFolderError(
                f"{model_path} could not be compiled by OpenVINO {ov.__version__} ({first})."
            ) from None
        self.input_names = [_port_name(p) for p in self._compiled.inputs]
        self.output_names = [_port_name(p) for p in self._compiled.outputs]
        self.output_shapes = {
            _port_name(p): [d.get_length() if d.is_static else "?" for d in p.get_partial_shape()]
            for p in self._compiled.outputs
        }
        self.mark = None  # fill-mask folders do not run here (openvino_blocker)
        if sorted(self.input_names) != sorted(INPUTS):
            raise ModelFolderError(
                f"{model_path} has graph inputs {self.input_names}, but this runtime feeds {list(INPUTS)}."
            )
        self._local = threading.local()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """(batch, sequence) int64 ids and mask -> {output name: array}."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        results = request.infer(feeds(input_ids, attention_mask))
        return dict(zip(self.output_names, results.to_tuple(), strict=True))


def _port_name(port: object) -> str:
    """The graph's own name of an input or output (OpenVINO also keeps the names of the node
    tensors it merged into it; the exported graph's contract names have no '/')."""
    names = sorted(port.get_names())
    return next((n for n in names if "/" not in n), port.get_any_name())
