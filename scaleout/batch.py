"""`mbedge batch`: a model folder over a corpus on Ray, resumable, one Parquet shard per input range.

    run_batch ─ find_inputs, plan_shards (fixed row ranges, stable names) ─ _batch.json (the job)
        ─ shards without an output file ─ ray.data.from_items (one block per shard)
        ─ map_batches(ShardWorker, actor pool of `workers`, `threads` CPUs each)
            ShardWorker: load(folder) once; per shard: read rows ─ run_values ─ .tmp file ─ rename
        ─ a line per finished shard (progress) ─ summary (rows, tokens, tokens/s per worker, failures)

Exactness: a shard's output appears only by an atomic rename of a complete file, and a shard whose
output exists is never run again, so a retried shard (Ray restarts a dead actor and reruns its
task) or a rerun of the whole job leaves every row exactly once. _batch.json records what the
output was made from; a rerun with a different model, options or inputs is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from modernbert_edge.errors import UserError
from modernbert_edge.ray.results import Stats, check_task, run_values
from modernbert_edge.ray.sources import DEFAULT_SHARD_ROWS, Shard, find_inputs, plan_shards, read_shard
from modernbert_edge.runtime.options import DEFAULT_ENGINE

JOB_FILE = "_batch.json"
SUMMARY_FILE = "_summary.json"
DEFAULT_THREADS = 1  # ORT threads per worker when not given: 2 × 1 ran 1.23× 1 × 2 (docs/ray.md)


def import_ray():  # noqa: ANN201 - the ray module
    """ray, with Ray Data; a UserError naming the extra when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError('this needs Ray Data: pip install "modernbert-edge[ray]".') from None
    return ray


