"""CLI commands of the runtime: `mbedge run` and `mbedge info`.

`mbedge run` reads inputs from its arguments, a file (one text per line, or JSONL with a "text"
field; "question"/"context" for question answering) or stdin, and writes one JSON object per input
to stdout, in input order: {"index": i, <result key>: ...}, or {"index": i, "error": ...} for a bad
input with --on-error skip. Inputs run in chunks, so memory does not grow with the input's length.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

import numpy as np
import typer

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.batching import DEFAULT_BATCH_ROWS, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_PADDING
from modernbert_edge.runtime.errors import InputError, TruncationWarning
from modernbert_edge.runtime.model import OPTIONS, Model, load
from modernbert_edge.runtime.sentence import POOLING_MODES
from modernbert_edge.runtime.tasks import AGGREGATIONS, Task
from modernbert_edge.runtime.tokenize import TRUNCATION

CHUNK = 256  # inputs read, sorted and run together
PROGRESS_ABOVE = CHUNK  # show progress (on a terminal) for inputs longer than this
FORMATS = ("auto", "lines", "jsonl")
ON_ERROR = ("skip", "stop")


@dataclass(frozen=True)
class Rerank:
    """A JSONL line {"query", "documents"} for a cross-encoder: one ranking of the documents."""

    query: object
    documents: object


class Ranking(list):
    """Model.rerank's result, written under the key "ranking"."""


@dataclass(frozen=True)
class Item:
    """One input as read: where it came from, its value, or why it could not be read."""

    label: str  # "argument 2", "line 7 of texts.txt"
    value: object = None  # a text, or a (question, context) pair
    error: str | None = None  # reason, to follow the label


def _choice(value: str | None, choices: Iterable[str], option: str) -> None:
    if value is not None and value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}, got {value!r}.")


# ── reading inputs ──────────────────────────────────────────────────────────────────────────────


def read_arguments(texts: list[str], spec: Task, question: str | None) -> Iterator[Item]:
    for n, text in enumerate(texts, 1):
        yield Item(f"argument {n}", (question, text) if spec.pair else text)


def read_stream(stream: BinaryIO, name: str, fmt: str, spec: Task, question: str | None) -> Iterator[Item]:
    """Items from a byte stream, one per line; each line is decoded (and parsed) on its own, so a bad
    line becomes an Item with an error and the others still run."""
    mode = None if fmt == "auto" else fmt
    for n, raw in enumerate(stream, 1):
        label = f"line {n} of {name}"
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if n == 1:
            if line.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in line:
                raise UserError(f"{name} is not UTF-8 text (it looks like UTF-16 or binary): convert it to UTF-8.")
            line = line.removeprefix(b"\xef\xbb\xbf")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Item(label, error=f"is not valid UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}).")
            continue
        if mode is None and text.strip():
            mode = "jsonl" if name.endswith((".jsonl", ".ndjson")) or _is_json_object(text) else "lines"
        if mode == "jsonl":
            yield _from_json(label, text, spec, question)
        elif spec.pair:
            if question is None:
                raise UserError(
                    f"{name} holds plain text: for question answering pass --question, or give JSONL lines "
                    'with "question" and "context" fields.'
                )
            yield Item(label, (question, text))
        else:
            yield Item(label, text)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _from_json(label: str, text: str, spec: Task, question: str | None) -> Item:
    if not text.strip():
        return Item(label, error="is blank (expected a JSON object).")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return Item(label, error=f"is not valid JSON ({e.msg} at column {e.colno}).")
    if not isinstance(record, dict):
        return Item(label, error=f"is not a JSON object (got {type(record).__name__}).")
    if spec.pair:
        q = record.get("question", question)
        context = record.get("context", record.get("text"))
        if q is None or context is None:
            missing = "question" if q is None else "context"
            return Item(label, error=f'has no "{missing}" field (JSONL for question answering needs both).')
        return Item(label, (q, context))
    if spec.name == "text-classification" and "query" in record:
        if not isinstance(record.get("documents"), list):
            return Item(label, error='has a "query" but no "documents" list (JSONL for reranking needs both).')
        return Item(label, Rerank(record["query"], record["documents"]))
    if "text" not in record:
        return Item(label, error='has no "text" field.')
    return Item(label, record["text"])


