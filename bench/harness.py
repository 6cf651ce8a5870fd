"""The coordinator: prepare every system's files, then time the systems side by side.

    for each job:      prepare (cached) ─ checkpoint, trace, quantize, export, lower-bound graph
      for each shape:  one worker process per system, loaded one at a time (load time measured alone)
                       warm-up run of each (outputs kept for fidelity; its time is `first_s`)
                       `repeats` rounds, every system once per round, the order rotated each round
                       peak RSS of each process, then the processes exit

A process per (system, shape) makes each row's peak RSS that shape's own (ONNX Runtime's arena
never gives memory back), and interleaving makes a noisy shared machine hit every system alike.
Every system receives the same token ids. Fixed shapes are B rows of S real tokens (no padding);
the mixed batch is 64 rows of 16–1000 tokens: this project's systems run it through the runtime's
length-sorted token-budget batching, the others (and the "ours-int8-padded" row) in input order,
right-padded, MIXED_BATCH_ROWS rows per batch.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modernbert_edge.bench import systems as sysmod
from modernbert_edge.bench.lowerbound import HEAD_NOTE, write_gemm_graph
from modernbert_edge.errors import UserError
from modernbert_edge.timing import cosines, interleave, mixed_lengths, summarize

Log = Callable[[str], None]

JOBS = ("embeddings", "fill-mask", "classification")
MIXED_TEXTS, MIXED_MIN, MIXED_MAX, MIXED_SEED = 64, 16, 1000, 1234
MIXED_BATCH_ROWS = 8  # input-order batches of the mixed job, for every system but ours' token-budget plan
PADDED = "ours-int8-padded"  # ours-int8 fed the mixed batch in input order, padded
BOUND = "int8-gemm-bound"  # the lower bound: the model's int8 weight GEMMs alone
EXTRA_LABELS = {PADDED: "modernbert-edge int8 (input order, padded)", BOUND: "int8 GEMMs only (lower bound)"}
READY_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Shape:
    label: str  # "8x128" or "mixed"
    batch: int
    seq: int  # 0 for mixed


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part == "mixed":
            shapes.append(Shape("mixed", MIXED_TEXTS, 0))
            continue
        try:
            b, s = (int(v) for v in part.split("x"))
        except ValueError:
            raise UserError(f"shape {part!r} is not BxS (like 8x128) or 'mixed'.") from None
        if b < 1 or s < 3:
            raise UserError(f"shape {part!r} needs at least 1 row of 3 tokens.")
        shapes.append(Shape(f"{b}x{s}", b, s))
    if not shapes:
        raise UserError("--shapes names no shape.")
    return shapes


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad[0]!r}; choose from: {', '.join(allowed)}.")
    if not items:
        raise UserError(f"--{what}s names nothing.")
    return items


# ── inputs ────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Tokens:
    """The ids the inputs are built from (config.json and the tokenizer's mask token)."""

    vocab: int
    cls: int
    sep: int
    pad: int
    mask: int | None

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> Tokens:
        config = json.loads((checkpoint / "config.json").read_text())
        mask = None
        if (checkpoint / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            mask = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).token_to_id("[MASK]")
        return cls(
            int(config["vocab_size"]),
            int(config.get("cls_token_id") or 1),
            int(config.get("sep_token_id") or 2),
            int(config.get("pad_token_id") or 0),
            mask,
        )


def make_rows(shape: Shape, tokens: Tokens, fill_mask: bool, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Rows of [CLS] random ids [SEP]; with fill_mask, one mask token per row at a random inner
    position. Returns the rows and the mask positions."""
    rng = np.random.default_rng(seed)
    if shape.label == "mixed":
        lengths = mixed_lengths(MIXED_TEXTS, MIXED_MIN, MIXED_MAX, MIXED_SEED)
    else:
        lengths = [shape.seq] * shape.batch
    low = 5 if tokens.vocab > 10 else 0
    rows, positions = [], []
    for n in lengths:
        row = rng.integers(low, tokens.vocab, size=n, dtype=np.int64)
        row[0], row[-1] = tokens.cls, tokens.sep
        pos = int(rng.integers(1, n - 1))
        if fill_mask:
            if tokens.mask is None:
                raise UserError("the fill-mask job needs a tokenizer.json with a [MASK] token in the checkpoint.")
            row[pos] = tokens.mask
        rows.append(row)
        positions.append(pos)
    return rows, positions


# ── workers ───────────────────────────────────────────────────────────────────────────────────────


class Worker:
    """The coordinator's handle on one worker process."""

    def __init__(self, name: str, spec: dict) -> None:
        from modernbert_edge.bench.worker import serve

        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, spec), daemon=True, name=f"bench-{name}")
        self.proc.start()
        child.close()
        self.error: str | None = None

    def recv(self, timeout: float = 24 * 3600) -> tuple:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                code = self.proc.exitcode
                why = " (killed: out of memory?)" if code in (-9, 137) else ""
                raise RuntimeError(f"worker exited with code {code}{why}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer in {timeout:.0f} s")
        msg = self.conn.recv()
        if msg[0] == "error":
            raise RuntimeError(msg[1])
        return msg

    def call(self, *msg: object) -> tuple:
        self.conn.send(msg)
        return self.recv()

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.conn.send(("stop",))
        except OSError:
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ── fidelity ──────────────────────────────────────────────────────────────────────────────────────


