"""The systems under test, and the prepare step that builds each one's files once (cached).

    work/<source>/<job>/checkpoint      random (or given) Hugging Face checkpoint
                       /trace-fp32      torch.onnx.export of the same transformers model
                       /trace-int8      quantize_dynamic(QInt8, per_channel) of trace-fp32
                       /optimum-int8    optimum-cli export onnx + onnxruntime quantize (when installed)
                       /ours-fp32       mbedge export (validate=False)
                       /ours-int8, -int4  mbedge quantize
                       /ours-portable   mbedge export --ops portable (validate=False)
                       /ours-openvino-int8  mbedge quantize --mode int8-static of ours-portable, run on OpenVINO
                       /gemm-int8.onnx  the lower-bound graph (lowerbound.py)

A folder is built into a temporary sibling and renamed when complete, so an interrupted prepare
never leaves a half-written cache entry.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modernbert_edge.errors import UserError

Log = Callable[[str], None]

JOB_TASKS = {"embeddings": "feature-extraction", "fill-mask": "fill-mask", "classification": "text-classification"}


def architecture(job: str) -> str:
    """The transformers class of a job's checkpoint (the contract is the one source)."""
    from modernbert_edge.contract import HEADS

    return HEADS[JOB_TASKS[job]].architecture


@dataclass(frozen=True)
class System:
    name: str
    kind: str  # worker kind: torch, torch-int8, onnx, ours, openvino (ours on the OpenVINO engine)
    label: str  # how the tables name it


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("pytorch", "torch", "PyTorch eager (SDPA)"),
        System("pytorch-int8", "torch-int8", "PyTorch int8 (torch.ao dynamic, nn.Linear)"),
        System("trace-fp32", "onnx", "torch.onnx.export fp32"),
        System("trace-int8", "onnx", "torch.onnx.export + quantize_dynamic int8"),
        System("optimum-int8", "onnx", "optimum export + quantize int8"),
        System("ours-fp32", "ours", "modernbert-edge fp32"),
        System("ours-int8", "ours", "modernbert-edge int8"),
        System("ours-int4", "ours", "modernbert-edge int4"),
        System("ours-openvino-int8", "openvino", "modernbert-edge int8-static (portable) on OpenVINO"),
    )
}


def optimum_available() -> bool:
    try:
        return importlib.util.find_spec("optimum.onnxruntime") is not None and shutil.which("optimum-cli") is not None
    except ImportError:
        return False


def unavailable_reason(system: str) -> str | None:
    """Why a system cannot run in this environment, or None."""
    if system == "optimum-int8" and not optimum_available():
        return "optimum[onnxruntime] is not installed"
    if SYSTEMS[system].kind == "openvino" and importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'modernbert-edge[openvino]')"
    return None


def _build(out: Path, fill: Callable[[Path], None]) -> Path:
    """fill(tmp) then rename tmp to out; nothing is left behind on failure."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def folder_mb(path: Path) -> float:
    """Model bytes on disk: the .onnx/.data/.safetensors/.bin files of a folder (or one file), in MB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    keep = (".onnx", ".data", ".safetensors", ".bin", ".onnx_data")
    return sum(p.stat().st_size for p in files if p.name.endswith(keep)) / 1e6


def _onnx_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise UserError(f"{folder} holds no .onnx file; delete it so that the bench builds it again.")
    return files[0]


# ── builders, one per system ──────────────────────────────────────────────────────────────────────


def make_source_checkpoint(job_dir: Path, job: str, size: str, log: Log) -> Path:
    from modernbert_edge.bench.checkpoints import make_checkpoint

    def fill(tmp: Path) -> None:
        log(f"  random {size} checkpoint ({architecture(job)})")
        make_checkpoint(tmp, JOB_TASKS[job], size=size)

    return _build(job_dir / "checkpoint", fill)


class _Wrapped:
    """transformers model -> forward(input_ids, attention_mask) returning the job's one output tensor."""

    @staticmethod
    def make(model: Any, job: str) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask)
                return out.last_hidden_state if job == "embeddings" else out.logits

        return Wrapped().eval()


def trace_export(checkpoint: Path, job: str, out_file: Path, log: Log) -> str:
    """torch.onnx.export of the transformers model; dynamo=True when onnxscript is there, else the
    TorchScript exporter. Returns which exporter was used."""
    import torch
    import transformers

    model = getattr(transformers, architecture(job)).from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    wrapped = _Wrapped.make(model, job)
    ids = torch.randint(5, min(model.config.vocab_size, 500), (2, 64))
    mask = torch.ones_like(ids)
    output = "last_hidden_state" if job == "embeddings" else "logits"
    args = dict(model=wrapped, args=(ids, mask), f=str(out_file), input_names=["input_ids", "attention_mask"])
    args["output_names"] = [output]
    if importlib.util.find_spec("onnxscript") is not None:
        try:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
            torch.onnx.export(**args, dynamo=True, dynamic_shapes=shapes, verbose=False)
            return "dynamo"
        except Exception as e:  # fall back to the TorchScript exporter, and say so
            log(f"  torch.onnx.export(dynamo=True) failed ({type(e).__name__}: {str(e)[:200]}); using dynamo=False")
            for stale in out_file.parent.glob("*"):
                stale.unlink()
    axes = {0: "batch", 1: "sequence"}
    dynamic = {"input_ids": axes, "attention_mask": axes, output: axes}
    torch.onnx.export(**args, dynamo=False, dynamic_axes=dynamic, opset_version=17)
    return "torchscript"