def count_lines(path: Path) -> int:
    """Lines in a file (the last one need not end in a newline), read in blocks."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# ── output ──────────────────────────────────────────────────────────────────────────────────────


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
    readable = [k for k, item in enumerate(chunk) if item.error is None and not isinstance(item.value, Rerank)]
    rankings = {k: _rerank(model, chunk[k]) for k, item in enumerate(chunk) if isinstance(item.value, Rerank)}
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
    for k, ranking in rankings.items():
        out[k] = ranking
    progress.update(len(chunk) - sum(1 for r in results if not isinstance(r, InputError)))
    return out


def _rerank(model: Model, item: Item) -> Ranking | str:
    """One {"query", "documents"} line's ranking, or the error message naming the line."""
    request = item.value
    try:
        if not isinstance(request.query, str) or not all(isinstance(d, str) for d in request.documents):
            raise UserError('needs a string "query" and a list of string "documents".')
        return Ranking(model.rerank(request.query, request.documents))
    except UserError as e:
        message = str(e)
        return message if message.startswith(item.label) else f"{item.label} {message}"


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
                key = "ranking" if isinstance(result, Ranking) else spec.result_key
                line = {"index": index, key: jsonable(result)}
            typer.echo(json.dumps(line, ensure_ascii=False))
            index += 1
        sys.stdout.flush()
    return index, failed


# ── commands ────────────────────────────────────────────────────────────────────────────────────


def run_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by mbedge export or quantize.")],
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to run; without them, --input or stdin is read.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="One text per line, or JSONL with a text field ('-' for stdin); UTF-8."),
    ] = None,
    input_format: Annotated[str, typer.Option("--format", help="auto, lines or jsonl.")] = "auto",
    task: Annotated[
        str | None,
        typer.Option(help="Check the folder's task (or 'embed' on any folder with hidden states)."),
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Predictions per mask (5), labels (all), answers (1).")] = None,
    pooling: Annotated[
        str | None, typer.Option(help="Embeddings: the model's pooling (mean for plain checkpoints), or cls, max, ...")
    ] = None,
    normalize: Annotated[
        bool | None, typer.Option(help="Embeddings: L2-normalize (default: as the model says).")
    ] = None,
    prompt_name: Annotated[
        str | None, typer.Option(help="Embeddings: one of the model's prompts (e.g. query).")
    ] = None,
    dim: Annotated[int | None, typer.Option(help="Embeddings: keep the first DIM values, renormalized.")] = None,
    file: Annotated[
        str | None, typer.Option(help="Folders without manifest.json: the model file (e.g. onnx/model_quantized.onnx).")
    ] = None,
    aggregation: Annotated[
        str | None, typer.Option(help="Entities: none, simple (default), first, average or max.")
    ] = None,
    question: Annotated[
        str | None, typer.Option(help="Question answering: the question for every context text.")
    ] = None,
    max_answer_len: Annotated[
        int | None, typer.Option(help="Question answering: longest answer in tokens (15).")
    ] = None,
    batch_tokens: Annotated[int, typer.Option(help="Padded tokens per batch.")] = DEFAULT_BATCH_TOKENS,
    batch_rows: Annotated[int, typer.Option(help="Rows per batch, at most.")] = DEFAULT_BATCH_ROWS,
    max_padding: Annotated[
        float | None, typer.Option(help="Share of a batch that may be padding: 0 (default) equal lengths only, 1 any.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads (default: one per core).")] = None,
    truncation: Annotated[str, typer.Option(help="Inputs too long for the model: truncate or error.")] = "truncate",
    max_length: Annotated[int | None, typer.Option(help="Read at most this many tokens per input.")] = None,
    on_error: Annotated[str, typer.Option(help="A bad input: skip (report it, go on) or stop.")] = "skip",
    progress: Annotated[
        bool | None, typer.Option(help="Progress on stderr (default: on a terminal, for long inputs).")
    ] = None,
) -> None:
    """Run a model folder's task on texts; write one JSON line per input to stdout."""
    _choice(input_format, FORMATS, "--format")
    _choice(pooling, POOLING_MODES, "--pooling")
    _choice(aggregation, AGGREGATIONS, "--aggregation")
    _choice(truncation, TRUNCATION, "--truncation")
    _choice(on_error, ON_ERROR, "--on-error")
    if texts and input_file is not None:
        raise UserError("pass texts as arguments or with --input, not both.")
    model = load(
        model_dir,
        threads=threads,
        batch_tokens=batch_tokens,
        batch_rows=batch_rows,
        truncation=truncation,
        max_length=max_length,
        max_padding=DEFAULT_MAX_PADDING if max_padding is None else max_padding,
        file=file,
    )
    spec = model.resolve_task(task)
    given = {
        "top_k": top_k,
        "pooling": pooling,
        "normalize": normalize,
        "prompt_name": prompt_name,
        "dim": dim,
        "aggregation": aggregation,
        "max_answer_len": max_answer_len,
        "question": question,
    }
    applies = set(OPTIONS[spec.name]) | ({"question"} if spec.pair else set())
    stray = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and k not in applies]
    if stray:
        raise UserError(f"{', '.join(stray)} does not apply to {spec.name}.")
    options = {k: v for k, v in given.items() if v is not None and k != "question"}

    total_known: int | None = None
    if texts:
        items: Iterable[Item] = read_arguments(texts, spec, question)
        total_known = len(texts)
        if spec.pair and question is None:
            raise UserError("question answering needs --question with texts given as arguments.")
    elif input_file is not None and str(input_file) != "-":
        if not input_file.is_file():
            raise UserError(f"input file {input_file} does not exist.")
        total_known = count_lines(input_file)
        items = _file_items(input_file, input_format, spec, question)
    else:
        if sys.stdin.isatty():
            raise UserError("no input: pass texts as arguments, --input FILE, or pipe text to stdin.")
        items = read_stream(sys.stdin.buffer, "stdin", input_format, spec, question)
    long_input = total_known is None or total_known > PROGRESS_ABOVE
    bar = Progress(total_known, progress if progress is not None else (sys.stderr.isatty() and long_input))
    try:
        total, failed = run_items(model, items, spec, options, on_error, bar)
    finally:
        bar.close()
    if total == 0:
        raise UserError("no input: the input was empty.")
    if failed:
        raise UserError(f"{failed} of {total} inputs failed (see above); the others were written.")


