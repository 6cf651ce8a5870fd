"""modernbert_edge.ray: run a model folder over a corpus on a Ray cluster (`pip install "modernbert-edge[ray]"`).

    embed(dataset, model_dir), classify(...), tag(...)   a ray.data.Dataset in, the same with result columns out
    run_batch(model_dir, input, output)                  what `mbedge batch` runs: files in, Parquet shards out

Ray, pyarrow and onnxruntime are imported only when these run, so this package imports without them;
numpy only when one of them is first used (`mbedge --help` imports this package's commands.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modernbert_edge.ray.batch import plan_workers, run_batch
    from modernbert_edge.ray.dataset import classify, embed, tag

_LAZY = {
    "plan_workers": "modernbert_edge.ray.batch",
    "run_batch": "modernbert_edge.ray.batch",
    "classify": "modernbert_edge.ray.dataset",
    "embed": "modernbert_edge.ray.dataset",
    "tag": "modernbert_edge.ray.dataset",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["classify", "embed", "plan_workers", "run_batch", "tag"]


__all__ = ["classify", "embed", "plan_workers", "run_batch", "tag"]
