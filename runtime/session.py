"""The one place where ONNX Runtime sessions are created (`create_session`), and what every engine's
session offers the runtime (`Session`, a protocol: `OrtSession` here, `engines.OpenVinoSession`).

CPU provider, full graph optimization, a chosen intra-op thread count, and no spinning by default
(SPINNING says why). Everything in the project that needs an InferenceSession (runtime, export's
proof and parity check through the runtime, calibration, fidelity, benchmarks) gets it from
`create_session`, which checks that the provider asked for is the one in use. The runtime feeds a
graph through `Session.run`; code that needs extra outputs or raw feeds (quantize's calibration and
fidelity, bench's workers, runtime_overhead.py) runs the InferenceSession directly, with the
contract's names (modernbert_edge/contract.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from modernbert_edge.contract import INPUTS, MARKED_ROWS, feeds
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.options import DEFAULT_SPINNING, check_threads, spinning_mode

PROVIDER = "CPUExecutionProvider"
ZERO_INPUTS = ("token_type_ids",)  # fed as zeros when a graph (from another exporter) has it


# What idle intra-op pool threads do: the `spinning` option (True / False mean "on" / "off").
#   "off"   sleep at once: no core is busy between calls; every parallel op pays a thread wake-up.
#   "on"    spin (ONNX Runtime's default): the fastest hand-offs on idle cores, and each pool keeps
#           its cores busy for a while after every call, slowing whatever runs there next.
#   "brief" spin at most SPIN_US, then sleep (ONNX Runtime 1.26 and later; earlier ones spin as "on").
# Default "off", measured with scripts/runtime_overhead.py (base shape, int8, 2 threads, a shared
# 2-vCPU machine): "on" was up to 1.2x faster at 1x128 when the machine was quiet, and 1.3-2.5x
# slower at 1x128 and 8x128 when other processes wanted the cores; "brief" fell in between.
SPIN_US = 1000
SPINNING = {  # the keys are options.SPINNING_MODES
    "off": {"session.intra_op.allow_spinning": "0"},
    "brief": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(SPIN_US)},
    "on": {"session.intra_op.allow_spinning": "1"},
}


def create_session(
    model: Path | str | bytes,
    threads: int | None = None,
    *,
    spinning: bool | str = DEFAULT_SPINNING,
) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider for a model file (or serialized bytes).

    threads: intra-op threads (None or 0 = one per physical core); spinning: what idle pool threads
    do, one of SPINNING (True / False: "on" / "off"). Every graph optimization is on (DESIGN.md,
    Conventions: the graph is saved unoptimized and optimized at load).
    A file ORT cannot load raises ModelFolderError naming it.
    """
    check_threads(threads)
    spin = SPINNING[spinning_mode(spinning)]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    for key, value in spin.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's to act on
    source = model if isinstance(model, bytes) else str(model)
    name = "the serialized model" if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, options, providers=[PROVIDER])
    except Exception as e:  # ORT raises several types for unreadable models
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if _version(ort.__version__) < _version(MIN_ONNXRUNTIME) and any(m in first for m in _TOO_OLD):
            advice = f"this project's graphs need onnxruntime >= {MIN_ONNXRUNTIME}: pip install -U onnxruntime"
        else:
            advice = "the file may be truncated or corrupt: export the model again"
        raise ModelFolderError(
            f"{name} could not be loaded by onnxruntime {ort.__version__} ({first}); {advice}."
        ) from None
    in_use = session.get_providers()
    if PROVIDER not in in_use:
        raise ModelFolderError(f"onnxruntime did not use {PROVIDER} for {name} (in use: {in_use}).")
    return session


def run_graph(
    session: ort.InferenceSession, names: list[str] | None, feeds: dict[str, np.ndarray], model: Path | str
) -> list[np.ndarray]:
    """session.run, where a graph that loads but fails when it runs (a fixed Reshape, an Expand to a
    terabyte: a hostile or corrupt graph) is one ModelFolderError naming `model`, not a traceback."""
    errors = ort.capi.onnxruntime_pybind11_state
    try:
        return session.run(names, feeds)
    except (errors.Fail, errors.InvalidArgument, errors.RuntimeException) as e:
        detail = str(e).split("Status Message: ")[-1].splitlines()[0][:300]
        raise ModelFolderError(
            f"{model} loads but failed when it ran ({detail}); a graph made elsewhere may be corrupt: export it again."
        ) from None


# The oldest onnxruntime that loads every graph this project writes (GroupQueryAttention's `causal`
# attribute, opset-23 Attention/RotaryEmbedding): 1.24.1-1.29 refuse them; 1.30 and 1.31 load them all.
# pyproject.toml's floor says the same.
MIN_ONNXRUNTIME = "1.30"
_TOO_OLD = ("Unrecognized attribute", "is not a registered function/op", "opset", "Unsupported model IR version")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


@runtime_checkable
class Session(Protocol):
    """What the runtime needs of an engine's session for one model file (both engines implement it)."""

    input_names: list[str]
    output_names: list[str]
    output_shapes: dict[str, list]  # output name -> dims (ints, or names / "?" where dynamic)
    mark: int | None  # the attention_mask value that marks rows to decode (contract.MARK), or None

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """(batch, sequence) int64 ids and mask -> {output name: array}; safe from several threads."""
        ...


class OrtSession:
    """An ONNX Runtime InferenceSession for one model file (a `Session`); `run` is safe to call from
    several threads."""

    def __init__(self, model_path: Path, threads: int | None = None, spinning: bool | str = DEFAULT_SPINNING) -> None:
        self._session = create_session(model_path, threads, spinning=spinning)
        self.model_path = Path(model_path)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.output_shapes = {o.name: list(o.shape) for o in self._session.get_outputs()}
        marks = self._session.get_modelmeta().custom_metadata_map.get(MARKED_ROWS)
        self.mark = int(marks) if marks and marks.isdigit() else None  # the mask value that marks rows, if any
        self.zero_inputs = tuple(name for name in ZERO_INPUTS if name in self.input_names)
        missing = [name for name in INPUTS if name not in self.input_names]
        extra = [name for name in self.input_names if name not in (*INPUTS, *ZERO_INPUTS)]
        if missing or extra:
            raise ModelFolderError(
                f"{model_path} has graph inputs {self.input_names}, but this runtime feeds {list(INPUTS)} "
                f"(and {', '.join(ZERO_INPUTS)} as zeros): it is not an encoder graph this runtime can run."
            )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """(batch, sequence) int64 ids and mask -> {output name: array}."""
        feed = feeds(input_ids, attention_mask)
        feed.update({name: np.zeros_like(input_ids) for name in self.zero_inputs})
        outputs = run_graph(self._session, self.output_names, feed, self.model_path)
        return dict(zip(self.output_names, outputs, strict=True))
