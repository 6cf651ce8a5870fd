"""modernbert_edge.ray: run a model folder over a corpus on a Ray cluster (`pip install "modernbert-edge[ray]"`).

    embed(dataset, model_dir), classify(...), tag(...)   a ray.data.Dataset in, the same with result columns out
    run_batch(model_dir, input, output)                  what `mbedge batch` runs: files in, Parquet shards out

Ray, pyarrow and onnxruntime are imported only when these run, so this package imports without them.
"""

from __future__ import annotations

from modernbert_edge.ray.batch import plan_workers, run_batch
from modernbert_edge.ray.dataset import classify, embed, tag

__all__ = ["classify", "embed", "plan_workers", "run_batch", "tag"]
