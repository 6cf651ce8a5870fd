"""modernbert-edge: ModernBERT to fused ONNX graphs, and a torch-free CPU runtime.

The subpackages live in the repository's top-level folders (export/, runtime/, quantize/,
bench/), mapped into this namespace by pyproject's package-dir.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

from modernbert_edge.errors import OptionError, UserError

if TYPE_CHECKING:
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
    from modernbert_edge.runtime.loader import load
    from modernbert_edge.runtime.model import Model
    from modernbert_edge.runtime.options import Aggregation, Engine, Pooling, Spinning, Truncation
    from modernbert_edge.runtime.results import Answer, Entity, FillMaskPrediction, LabelScore, RankedDocument

__version__ = "0.2.0"

# Running from a source checkout without installing (e.g. `python -c` in the repository root
# puts this folder first on sys.path): let the sibling folders resolve as subpackages too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(_os.path.join(_root, "export")):
    if _root not in __path__:
        __path__.append(_root)

# The public API, imported on first use: `import modernbert_edge` loads none of numpy, onnxruntime or
# tokenizers (the CLI's --help imports this package), `modernbert_edge.load(...)` loads the runtime.
_ERRORS = (
    "EmptyInputError",
    "InputError",
    "InputTooLongError",
    "MissingMaskError",
    "MissingTokenizerError",
    "ModelFolderError",
    "TaskMismatchError",
    "TruncationWarning",
)
_LAZY = {
    "load": "modernbert_edge.runtime.loader",
    "Model": "modernbert_edge.runtime.model",
    **dict.fromkeys(_ERRORS, "modernbert_edge.runtime.errors"),
    **dict.fromkeys(("Aggregation", "Engine", "Pooling", "Spinning", "Truncation"), "modernbert_edge.runtime.options"),
    **dict.fromkeys(
        ("Answer", "Entity", "FillMaskPrediction", "LabelScore", "RankedDocument"), "modernbert_edge.runtime.results"
    ),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Aggregation",
    "Answer",
    "EmptyInputError",
    "Engine",
    "Entity",
    "FillMaskPrediction",
    "InputError",
    "InputTooLongError",
    "LabelScore",
    "MissingMaskError",
    "MissingTokenizerError",
    "Model",
    "ModelFolderError",
    "OptionError",
    "Pooling",
    "RankedDocument",
    "Spinning",
    "TaskMismatchError",
    "Truncation",
    "TruncationWarning",
    "UserError",
    "__version__",
    "load",
]
