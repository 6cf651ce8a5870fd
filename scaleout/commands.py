"""CLI command of the Ray scale-out: `mbedge batch` (Ray and onnxruntime are imported when it runs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.cli_options import (
    ENGINE_DEFAULT,
    AggregationOpt,
    Dim,
    EngineOpt,
    ModelDir,
    Normalize,
    PoolingOpt,
    PromptName,
    TaskOptions,
    Threads,
    TopK,
    plain,
)
from modernbert_edge.ray.sources import DEFAULT_SHARD_ROWS


def batch_cmd(
    model_dir: ModelDir,
    input_path: Annotated[
        str, typer.Argument(metavar="INPUT", help="Parquet, JSONL or CSV: a file, a folder or a glob (quoted).")
    ],
    output: Annotated[
        Path, typer.Argument(metavar="OUTPUT", help="Folder for the Parquet shards (a rerun finishes what is missing).")
    ],
    column: Annotated[str, typer.Option(help="The text column (JSONL: field).")] = "text",
    id_column: Annotated[
        str | None, typer.Option(help="Column copied to the output to identify rows (default: 'id' if present).")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="Check the folder's task (or 'embed' on a folder whose graph outputs hidden states)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Model actors (default: CPUs // threads).")] = None,
    threads: Threads = None,
    oversubscribe: Annotated[
        bool, typer.Option(help="Allow workers × threads above the cluster's CPUs (default: refused).")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (e.g. auto, ray://head:10001); default: start one here.")
    ] = None,
    shard_rows: Annotated[int, typer.Option(help="Input rows per output shard.")] = DEFAULT_SHARD_ROWS,
    engine: EngineOpt = ENGINE_DEFAULT,
    top_k: TopK = None,
    pooling: PoolingOpt = None,
    normalize: Normalize = None,
    prompt_name: PromptName = None,
    dim: Dim = None,
    aggregation: AggregationOpt = None,
) -> None:
    """Run a model folder over a corpus on Ray; write Parquet shards with the ids and results.

    A bad row (empty, not text, not JSON) becomes a row with an `error`, counted in the summary; the
    job still succeeds. Rerun the same command after a crash to finish the missing shards. --threads
    is per worker (0 or unset: CPUs // --workers, else 1); classification with --top-k also writes
    the top_k labels as `labels`.
    """
    from modernbert_edge.ray.batch import run_batch
    from modernbert_edge.runtime.options import check_threads

    check_threads(threads)
    options = TaskOptions(top_k, pooling, normalize, prompt_name, dim, aggregation).given()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines; ours say more
    run_batch(
        model_dir,
        input_path,
        output,
        column=column,
        id_column=id_column,
        task=task,
        options=options,
        workers=workers,
        threads_per_worker=threads or None,
        shard_rows=shard_rows,
        ray_address=ray_address,
        oversubscribe=oversubscribe,
        engine=plain(engine),
    )
