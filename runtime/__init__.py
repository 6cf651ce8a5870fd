"""The torch-free CPU runtime: load a model folder and run its task with ONNX Runtime.

Imports only numpy, onnxruntime and tokenizers (typer in commands.py); never torch,
transformers, optimum or onnx, and not the exporter (tests/test_layers.py): what a folder promises
comes from modernbert_edge/contract.py, the safetensors reader from modernbert_edge/safetensors.py.
`Model` and `load` are imported on first use, so the CLI can read commands.py (for --help) without
loading onnxruntime.

    import modernbert_edge as mbe
    model = mbe.load("out/fill-mask")
    model.fill_mask("Paris is the [MASK] of France.")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modernbert_edge.runtime.errors import (
    EmptyInputError,
    InputError,
    InputTooLongError,
    MissingMaskError,
    MissingTokenizerError,
    ModelFolderError,
    TaskMismatchError,
    TruncationWarning,
)

if TYPE_CHECKING:
    from modernbert_edge.runtime.loader import load
    from modernbert_edge.runtime.model import Model


def __getattr__(name: str) -> object:
    if name == "Model":
        from modernbert_edge.runtime.model import Model

        return Model
    if name == "load":
        from modernbert_edge.runtime.loader import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EmptyInputError",
    "InputError",
    "InputTooLongError",
    "MissingMaskError",
    "MissingTokenizerError",
    "Model",
    "ModelFolderError",
    "TaskMismatchError",
    "TruncationWarning",
    "load",
]
