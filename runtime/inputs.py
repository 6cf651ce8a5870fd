"""`mbedge run`'s inputs: texts from its arguments, a file or stdin, as Items in input order.

A file (or stdin) holds one text per line, or JSONL with a "text" field ("question"/"context" for
question answering, "query"/"documents" for rerank). Each line is decoded and parsed on its own, so
a bad line becomes an Item with an error and the others still run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.tasks import Task

FORMATS = ("auto", "lines", "jsonl")


@dataclass(frozen=True)
class Item:
    """One input as read: where it came from, its value, or why it could not be read."""

    label: str  # "argument 2", "line 7 of texts.txt"
    value: object = None  # a text, or a (question, context) pair
    error: str | None = None  # reason, to follow the label


def read_inputs(
    texts: list[str] | None, input_file: Path | None, fmt: str, spec: Task, question: str | None
) -> tuple[Iterable[Item], int | None]:
    """The items to run, from the arguments, --input FILE, or stdin (--input - or nothing), and their
    count when it is known before reading (arguments, files)."""
    if texts:
        if spec.expand is not None:
            raise UserError('rerank reads JSONL lines {"query": ..., "documents": [...]} from --input or stdin.')
        if spec.pair and question is None:
            raise UserError("question answering needs --question with texts given as arguments.")
        return read_arguments(texts, spec, question), len(texts)
    if input_file is not None and str(input_file) != "-":
        if not input_file.is_file():
            raise UserError(f"input file {input_file} does not exist.")
        return _file_items(input_file, fmt, spec, question), count_lines(input_file)
    if sys.stdin.isatty():
        raise UserError("no input: pass texts as arguments, --input FILE, or pipe text to stdin.")
    return read_stream(sys.stdin.buffer, "stdin", fmt, spec, question), None


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
        elif spec.expand is not None:
            yield Item(label, error='is not JSON: rerank reads lines {"query": ..., "documents": [...]}.')
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
    if spec.expand is not None:  # rerank: {"query", "documents"}
        return Item(label, record)
    if spec.pair:
        q = record.get("question", question)
        context = record.get("context", record.get("text"))
        if q is None or context is None:
            missing = "question" if q is None else "context"
            return Item(label, error=f'has no "{missing}" field (JSONL for question answering needs both).')
        return Item(label, (q, context))
    if "text" not in record:
        hint = " (to rank documents for a query, pass --task rerank)" if "query" in record else ""
        return Item(label, error=f'has no "text" field{hint}.')
    return Item(label, record["text"])


def count_lines(path: Path) -> int:
    """Lines in a file (the last one need not end in a newline), read in blocks."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _file_items(path: Path, fmt: str, spec: Task, question: str | None) -> Iterator[Item]:
    with path.open("rb") as f:
        yield from read_stream(f, str(path), fmt, spec, question)
