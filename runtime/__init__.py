"""The torch-free CPU runtime: load a model folder and run its task with ONNX Runtime.

Imports only numpy, onnxruntime and tokenizers (typer in commands.py); never torch,
transformers, optimum or onnx, and not the exporter.

    import modernbert_edge as mbe
    model = mbe.load("out/fill-mask")
    model.fill_mask("Paris is the [MASK] of France.")
"""

from __future__ import annotations

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
from modernbert_edge.runtime.model import Model, load

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
