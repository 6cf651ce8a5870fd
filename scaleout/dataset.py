"""The Python API on Ray Data: a model folder's task as a step of a `ray.data.Dataset` pipeline.

    ds = ray.data.read_parquet("s3://bucket/docs/")
    ds = modernbert_edge.ray.embed(ds, "out/embedder", column="text")   # + embedding, error
    ds.write_parquet("s3://bucket/embedded/")

Each step is `map_batches` over an actor pool: every actor loads the folder once and hands each
block's texts to the runtime, which sorts them by length and batches them under its token budget.
The result columns (see results.py) and `error` are added to the dataset's own columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modernbert_edge.ray.results import Stats, check_task, run_values

if TYPE_CHECKING:  # ray and pyarrow are imported when a step runs, not with this module
    import pyarrow as pa
    from ray.data import Dataset

DEFAULT_ROWS_PER_CALL = 1024  # rows handed to the runtime at once: its length sort works within them


class TaskActor:
    """A Ray actor: one loaded model; each call adds the task's columns to an Arrow batch."""

    def __init__(self, model_dir: str, threads: int, task: str, options: dict, column: str) -> None:
        import modernbert_edge

        self.model = modernbert_edge.load(model_dir, threads=threads)
        self.task, self.options, self.column = task, options, column

    def __call__(self, table: pa.Table) -> pa.Table:
        columns = run_values(self.model, table.column(self.column).to_pylist(), self.task, self.options, Stats())
        for name, values in columns.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, values)
        return table


def _map(
    dataset: Dataset,
    model_dir: str | Path,
    task: str,
    options: dict,
    column: str,
    workers: int | None,
    threads_per_worker: int | None,
    rows_per_call: int,
    oversubscribe: bool,
) -> Dataset:
    import modernbert_edge
    from modernbert_edge.ray.batch import cluster_cpus, import_ray, plan_workers

    ray = import_ray()
    model = modernbert_edge.load(model_dir, threads=1)  # checks the folder, task and options here, once
    check_task(model.resolve_task(task).name)
    model.predict(["check the options"], task=task, **options)
    if column not in dataset.schema().names:
        from modernbert_edge.errors import UserError

        raise UserError(f"the dataset has no column {column!r} (it has {', '.join(dataset.schema().names)}).")
    if not ray.is_initialized():
        ray.init()
    cpus = cluster_cpus()
    workers, threads = plan_workers(cpus, workers, threads_per_worker, oversubscribe)
    return dataset.map_batches(
        TaskActor,
        batch_size=rows_per_call,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=min(threads, cpus / workers),
        fn_constructor_kwargs={
            "model_dir": str(Path(model_dir).resolve()),
            "threads": threads,
            "task": task,
            "options": options,
            "column": column,
        },
    )


def embed(
    dataset: Dataset,
    model_dir: str | Path,
    *,
    column: str = "text",
    pooling: str | None = None,  # None: as the model says (plain checkpoints: mean, normalized)
    normalize: bool | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
    oversubscribe: bool = False,
) -> Dataset:
    """The dataset with `embedding` (fixed-size float32 list) and `error` columns added."""
    options = {"pooling": pooling, "normalize": normalize}
    return _map(
        dataset,
        model_dir,
        "feature-extraction",
        options,
        column,
        workers,
        threads_per_worker,
        rows_per_call,
        oversubscribe,
    )


def classify(
    dataset: Dataset,
    model_dir: str | Path,
    *,
    column: str = "text",
    top_k: int | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
    oversubscribe: bool = False,
) -> Dataset:
    """The dataset with `label`, `score` (and `labels` when top_k is given) and `error` columns added."""
    options = {} if top_k is None else {"top_k": top_k}
    return _map(
        dataset,
        model_dir,
        "text-classification",
        options,
        column,
        workers,
        threads_per_worker,
        rows_per_call,
        oversubscribe,
    )


def tag(
    dataset: Dataset,
    model_dir: str | Path,
    *,
    column: str = "text",
    aggregation: str = "simple",
    ignore_labels: Sequence[str] = ("O",),
    workers: int | None = None,
    threads_per_worker: int | None = None,
    rows_per_call: int = DEFAULT_ROWS_PER_CALL,
    oversubscribe: bool = False,
) -> Dataset:
    """The dataset with `entities` (a list of spans per row) and `error` columns added."""
    options = {"aggregation": aggregation, "ignore_labels": tuple(ignore_labels)}
    return _map(
        dataset,
        model_dir,
        "token-classification",
        options,
        column,
        workers,
        threads_per_worker,
        rows_per_call,
        oversubscribe,
    )
