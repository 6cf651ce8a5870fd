"""`mbedge bench MODEL_DIR ...`: model folders on texts, side by side, through the runtime's `load()`.

    for each batch size (smallest first):
      one worker process per folder (bench/worker.py, kind "folder"), loaded one at a time (load timed)
      first batch size only: the folders' tasks agree (or --task), the inputs are read for that task
      warm-up pass of each: its first call is the cold first call; the first batch size keeps outputs
      `repeats` rounds, every folder one pass per round, the order rotated each round (timing.interleave)
      peak RSS of each process, then the processes exit
    fidelity of each folder against the reference (the first folder, or --reference), per input

A pass runs every input at least once, in calls of exactly `batch` inputs (wrapping around), each
call one task method as a user calls it (`embed`, `fill_mask`, `classify`, `tag`, `answer`):
tokenizer, batching and post-processing included. The raw seconds of every call are kept in the
results (`times_s`: one list per round); every figure is computed from them (`figures`).
A folder that fails to load or run is a row with its error; the others go on.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modernbert_edge.contract import LAST_HIDDEN_STATE
from modernbert_edge.errors import UserError
from modernbert_edge.timing import cosines, interleave, machine

Log = Callable[[str], None]

SCHEMA = "mbedge.bench.folders/1"
DEFAULT_BATCH_SIZES = "1,8,32"
READY_TIMEOUT_S = 1800
# the fidelity measure of each task: (name, what `fidelity` computes)
MEASURES = {
    "feature-extraction": "embedding cosine, mean and worst input",
    "fill-mask": "top-1 agreement at each [MASK]",
    "text-classification": "label agreement (and the largest score difference)",
    "token-classification": "span agreement: F1 of the (start, end, label) entities",
    "question-answering": "span agreement: share of answers with the same (start, end)",
}


@dataclass(frozen=True)
class Target:
    """One MODEL_DIR argument: the folder load() opens, and its model file when the argument named one."""

    label: str  # the argument as given
    folder: Path
    file: str | None = None


def target(arg: str) -> Target:
    """A folder, or an .onnx file in a folder made elsewhere (folder/model.onnx, folder/onnx/model_quantized.onnx)."""
    path = Path(arg).expanduser()
    if path.suffix == ".onnx" and path.is_file():
        parent = path.parent
        if parent.name == "onnx" and (parent.parent / "config.json").is_file():
            return Target(arg, parent.parent, f"onnx/{path.name}")
        return Target(arg, parent, path.name)
    return Target(arg, path)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated integers like 1,8,32, got {text!r}.") from None
    if not sizes or sizes[0] < 1:
        raise UserError(f"--batch-sizes must name batch sizes of at least 1, got {text!r}.")
    return sizes


# ── figures ───────────────────────────────────────────────────────────────────────────────────────


def figures(times_s: Sequence[Sequence[float]], texts_per_pass: int, tokens_per_pass: int) -> dict:
    """The row's figures from its recorded seconds (one list of call times per round):
    latency percentiles over all calls, and throughput per round (texts or tokens of a pass over the
    pass's summed call time): median ± standard deviation over rounds."""
    calls = np.asarray([t for round_ in times_s for t in round_], dtype=np.float64)
    passes = np.asarray([sum(round_) for round_ in times_s], dtype=np.float64)
    p50, p90, p99 = np.percentile(calls, [50, 90, 99])
    texts = texts_per_pass / passes
    tokens = tokens_per_pass / passes
    return {
        "calls": int(calls.size),
        "p50_ms": 1e3 * float(p50),
        "p90_ms": 1e3 * float(p90),
        "p99_ms": 1e3 * float(p99),
        "texts_per_s": float(np.median(texts)),
        "texts_per_s_std": float(np.std(texts)),
        "tokens_per_s": float(np.median(tokens)),
        "tokens_per_s_std": float(np.std(tokens)),
    }


# ── fidelity ──────────────────────────────────────────────────────────────────────────────────────


def fidelity(task: str, out: list, ref: list) -> dict:
    """The task's agreement of one folder's results with the reference's, over the same inputs."""
    if task == "feature-extraction":
        if out[0].shape != ref[0].shape:
            return {"metric": "cosine", "error": f"embedding width {out[0].shape[-1]} against {ref[0].shape[-1]}"}
        cos = cosines(np.stack(out), np.stack(ref))
        return {"metric": "cosine", "mean": float(cos.mean()), "worst": float(cos.min()), "n": int(cos.size)}
    if task == "fill-mask":
        pairs = [(a, b) for o, r in zip(out, ref, strict=True) for a, b in zip(o, r, strict=False)]
        agree = sum(a == b for a, b in pairs)
        return {"metric": "top-1 agreement", "mean": agree / max(len(pairs), 1), "agree": agree, "n": len(pairs)}
    if task == "text-classification":
        agree = sum(max(o, key=o.get) == max(r, key=r.get) for o, r in zip(out, ref, strict=True))
        diff = max(abs(o.get(k, 0.0) - v) for o, r in zip(out, ref, strict=True) for k, v in r.items())
        return {"metric": "label agreement", "mean": agree / len(out), "agree": agree, "n": len(out), "max_diff": diff}
    if task == "token-classification":
        a = {(i, *e) for i, spans in enumerate(out) for e in spans}
        b = {(i, *e) for i, spans in enumerate(ref) for e in spans}
        f1 = 1.0 if not a and not b else 2 * len(a & b) / (len(a) + len(b))
        return {"metric": "span F1", "mean": f1, "agree": len(a & b), "n": len(b)}
    agree = sum(tuple(o) == tuple(r) for o, r in zip(out, ref, strict=True))
    return {"metric": "span agreement", "mean": agree / len(out), "agree": agree, "n": len(out)}


# ── inputs ────────────────────────────────────────────────────────────────────────────────────────


def read_inputs(input_file: Path | None, task: str) -> tuple[list, str]:
    """The inputs for a task: texts, or (question, context) pairs for question answering (plain texts
    are contexts asked worker.QA_QUESTION), from --input or the built-in calibration texts."""
    from modernbert_edge.bench.worker import QA_QUESTION
    from modernbert_edge.runtime.tasks import TASKS

    spec = TASKS[task]
    if input_file is None:
        from modernbert_edge.quantize.calibration import BUILTIN_TEXTS

        texts = list(BUILTIN_TEXTS)
        return ([(QA_QUESTION, t) for t in texts] if spec.pair else texts), "built-in calibration texts"
    from modernbert_edge.runtime import inputs

    items, _ = inputs.read_inputs(None, input_file, "auto", spec, QA_QUESTION if spec.pair else None)
    values = []
    for item in items:
        if item.error is not None:
            raise UserError(f"{item.label} {item.error}")
        values.append(tuple(item.value) if spec.pair else item.value)
    if not values:
        raise UserError(f"input file {input_file} holds no texts.")
    return values, str(input_file)


# ── the run ───────────────────────────────────────────────────────────────────────────────────────


def _row(t: Target, batch: int) -> dict:
    return {"folder": t.label, "path": str(t.folder), "file": t.file, "batch_size": batch, "error": None}


def run_folders(
    targets: Sequence[Target],
    batch_sizes: Sequence[int],
    input_file: Path | None = None,
    repeats: int = 5,
    threads: int | None = None,
    engine: str = "auto",
    task: str | None = None,
    reference: Target | None = None,
    log: Log = lambda _m: None,
) -> dict:
    """Benchmark the folders; returns the results dict (rows, folders, settings) that report writes.

    reference: the folder fidelity is measured against (default: the first); when it is not one of
    `targets` it runs once, untimed, for its outputs."""
    from modernbert_edge.bench.harness import Worker
    from modernbert_edge.runtime.tasks import FOLDER_TASKS, find_task

    if task is not None:
        try:
            task = find_task(task).name  # embed: feature-extraction
        except KeyError:
            pass
        if task not in FOLDER_TASKS:
            raise UserError(
                f"--task must be one of embed, {', '.join(t for t in FOLDER_TASKS if t != 'feature-extraction')}."
            )
    names = [f"#{i}" for i in range(len(targets))]
    by_name = dict(zip(names, targets, strict=True))
    ref_name = names[0]
    if reference is not None:
        same = [
            n
            for n, t in by_name.items()
            if t.folder.resolve() == reference.folder.resolve() and t.file == reference.file
        ]
        ref_name = same[0] if same else "reference"
        if not same:
            by_name[ref_name] = reference
    folders: dict[str, dict] = {
        n: {"folder": t.label, "path": str(t.folder), "file": t.file, "error": None} for n, t in by_name.items()
    }
    folders[ref_name]["reference"] = True
    rows: list[tuple[str, dict]] = []
    outputs: dict[str, list] = {}
    inputs: list = []
    source = ""
    chosen: str | None = task
    graph_outputs: dict[str, dict] = {}  # each loaded folder's graph outputs {name: shape}

    for k, batch in enumerate(batch_sizes):
        first = k == 0
        live = [n for n in by_name if folders[n]["error"] is None and (first or n != "reference")]
        workers: dict[str, Worker | None] = {}
        here: dict[str, dict] = {}
        try:
            for n in live:
                workers[n], here[n], described = _start(by_name[n], batch, threads, engine, log)
                if here[n]["error"]:
                    folders[n]["error"] = here[n]["error"]
                elif first:
                    graph_outputs[n] = described.pop("outputs", {})
                    folders[n].update(described, size_mb=round(described["model_bytes"] / 1e6, 2))
            loaded = [n for n in live if folders[n]["error"] is None]
            if first:
                chosen = _common_task(task, {n: folders[n] for n in loaded}, graph_outputs)
                if chosen is None:  # nothing loaded: every folder's row says why
                    rows += [(n, _finish(here[n], folders[n])) for n in live if n != "reference"]
                    break
                inputs, source = read_inputs(input_file, chosen)
            case = {
                "label": f"batch {batch}",
                "task": chosen,
                "inputs": inputs,
                "batch": batch,
                "pair": chosen == "question-answering",
            }
            for n in loaded:  # warm-up pass: its first call is the cold one; the first batch size keeps outputs
                results = _warm_up(workers[n], here[n], case, first, log)
                if here[n]["error"]:
                    folders[n]["error"] = here[n]["error"]
                elif first:
                    outputs[n] = results
            timed = [n for n in loaded if here[n]["error"] is None and n != "reference"]
            recorded = _rounds(workers, case, timed, repeats, log)
            for n in timed:
                if isinstance(recorded[n], str):
                    folders[n]["error"] = here[n]["error"] = recorded[n]
                else:
                    here[n]["times_s"] = recorded[n]
                    here[n]["peak_rss_mb"] = round(workers[n].call("rss")[1], 1)
        finally:
            for w in workers.values():
                if w is not None:
                    w.close()
        rows += [(n, _finish(here[n], folders[n])) for n in live if n != "reference"]
        if all(folders[n]["error"] for n in by_name if n != "reference"):
            break

    ref_out = outputs.get(ref_name)
    for n, f in folders.items():
        if n in outputs and ref_out is not None and chosen is not None:
            f["fidelity"] = {"metric": "reference"} if n == ref_name else fidelity(chosen, outputs[n], ref_out)
    for n, row in rows:
        row["fidelity"] = folders[n].get("fidelity")
    notes = []
    if ref_out is None:
        notes.append(f"no fidelity: the reference {by_name[ref_name].label} did not run.")
    return {
        "rows": [row for _, row in rows],
        "folders": list(folders.values()),
        "task": chosen,
        "inputs": {"source": source, "count": len(inputs)},
        "notes": notes,
    }


def _start(t: Target, batch: int, threads: int | None, engine: str, log: Log) -> tuple[object, dict, dict]:
    """A worker process with the folder loaded (None if it failed), its row, and what the folder holds."""
    from modernbert_edge.bench.harness import Worker

    row = _row(t, batch)
    spec = {"kind": "folder", "path": str(t.folder), "file": t.file, "threads": threads, "engine": engine}
    log(f"[batch {batch}] loading {t.label}")
    worker = None
    try:
        worker = Worker(f"folder-{t.folder.name}", spec)
        _, row["load_s"], row["import_s"] = worker.recv(READY_TIMEOUT_S)
        described = worker.call("describe")[1]
    except Exception as e:
        row["error"] = f"load failed: {_short(e)}"
        log(f"  {t.label}: {row['error']}")
        return worker, row, {}
    row["load_rss_mb"] = round(described.pop("load_rss_mb"), 1)
    return worker, row, described


def _warm_up(worker: object, row: dict, case: dict, keep: bool, log: Log) -> list | None:
    """One untimed pass (its first call is the cold call), recorded in the row; (keep) the outputs."""
    try:
        times, extra = worker.call("run", case, keep)[1:]
    except Exception as e:
        row["error"] = f"run failed: {_short(e)}"
        log(f"  {row['folder']}: {row['error']}")
        return None
    row["cold_s"], row["warmup_s"] = times[0], times
    row["calls_per_pass"], row["texts_per_pass"] = len(times), len(times) * case["batch"]
    row["tokens_per_pass"] = int(sum(extra["tokens"]))
    log(f"  {row['folder']}: cold call {1e3 * times[0]:.1f} ms, warm-up pass {1e3 * sum(times):.1f} ms")
    return extra["results"]


def _rounds(workers: dict, case: dict, names: list[str], repeats: int, log: Log) -> dict[str, list | str]:
    """`repeats` interleaved rounds of one pass per folder: each folder's call seconds per round (rounded
    to 0.1 µs, the figures' source), or the error that stopped it."""
    recorded: dict[str, list | str] = {n: [] for n in names}

    def one_pass(n: str) -> float | None:
        try:
            times = workers[n].call("run", case, False)[1]
        except Exception as e:
            recorded[n] = f"run failed: {_short(e)}"
            return None
        recorded[n].append([round(t, 7) for t in times])
        return sum(times)

    interleave(names, repeats, one_pass, on_round=lambda r: log(f"[{case['label']}] round {r + 1}/{repeats} done"))
    return recorded


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:400]