def fidelity(job: str, out: np.ndarray, ref: np.ndarray) -> dict:
    """Agreement of a system's outputs with PyTorch's, per row."""
    if job == "embeddings":
        cos = cosines(out, ref)
        return {"metric": "cosine", "mean": float(cos.mean()), "worst": float(cos.min())}
    if job == "fill-mask":
        agree = (out == ref).astype(np.float64)
        return {"metric": "top-1 agreement", "mean": float(agree.mean()), "worst": None}
    agree = (out.argmax(-1) == ref.argmax(-1)).astype(np.float64)
    return {"metric": "label agreement", "mean": float(agree.mean()), "max_abs_diff": float(np.abs(out - ref).max())}


# ── the run ───────────────────────────────────────────────────────────────────────────────────────


def _source_dir(work: Path, checkpoint: Path | None, size: str) -> Path:
    if checkpoint is None:
        return work / f"random-{size}"
    stamp = f"{checkpoint.resolve()}:{(checkpoint / 'config.json').stat().st_mtime_ns}"
    return work / f"ckpt-{checkpoint.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"


def _job_checkpoint(job: str, job_dir: Path, checkpoint: Path | None, size: str, log: Log) -> Path | None:
    """The checkpoint a job runs on, or None when a given checkpoint has no head for it."""
    if checkpoint is None:
        return sysmod.make_source_checkpoint(job_dir, job, size, log)
    from modernbert_edge.contract import task_of_architecture

    archs = json.loads((checkpoint / "config.json").read_text()).get("architectures") or []
    if job == "embeddings" or sysmod.JOB_TASKS[job] in {task_of_architecture(a) for a in archs}:
        return checkpoint
    return None