def _file_items(path: Path, fmt: str, spec: Task, question: str | None) -> Iterator[Item]:
    with path.open("rb") as f:
        yield from read_stream(f, str(path), fmt, spec, question)


def info_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by mbedge export or quantize.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    file: Annotated[str | None, typer.Option(help="Folders without manifest.json: the model file.")] = None,
) -> None:
    """Load a model folder (checking it) and print what it holds."""
    info = load(model_dir, file=file).describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    cfg = info["config"]
    outputs = ", ".join(f"{name} {shape}" for name, shape in info["outputs"].items())
    tok = info["tokenizer"]
    rows = [
        ("folder", info["folder"]),
        ("task", info["task"]),
        ("precision", info["precision"]),
        ("model file", f"{info['model_file']} ({info['model_bytes'] / 1e6:.1f} MB)"),
        ("inputs", ", ".join(info["inputs"])),
        ("outputs", outputs),
        (
            "config",
            ", ".join(
                f"{k.replace('_', ' ')} {cfg[k]}"
                for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "local_attention")
                if k in cfg
            ),
        ),
        ("max length", f"{info['max_length']} tokens"),
        ("labels", ", ".join(info["labels"]) + (f" ({info['problem_type']})" if info["problem_type"] else "")),
        (
            "tokenizer",
            "none: pass token ids to Model.run()"
            if tok is None
            else f"{tok['file']} (vocab {tok['vocab_size']}, mask {tok['mask_token']})",
        ),
        ("validation", _validation_line(info["validation"])),
        ("source", info["source"]),
    ]
    for key, value in rows:
        if value:
            typer.echo(f"{key:<11} {value}")


def _validation_line(validation: dict) -> str:
    """'passed (max abs diff 1.8e-07 <= 1e-04)', 'skipped (reason)', or 'none recorded'."""
    if not validation:
        return "none recorded"
    if "max_abs_diff" in validation:
        detail = f"max abs diff {validation['max_abs_diff']:.1e}"
        detail += f" <= {validation['atol']:.0e}" if "atol" in validation else ""
    else:
        detail = validation.get("reason", "")
    return f"{validation.get('status', '?')} ({detail})" if detail else str(validation.get("status", "?"))