def plan_workers(
    cpus: int, workers: int | None = None, threads: int | None = None, oversubscribe: bool = False
) -> tuple[int, int]:
    """(workers, threads per worker) so that the cores are used once: workers × threads <= cpus.

    Defaults: DEFAULT_THREADS threads (fewer on a smaller machine) and as many workers as fit; a given
    worker count alone gets cpus // workers threads. Given values that break the rule are refused
    unless oversubscribe.
    """
    cpus = max(1, int(cpus))
    if threads is None:
        threads = max(1, cpus // workers) if workers else min(DEFAULT_THREADS, cpus)
    if workers is None:
        workers = max(1, cpus // threads)
    if workers < 1 or threads < 1:
        raise UserError(f"workers and threads per worker must be at least 1, got {workers} and {threads}.")
    if workers * threads > cpus and not oversubscribe:
        raise UserError(
            f"{workers} workers × {threads} threads need {workers * threads} CPUs, but Ray has {cpus}: "
            "lower --workers or --threads, or pass --oversubscribe."
        )
    return workers, threads


def start_ray(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local instance sized to this machine; True if started here."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as e:
        raise UserError(f"could not join the Ray cluster at {address} ({e}).") from None
    return True


def cluster_cpus() -> int:
    return int(import_ray().cluster_resources().get("CPU", 1))


class ShardWorker:
    """A Ray actor: loads the model folder once, then runs whole shards, writing each one atomically."""

    def __init__(
        self, model_dir: str, threads: int, task: str, options: dict, column: str, id_column: str | None, output: str,
        engine: str = DEFAULT_ENGINE,
    ) -> None:  # fmt: skip
        import modernbert_edge

        self.model = modernbert_edge.load(model_dir, threads=threads, engine=engine)
        self.task, self.options, self.column, self.id_column = task, options, column, id_column
        self.output = Path(output)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        """batch: shards as columns (one per call); returns each shard's stats as columns."""
        out: dict[str, list] = {}
        for k in range(len(batch["name"])):
            shard = Shard(**{f.name: _plain(batch[f.name][k]) for f in dataclasses.fields(Shard)})
            for key, value in self.run_shard(shard).items():
                out.setdefault(key, []).append(value)
        return out

    def run_shard(self, shard: Shard) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        stats = Stats()
        final = self.output / shard.name
        if final.exists():  # finished by an earlier try of this task
            return {"shard": shard.name, "worker": self.worker, "skipped": True, **dataclasses.asdict(stats)}
        t0 = time.perf_counter()
        rows = read_shard(shard, self.column, self.id_column)
        readable = [k for k, r in enumerate(rows) if r.error is None]
        stats.other_s += time.perf_counter() - t0
        columns = run_values(self.model, [rows[k].value for k in readable], self.task, self.options, stats)
        t1 = time.perf_counter()
        table = _place(columns, readable, [r.error for r in rows])
        stats.rows += len(rows) - len(readable)
        stats.failed += len(rows) - len(readable)
        head = {
            "source": pa.array([shard.source] * len(rows), pa.string()),
            "row": pa.array(range(shard.start, shard.stop), pa.int64()),
        }
        if self.id_column:
            head[self.id_column] = _id_array([r.id for r in rows])
        table = pa.table({**head, **{name: table.column(name) for name in table.column_names}})
        tmp = self.output / f".{shard.name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        stats.other_s += time.perf_counter() - t1
        return {"shard": shard.name, "worker": self.worker, "skipped": False, **dataclasses.asdict(stats)}


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value


def _place(columns: dict, readable: list[int], read_errors: list[str | None]):  # noqa: ANN202 - pyarrow.Table
    """The result columns of the readable rows spread over all rows: unreadable ones get nulls and their error."""
    import pyarrow as pa

    n = len(read_errors)
    table = pa.table(columns)
    if len(readable) == n:
        return table
    position = {k: j for j, k in enumerate(readable)}
    where = pa.array([position.get(k) for k in range(n)], pa.int64())
    taken = table.take(where)  # null index -> null row
    errors = [e if e is not None else taken.column("error")[k].as_py() for k, e in enumerate(read_errors)]
    return taken.set_column(taken.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))


def _id_array(ids: list):  # noqa: ANN202 - pyarrow.Array
    import pyarrow as pa

    try:
        return pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types (JSONL): as text
        return pa.array([None if i is None else str(i) for i in ids], pa.string())


def run_batch(
    model_dir: str | Path,
    input: str | Path,  # noqa: A002
    output: str | Path,
    *,
    column: str = "text",
    id_column: str | None = None,
    task: str | None = None,
    options: dict | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    ray_address: str | None = None,
    oversubscribe: bool = False,
    log: Callable[[str], None] | None = None,
    engine: str = DEFAULT_ENGINE,
) -> dict:
    """Run the folder's task over every row of INPUT, writing Parquet shards to OUTPUT; returns the summary.

    Joins the Ray cluster at ray_address (or the one already initialized in this process), else starts
    a local one. MODEL_DIR, INPUT and OUTPUT must be paths every Ray node can read (and OUTPUT write).
    """
    import modernbert_edge

    import_ray()  # a missing extra is refused before anything is read or written
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    options = dict(options or {})
    model = modernbert_edge.load(model_dir, threads=1, engine=engine)  # checks the folder and options before Ray
    spec = model.resolve_task(task)
    check_task(spec.name)
    model.predict(["check the options"], task=spec.name, **options)  # a bad option fails here, not in a worker
    files, root = find_inputs(input)
    shards, has_ids = plan_shards(files, root, shard_rows, column, id_column)
    id_column = id_column or ("id" if has_ids else None)
    out = _check_output(Path(output), Path(input), root)
    job = {
        "model": str(Path(model_dir).resolve()),
        "model_file": _file_stamp(model.info.model_path),
        "task": spec.name,
        "options": options,
        "column": column,
        "id_column": id_column,
        "shard_rows": shard_rows,
        "inputs": [str(f) for f in files],
        "input_files": [_file_stamp(f) for f in files],  # a changed (e.g. appended) input is refused
    }
    _check_job(out, job)
    for stale in out.glob(".*.tmp"):  # left by a killed run; never read as output
        stale.unlink(missing_ok=True)
    todo = [s for s in shards if not (out / s.name).exists()]
    total_rows = sum(s.stop - s.start for s in shards)
    summary: dict = {"shards": len(shards), "skipped_shards": len(shards) - len(todo), "rows_total": total_rows}
    if not todo:
        log(f"all {len(shards)} shards of {out} are finished; nothing to run.")
        return {**summary, **_totals([], 0.0), "workers": {}}

    worker_kwargs = {
        "model_dir": str(Path(model_dir).resolve()),
        "task": spec.name,
        "options": options,
        "column": column,
        "id_column": id_column,
        "output": str(out.resolve()),
        "engine": model.engine,  # what auto chose here, not what it may choose on another node
    }
    done, wall_s, startup_s, workers, threads = _run_on_ray(
        todo, len(shards), worker_kwargs, ray_address, workers, threads_per_worker, oversubscribe, log
    )
    summary.update(_totals(done, wall_s), startup_s=round(startup_s, 3), workers_used=workers, threads=threads)
    summary["workers"] = _per_worker(done)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    for line in format_summary(summary):
        log(line)
    return summary


def _run_on_ray(
    todo: list[Shard],
    n_shards: int,
    worker_kwargs: dict,
    ray_address: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    oversubscribe: bool,
    log: Callable[[str], None],
) -> tuple[list[dict], float, float, int, int]:
    """Run the shards on an actor pool of ShardWorker(**worker_kwargs, threads=...), logging each as it
    ends; returns (each shard's row, wall seconds, Ray start seconds, workers, threads per worker)."""
    t0 = time.perf_counter()
    started = start_ray(ray_address)
    startup_s = time.perf_counter() - t0
    try:
        ray = import_ray()
        cpus = cluster_cpus()
        workers, threads = plan_workers(cpus, workers, threads_per_worker, oversubscribe)
        workers = min(workers, len(todo))
        ray.data.DataContext.get_current().enable_progress_bars = False  # one line per shard instead
        ds = ray.data.from_items([dataclasses.asdict(s) for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardWorker,  # looked up at call time, so a test can swap it
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=min(threads, cpus / workers),
            fn_constructor_kwargs={**worker_kwargs, "threads": threads},
        )
        log(f"{len(todo)} of {n_shards} shards to run on {workers} workers × {threads} threads ({cpus} CPUs)")
        done: list[dict] = []
        t1 = time.perf_counter()
        for row in ds.iter_rows():
            done.append(row)
            rows = sum(r["rows"] for r in done)
            tokens = sum(r["tokens"] for r in done)
            elapsed = time.perf_counter() - t1
            log(f"shard {len(done)}/{len(todo)} {row['shard']}: {rows} rows, {tokens / elapsed:.0f} tokens/s")
        wall_s = time.perf_counter() - t1
    finally:
        if started:
            import_ray().shutdown()
    return done, wall_s, startup_s, workers, threads


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_output(out: Path, input: Path, root: Path) -> Path:  # noqa: A002
    """OUTPUT made (or found) as a writable folder outside the input; one sentence otherwise."""
    if out.exists() and not out.is_dir():
        raise UserError(f"OUTPUT {out} is a file, not a folder: choose a folder for the shards.")
    resolved = out.resolve()
    inside = root if input.is_dir() or not input.exists() else None
    if inside is not None and (resolved == inside or inside in resolved.parents):
        raise UserError(f"OUTPUT {out} is inside the input folder {inside}: a rerun would read its own output.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"OUTPUT {out} cannot be created ({e.strerror}): choose another folder.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"OUTPUT {out} is not writable: choose another folder.")
    return out


def _check_job(out: Path, job: dict) -> None:
    """Write OUTPUT/_batch.json, or check that the one there describes the same job."""
    path = out / JOB_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        differ = [k for k in job if old.get(k) != job[k]]
        if differ == ["input_files"]:
            changed = [f["name"] for f, g in zip(job[differ[0]], old.get(differ[0]), strict=True) if f != g]
            raise UserError(
                f"the input changed since {out} was started ({', '.join(changed)}: size or time differ), so its "
                "shards no longer match the rows: choose a new OUTPUT folder, or delete this one."
            )
        if differ:
            raise UserError(
                f"{out} holds the output of another job (its {', '.join(differ)} differ): "
                "choose a new OUTPUT folder, or delete this one."
            )
        return
    tmp = out / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(job, indent=2) + "\n")
    os.replace(tmp, path)


def _totals(done: list[dict], wall_s: float) -> dict:
    ran = [r for r in done if not r["skipped"]]
    tokens = sum(r["tokens"] for r in ran)
    return {
        "shards_run": len(ran),
        "rows": sum(r["rows"] for r in ran),
        "failed": sum(r["failed"] for r in ran),
        "truncated": sum(r["truncated"] for r in ran),
        "tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s else 0.0,
    }


def _per_worker(done: list[dict]) -> dict:
    workers: dict[str, dict] = {}
    for r in done:
        w = workers.setdefault(r["worker"], {"shards": 0, "rows": 0, "tokens": 0, "model_s": 0.0, "other_s": 0.0})
        w["shards"] += not r["skipped"]
        for key in ("rows", "tokens", "model_s", "other_s"):
            w[key] += r[key]
    for w in workers.values():
        busy = w["model_s"] + w["other_s"]
        w["tokens_per_s"] = round(w["tokens"] / busy, 1) if busy else 0.0
        w["model_s"], w["other_s"] = round(w["model_s"], 3), round(w["other_s"], 3)
    return workers


def format_summary(s: dict) -> list[str]:
    lines = [
        f"{s['rows']} rows in {s['shards_run']} shards ({s['skipped_shards']} of {s['shards']} already done): "
        f"{s['failed']} failed, {s['truncated']} truncated; {s['tokens']} tokens in {s['wall_s']:.1f} s, "
        f"{s['tokens_per_s']:.0f} tokens/s (Ray start {s.get('startup_s', 0):.1f} s)"
    ]
    for name, w in s["workers"].items():
        lines.append(
            f"  worker {name}: {w['shards']} shards, {w['rows']} rows, {w['tokens']} tokens, "
            f"{w['tokens_per_s']:.0f} tokens/s busy (model {w['model_s']:.1f} s, other {w['other_s']:.1f} s)"
        )
    return lines