def _common_task(task: str | None, loaded: dict[str, dict], outputs: dict[str, dict]) -> str | None:
    """The task every folder runs: --task (embed: feature-extraction), else the one task they all hold.
    Folders that cannot be compared on it (no hidden states to embed, heads of different sizes) are
    refused before anything is timed or written."""
    if not loaded:
        return task
    hidden = {n for n in loaded if LAST_HIDDEN_STATE in outputs.get(n, {})}
    if task is None:
        tasks = {f["task"] for f in loaded.values()}
        if len(tasks) > 1:
            held = ", ".join(f"{f['folder']} {f['task']}" for f in loaded.values())
            advice = (
                "pass --task embed to compare their embeddings"
                if hidden == set(loaded)
                else "they cannot be compared, since not every graph outputs hidden states to embed"
            )
            raise UserError(f"the folders hold different tasks ({held}): bench compares folders of one task; {advice}.")
        task = tasks.pop()
    if task == "feature-extraction":
        missing = [loaded[n]["folder"] for n in loaded if n not in hidden]
        if missing:
            raise UserError(
                f"--task embed needs graphs that output hidden states, and {', '.join(missing)} "
                f"{'does' if len(missing) == 1 else 'do'} not: bench these folders on their own task."
            )
        return task
    heads = {json.dumps(outputs.get(n), sort_keys=True) for n in loaded}
    if len(heads) > 1:
        sizes = ", ".join(f"{loaded[n]['folder']} {_head(outputs.get(n) or {})}" for n in loaded)
        raise UserError(f"the folders' {task} heads differ in size ({sizes}), so their results cannot be compared.")
    return task


