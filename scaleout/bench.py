"""Throughput of `mbedge batch` against the in-process runtime, and the overheads that a cluster
projection needs (docs/ray.md):

    python -m modernbert_edge.ray.bench MODEL_DIR [--rows 4000] [--out bench-ray.json]

    in-process   load(folder, threads=t).embed(texts): tokens/s for t = 1 (the per-core rate) and 2
    ray start    ray.init(num_cpus=2) on this machine
    job start    a one-row job: actors start, load the folder, run one row, write one shard
    ray W × T    the whole corpus through run_batch with W workers × T threads: tokens/s (wall),
                 model seconds and per-row overhead (reading, token count, Arrow, Parquet) per worker

Every row of the corpus is a text; lengths vary (1 to 12 sentences), as a real corpus's do.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ((1, 2), (2, 1))  # (workers, threads per worker): both use the 2 CPUs once


def corpus(rows: int, seed: int = 0) -> list[str]:
    from modernbert_edge.timing import sample_text

    sentences = sample_text(2000, seed)
    rng = random.Random(seed)
    return [" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 12))) for _ in range(rows)]


def in_process(model_dir: str, texts: list[str], threads: int) -> dict:
    import modernbert_edge
    from modernbert_edge.ray.results import count_tokens

    model = modernbert_edge.load(model_dir, threads=threads)
    model.embed(texts[:64])  # warm-up
    tokens, _ = count_tokens(model, texts)
    t0 = time.perf_counter()
    model.embed(texts)
    seconds = time.perf_counter() - t0
    return {"threads": threads, "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}


def run(model_dir: str, rows: int, shard_rows: int, log=print) -> dict:  # noqa: ANN001
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from modernbert_edge.ray.batch import run_batch

    texts = corpus(rows)
    result: dict = {"model": str(model_dir), "rows": rows, "shard_rows": shard_rows}
    result["in_process"] = [in_process(model_dir, texts, t) for t in (1, 2)]
    log(f"in-process: {result['in_process']}")
    with tempfile.TemporaryDirectory(prefix="mbedge-ray-bench-") as tmp:
        work = Path(tmp)
        pq.write_table(pa.table({"text": texts}), work / "corpus.parquet")
        pq.write_table(pa.table({"text": texts[:1]}), work / "one.parquet")
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        result["ray_start_s"] = round(time.perf_counter() - t0, 3)
        quiet = lambda _msg: None  # noqa: E731
        try:
            result["ray"] = []
            for workers, threads in CONFIGS:
                t0 = time.perf_counter()
                run_batch(model_dir, work / "one.parquet", work / f"one-{workers}x{threads}", workers=workers,
                          threads_per_worker=threads, log=quiet)  # fmt: skip
                job_start_s = time.perf_counter() - t0
                s = run_batch(model_dir, work / "corpus.parquet", work / f"out-{workers}x{threads}", workers=workers,
                              threads_per_worker=threads, shard_rows=shard_rows, log=quiet)  # fmt: skip
                model_s = sum(w["model_s"] for w in s["workers"].values())
                other_s = sum(w["other_s"] for w in s["workers"].values())
                row = {
                    "workers": workers,
                    "threads": threads,
                    "job_start_s": round(job_start_s, 3),
                    "wall_s": s["wall_s"],
                    "tokens": s["tokens"],
                    "tokens_per_s": s["tokens_per_s"],
                    "model_tokens_per_s_per_core": round(s["tokens"] / model_s / threads) if model_s else None,
                    "overhead_ms_per_row": round(1000 * other_s / s["rows"], 4),
                    "ray_idle_s": round(s["wall_s"] - (model_s + other_s) / workers, 3),
                    "per_worker": s["workers"],
                }
                result["ray"].append(row)
                log(f"ray {workers}x{threads}: {json.dumps({k: v for k, v in row.items() if k != 'per_worker'})}")
        finally:
            ray.shutdown()
    return result


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Throughput of mbedge batch against the in-process runtime.")
    parser.add_argument("model_dir", help="A feature-extraction model folder (e.g. a base-shaped int8 export).")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--shard-rows", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("bench-ray.json"))
    args = parser.parse_args()
    result = run(args.model_dir, args.rows, args.shard_rows, log=lambda m: print(m, file=sys.stderr, flush=True))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