def _dims(checkpoint: Path) -> dict:
    config = json.loads((checkpoint / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    return {k: int(config[k]) for k in keys}


def run_bench(
    jobs: Sequence[str],
    shapes: Sequence[Shape],
    systems: Sequence[str],
    checkpoint: Path | None = None,
    size: str = "tiny",
    repeats: int = 5,
    threads: int = 2,
    work: Path = Path(".bench-work"),  # the CLI passes ~/.cache/modernbert-edge/bench
    lower_bound: bool = True,
    max_seconds: float = 60.0,
    prepare_only: bool = False,
    skip: Sequence[str] = (),
    on_shape: Callable[[dict], None] | None = None,
    log: Log = print,
) -> dict:
    """Prepare and run the benchmark; returns the results (rows, machine, notes) as a dict.

    skip: "system@shape" pairs not to run (e.g. "trace-int8@1x8192" where memory is short).
    on_shape: called with the results so far after every shape (the CLI writes partial outputs)."""
    notes: list[str] = [f"not run: {pair}." for pair in skip]
    available = []
    for s in systems:
        why = sysmod.unavailable_reason(s)
        if why:
            notes.append(f"{s} skipped: {why}.")
            log(f"skip {s}: {why}")
        else:
            available.append(s)
    rows: list[dict] = []
    source = _source_dir(work, checkpoint, size)
    for job in jobs:
        job_dir = source / job
        ckpt = _job_checkpoint(job, job_dir, checkpoint, size, log)
        if ckpt is None:
            notes.append(f"{job} skipped: {checkpoint} has no {sysmod.architecture(job)} head.")
            log(f"skip {job}: the checkpoint has no {sysmod.architecture(job)} head")
            continue
        log(f"[{job}] prepare in {job_dir}")
        paths: dict[str, tuple[str, Path, float]] = {}  # system -> (kind, path to load, size MB)
        for s in available:
            try:
                folder = sysmod.prepare(s, ckpt, job, job_dir, log)
            except Exception as e:  # one system's failure is a row, not the end of the run
                notes.append(f"{job}: {s} could not be prepared ({type(e).__name__}: {str(e)[:300]}).")
                log(f"  {s} failed to prepare: {type(e).__name__}: {str(e)[:300]}")
                continue
            paths[s] = (sysmod.SYSTEMS[s].kind, sysmod.model_path(s, folder), sysmod.folder_mb(folder))
        info = job_dir / "trace-fp32" / "info.json"
        if info.is_file():
            notes.append(f"{job}: trace exported with torch.onnx.export {json.loads(info.read_text())['exporter']}.")
        if "ours-int8" in paths:
            paths[PADDED] = paths["ours-int8"]
        if lower_bound:
            gemm = write_gemm_graph(_dims(ckpt), job, job_dir / "gemm-int8.onnx")
            paths[BOUND] = ("gemm", gemm, sysmod.folder_mb(gemm))
            notes.append(f"{job}: lower bound = the int8 weight GEMMs only ({HEAD_NOTE[job]}).")
        tokens = Tokens.from_checkpoint(ckpt)
        for shape in [] if prepare_only else shapes:
            here = {k: v for k, v in paths.items() if f"{k}@{shape.label}" not in skip}
            rows += _run_shape(job, shape, here, tokens, _dims(ckpt), repeats, threads, max_seconds, log)
            if on_shape:
                on_shape({"rows": rows, "notes": notes})
    return {"rows": rows, "notes": notes}


def _case(job: str, shape: Shape, name: str, kind: str, rows: list, positions: list) -> dict:
    budget = shape.label == "mixed" and kind in ("ours", "openvino") and name != PADDED
    return {
        "label": shape.label,
        "rows": rows,
        "mask_pos": positions if job == "fill-mask" else None,
        "batching": "budget" if budget else "fixed",
        "batch_rows": MIXED_BATCH_ROWS if shape.label == "mixed" else shape.batch,
    }


def _run_shape(
    job: str,
    shape: Shape,
    paths: dict[str, tuple[str, Path, float]],
    tokens: Tokens,
    dims: dict,
    repeats: int,
    threads: int,
    max_seconds: float,
    log: Log,
) -> list[dict]:
    rows, positions = make_rows(shape, tokens, job == "fill-mask")
    n_tokens = sum(len(r) for r in rows)
    names = [n for n in paths if n != PADDED or shape.label == "mixed"]
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    cases: dict[str, dict] = {}
    log(f"[{job} {shape.label}] {len(rows)} rows, {n_tokens} tokens; loading {len(names)} systems")
    for name in names:
        kind, path, size_mb = paths[name]
        cases[name] = _case(job, shape, name, kind, rows, positions)
        row = {
            "job": job,
            "shape": shape.label,
            "system": name,
            "label": EXTRA_LABELS.get(name) or sysmod.SYSTEMS[name].label,
            "batching": cases[name]["batching"],
            "tokens": n_tokens,
            "size_mb": None if kind == "gemm" else round(size_mb, 1),
            "times_s": [],
            "error": None,
        }
        results[name] = row
        spec = {"kind": kind, "path": str(path), "job": job, "threads": threads, "pad_token_id": tokens.pad}
        if kind == "gemm":
            spec["dims"] = dims
        if kind in ("torch", "torch-int8"):
            spec["architecture"] = sysmod.architecture(job)
        try:
            w = Worker(name, spec)
            workers[name] = w
            _, row["load_s"], row["import_s"] = w.recv(READY_TIMEOUT_S)
        except Exception as e:
            row["error"] = f"load failed: {e}"
            log(f"  {name}: load failed: {e}")
    outputs: dict[str, np.ndarray] = {}
    live = [n for n in names if results[n]["error"] is None]
    try:
        for name in live:  # warm-up, outputs kept
            try:
                _, seconds, out = workers[name].call("run", cases[name], True)
                results[name]["first_s"] = seconds
                if out is not None:
                    outputs[name] = out
                log(f"  {name}: warm-up {seconds * 1e3:.0f} ms")
            except Exception as e:
                results[name]["error"] = f"run failed: {e}"
                log(f"  {name}: run failed: {e}")
        live = [n for n in live if results[n]["error"] is None]
        slow = {n for n in live if results[n].get("first_s", 0) > max_seconds}
        for n in sorted(slow):
            results[n]["times_s"] = [results[n]["first_s"]]
            results[n]["note"] = f"warm-up took over {max_seconds:.0f} s: timed once (the warm-up run)"
        timed = [n for n in live if n not in slow]

        def run(name: str) -> float | None:
            try:
                return workers[name].call("run", cases[name], False)[1]
            except Exception as e:
                results[name]["error"] = f"run failed: {e}"
                return None

        times = interleave(timed, repeats, run, on_round=lambda r: log(f"  round {r + 1}/{repeats} done"))
        for name in timed:
            results[name]["times_s"] = times[name]
        for name in live:
            try:
                results[name]["peak_rss_mb"] = round(workers[name].call("rss")[1], 1)
            except Exception as e:
                results[name]["error"] = results[name]["error"] or f"rss failed: {e}"
    finally:
        for w in workers.values():
            w.close()
    return [_finish(job, results[n], outputs.get(n), outputs.get("pytorch"), results.get("pytorch")) for n in names]


def _finish(job: str, row: dict, out: np.ndarray | None, ref: np.ndarray | None, ref_row: dict | None) -> dict:
    times = row["times_s"]
    if times and not row["error"]:
        stats = summarize(times)
        row["median_ms"], row["p90_ms"] = round(stats["median_ms"], 2), round(stats["p90_ms"], 2)
        row["tokens_per_s"] = round(row["tokens"] / (stats["median_ms"] / 1e3), 1)
        if ref_row and ref_row.get("times_s") and not ref_row["error"]:
            row["speedup_vs_pytorch"] = round(summarize(ref_row["times_s"])["median_ms"] / stats["median_ms"], 3)
    if out is not None and ref is not None and row["system"] != "pytorch":
        row["fidelity"] = fidelity(job, out, ref)
    elif row["system"] == "pytorch" and out is not None:
        row["fidelity"] = {"metric": "reference"}
    row["times_s"] = [round(t, 5) for t in times]
    for key in ("load_s", "import_s", "first_s"):
        if key in row:
            row[key] = round(row[key], 3)
    return row