def _head(outputs: dict) -> str:
    """A graph's outputs as 'logits [batch, 3]'."""
    return "; ".join(f"{name} [{', '.join(map(str, shape))}]" for name, shape in outputs.items())


def _finish(row: dict, folder: dict) -> dict:
    """The row's figures from its recorded times, and what the folder holds."""
    for key in ("task", "engine", "precision", "size_mb"):
        row[key] = folder.get(key)
    if row.get("times_s") and row["error"] is None:
        row.update(figures(row["times_s"], row["texts_per_pass"], row["tokens_per_pass"]))
    for key in ("load_s", "import_s", "cold_s"):
        if key in row:
            row[key] = round(row[key], 7)
    if "warmup_s" in row:
        row["warmup_s"] = [round(t, 7) for t in row["warmup_s"]]
    return row


def results_dict(run: dict, settings: dict, threads: int | None, load_start: list | None) -> dict:
    """The schema-versioned results: machine (CPU via cpu_info, package versions), command, settings, rows."""
    about = machine(threads)
    about["load_average_start"] = load_start
    return {
        "schema": SCHEMA,
        "command": "mbedge " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": about,
        "settings": settings,
        "task": run.get("task"),
        "measure": MEASURES.get(run.get("task") or ""),
        "inputs": run.get("inputs"),
        "folders": run["folders"],
        "rows": run["rows"],
        "notes": run["notes"],
    }


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
