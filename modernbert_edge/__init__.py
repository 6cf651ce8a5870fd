"""modernbert-edge: ModernBERT to fused ONNX graphs, and a torch-free CPU runtime.

The subpackages live in the repository's top-level folders (export/, runtime/, quantize/,
bench/), mapped into this namespace by pyproject's package-dir.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

from modernbert_edge.errors import UserError

if TYPE_CHECKING:
    from modernbert_edge.runtime.model import Model

__version__ = "0.1.0"

# Running from a source checkout without installing (e.g. `python -c` in the repository root
# puts this folder first on sys.path): let the sibling folders resolve as subpackages too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(_os.path.join(_root, "export")):
    if _root not in __path__:
        __path__.append(_root)


def load(model_dir: str, threads: int | None = None, **kwargs: object) -> Model:
    """Load a model folder written by `mbedge export` or `mbedge quantize` (see runtime.Model)."""
    from modernbert_edge.runtime import load as _load

    return _load(model_dir, threads=threads, **kwargs)


__all__ = ["UserError", "load", "__version__"]
