"""`mbedge run`'s output: inputs run in chunks, one JSON line per input in input order, progress on stderr.

Chunks keep memory flat however long the input is. Each line is {"index": i, <result key>: ...},
or {"index": i, "error": ...} for a bad input (which stops the run with --on-error stop).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import typer

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.errors import InputError, TruncationWarning
from modernbert_edge.runtime.inputs import Item
from modernbert_edge.runtime.model import Model
from modernbert_edge.runtime.tasks import Task

CHUNK = 256  # inputs read, sorted and run together
PROGRESS_ABOVE = CHUNK  # show progress (on a terminal) for inputs longer than this


def jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class Progress:
    """'[#####     ] 1200/5000 inputs, 85/s' on stderr, redrawn in place."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.done, self.start = total, enabled, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        if self.total:
            filled = int(30 * min(self.done, self.total) / self.total)
            bar = f"[{'#' * filled}{' ' * (30 - filled)}] {self.done}/{self.total}"
        else:
            bar = f"{self.done}"
        sys.stderr.write(f"\r{bar} inputs, {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_chunk(model: Model, chunk: list[Item], spec: Task, options: dict, progress: Progress) -> list:
    """Each item's result, or the error message (naming the item) where it has none."""
    readable = [k for k, item in enumerate(chunk) if item.error is None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = model.predict(
            [chunk[k].value for k in readable], task=spec.name, errors="return", on_batch=progress.update, **options
        )
    for w in caught:  # name the input the way the user knows it
        if isinstance(w.message, TruncationWarning):
            typer.echo(f"warning: {w.message.named(chunk[readable[w.message.index]].label)}", err=True)
        else:
            typer.echo(f"warning: {w.message}", err=True)
    out: list = [f"{item.label} {item.error}" for item in chunk]  # read errors stay; the rest are replaced
    for k, result in zip(readable, results, strict=True):
        out[k] = result.named(chunk[k].label) if isinstance(result, InputError) else result
    progress.update(len(chunk) - sum(1 for r in results if not isinstance(r, InputError)))
    return out


def run_items(
    model: Model, items: Iterable[Item], spec: Task, options: dict, on_error: str, progress: Progress
) -> tuple[int, int]:
    """Run items chunk by chunk, writing one JSON line per item in input order; returns (inputs, failures)."""
    index = failed = 0
    for chunk in _chunks(items, CHUNK):
        for result in run_chunk(model, chunk, spec, options, progress):
            if isinstance(result, str):  # an error message
                failed += 1
                if on_error == "stop":
                    sys.stdout.flush()
                    raise UserError(f"{result} (stopped: --on-error stop)")
                typer.echo(f"error: {result}", err=True)
                line = {"index": index, "error": result}
            else:
                line = {"index": index, spec.result_key: jsonable(result)}
            typer.echo(json.dumps(line, ensure_ascii=False))
            index += 1
        sys.stdout.flush()
    return index, failed
