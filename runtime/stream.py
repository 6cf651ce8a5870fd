"""`mbedge run`'s output: inputs run in chunks, one JSON line per input in input order, progress on stderr.

Chunks (at most CHUNK inputs and CHUNK_CHARS characters) keep memory flat however long the input
is. Each line is {"index": i, <result key>: ...}, or {"index": i, "error": ...} for a bad input
(which stops the run with --on-error stop); JSON is strict, so a non-finite result is an error
for its input, never a bare NaN. A closed pipe (`| head -1`) ends the run quietly with exit code
141, as Unix tools end on SIGPIPE; any other failure to write stdout (a full disk) is a UserError.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import typer

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.errors import InputError, TruncationWarning
from modernbert_edge.runtime.inputs import Item
from modernbert_edge.runtime.model import Model
from modernbert_edge.runtime.options import DEFAULT_BATCH_SIZE
from modernbert_edge.runtime.progress import Progress
from modernbert_edge.runtime.tasks import Task

CHUNK = DEFAULT_BATCH_SIZE  # inputs read, sorted and run together (embed()'s batch_size)
CHUNK_CHARS = 1 << 22  # text characters of one chunk, at most (an input longer than this is a chunk alone)
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a tool that a closed pipe ended
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


def _chunks(items: Iterable[Item], size: int, max_chars: int = CHUNK_CHARS) -> Iterator[list[Item]]:
    """Items in lists of at most `size` items and (unless one item alone exceeds it) `max_chars` characters."""
    chunk: list[Item] = []
    chars = 0
    for item in items:
        chunk.append(item)
        chars += _text_chars(item.value)
        if len(chunk) == size or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _text_chars(value: object) -> int:
    """Characters of a text, or of the texts of a pair (one level: an input may be nested arbitrarily)."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    return sum(len(v) for v in parts if isinstance(v, str))


def _json_line(index: int, key: str, result: object) -> str | None:
    """The output line for a result, or None when it holds a non-finite number (strict JSON has none)."""
    try:
        return json.dumps({"index": index, key: jsonable(result)}, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return None


def _write(text: str | None = None) -> None:
    """Write a line (or None: just flush) to stdout; a closed pipe exits quietly, a full disk is a UserError."""
    try:
        if text is not None:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        raise typer.Exit(BROKEN_PIPE_EXIT) from None
    except OSError as e:
        _discard_stdout()
        raise UserError(f"could not write the results to stdout ({e.strerror or e}).") from None


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the unwritten buffer is dropped instead of failing again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured stdout)
        pass


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
        for item, result in zip(chunk, run_chunk(model, chunk, spec, options, progress), strict=True):
            line = None if isinstance(result, str) else _json_line(index, spec.result_key, result)
            if line is None and not isinstance(result, str):
                result = f"{item.label} gave a non-finite result (NaN or infinity), which JSON cannot hold."
            if isinstance(result, str):  # an error message
                failed += 1
                if on_error == "stop":
                    _write()
                    raise UserError(f"{result} (stopped: --on-error stop)")
                typer.echo(f"error: {result}", err=True)
                line = json.dumps({"index": index, "error": result}, ensure_ascii=False)
            _write(line)
            index += 1
        _write()
    return index, failed