def _trace_fp32(checkpoint: Path, job: str, job_dir: Path, log: Log) -> Path:
    def fill(tmp: Path) -> None:
        log("  torch.onnx.export (trace-fp32)")
        exporter = trace_export(checkpoint, job, tmp / "model.onnx", log)
        (tmp / "info.json").write_text(json.dumps({"exporter": exporter}))

    return _build(job_dir / "trace-fp32", fill)


def _trace_int8(checkpoint: Path, job: str, job_dir: Path, log: Log) -> Path:
    from modernbert_edge.quantize.foreign import quantize_dynamic_int8

    src = _trace_fp32(checkpoint, job, job_dir, log)

    def fill(tmp: Path) -> None:
        log("  quantize_dynamic QInt8 per-channel (trace-int8)")
        quantize_dynamic_int8(_onnx_file(src), tmp / "model.onnx")

    return _build(job_dir / "trace-int8", fill)


def _optimum_int8(checkpoint: Path, job: str, job_dir: Path, log: Log) -> Path:
    def fill(tmp: Path) -> None:
        log("  optimum-cli export onnx + onnxruntime quantize --avx512_vnni (optimum-int8)")
        fp32 = tmp / "fp32"
        run = [
            "optimum-cli", "export", "onnx", "--model", str(checkpoint), "--task", JOB_TASKS[job], str(fp32),
        ]  # fmt: skip
        subprocess.run(run, check=True, capture_output=True, text=True)
        quant = ["optimum-cli", "onnxruntime", "quantize", "--onnx_model", str(fp32), "--avx512_vnni", "-o", str(tmp)]
        subprocess.run(quant, check=True, capture_output=True, text=True)
        shutil.rmtree(fp32)

    return _build(job_dir / "optimum-int8", fill)


def _ours_export(ops: str) -> Callable[[Path, str, Path, Log], Path]:
    name = "ours-fp32" if ops == "contrib" else f"ours-{ops}"

    def build(checkpoint: Path, job: str, job_dir: Path, log: Log) -> Path:
        out = job_dir / name
        if not out.exists():
            from modernbert_edge.export.exporter import export

            log(f"  mbedge export --ops {ops} ({name})")
            export(str(checkpoint), out, task=JOB_TASKS[job], validate=False, ops=ops, log=lambda m: log(f"    {m}"))
        return out

    return build


_ours_fp32 = _ours_export("contrib")


def _ours_quantized(
    mode: str, ops: str = "contrib", name: str = "", engine: str = "onnxruntime"
) -> Callable[[Path, str, Path, Log], Path]:
    def build(checkpoint: Path, job: str, job_dir: Path, log: Log) -> Path:
        src = _ours_export(ops)(checkpoint, job, job_dir, log)
        out = job_dir / (name or f"ours-{mode}")
        if not out.exists():
            from modernbert_edge.quantize.quantizer import quantize

            log(f"  mbedge quantize --mode {mode} ({out.name})")
            # force: the bench measures fidelity to PyTorch itself; a random checkpoint may miss the gate
            quantize(src, out, mode=mode, force=True, engine=engine, log=lambda m: log(f"    {m}"))
        return out

    return build


BUILDERS: dict[str, Callable[[Path, str, Path, Log], Path]] = {
    "pytorch": lambda checkpoint, job, job_dir, log: checkpoint,
    "pytorch-int8": lambda checkpoint, job, job_dir, log: checkpoint,
    "trace-fp32": _trace_fp32,
    "trace-int8": _trace_int8,
    "optimum-int8": _optimum_int8,
    "ours-fp32": _ours_fp32,
    "ours-int8": _ours_quantized("int8"),
    "ours-int4": _ours_quantized("int4"),
    "ours-openvino-int8": _ours_quantized("int8-static", "portable", "ours-openvino-int8", "openvino"),
}


def model_path(system: str, folder: Path) -> Path:
    """What the worker loads: the checkpoint or model folder for torch/ours, the .onnx file otherwise."""
    return folder if SYSTEMS[system].kind in ("torch", "torch-int8", "ours", "openvino") else _onnx_file(folder)


def prepare(system: str, checkpoint: Path, job: str, job_dir: Path, log: Log) -> Path:
    """Build (or find in the cache) a system's files for a job; returns the folder."""
    return BUILDERS[system](checkpoint, job, job_dir, log)
