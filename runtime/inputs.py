"""`mbedge run`'s inputs: texts from its arguments, a file or stdin, as Items in input order.

A file (or stdin) holds one text per line, or JSONL with a "text" field ("question"/"context" for
question answering, "query"/"documents" for rerank). Each line is decoded and parsed on its own, so
a bad line becomes an Item with an error and the others still run. Lines are read with a byte cap
(`line_cap`), so no line costs more memory than the model can read: a longer plain-text line is cut
at the cap (and then counts as too long: truncated with a warning, or an error with --truncation
error), a longer JSONL line (which cannot be parsed in part) is an error for that line; the rest of
it is skipped unread.
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
from modernbert_edge.runtime.tokenize import CHARS_PER_TOKEN

# A JSON string spends at most 12 bytes on one character ("\\ud83d\\ude00"), and the tokenizer reads at
# most max_chars characters of a text (and of a context): a line of LINE_BYTES_PER_CHAR * max_chars bytes
# plus LINE_SLACK for the other fields holds every character the model can read.
LINE_BYTES_PER_CHAR = 12
LINE_SLACK = 1 << 16
SKIP_BLOCK = 1 << 16  # bytes read at a time while skipping the rest of an overlong line


def line_cap(max_chars: int, texts_per_line: int = 1) -> int:
    """The most bytes of one input line worth reading for a model that reads max_chars characters per text."""
    return LINE_BYTES_PER_CHAR * max_chars * texts_per_line + LINE_SLACK


@dataclass(frozen=True)
class Item:
    """One input as read: where it came from, its value, or why it could not be read."""

    label: str  # "argument 2", "line 7 of texts.txt"
    value: object = None  # a text, or a (question, context) pair
    error: str | None = None  # reason, to follow the label


def read_inputs(
    texts: list[str] | None,
    input_file: Path | None,
    fmt: str,
    spec: Task,
    question: str | None,
    cap: int = line_cap(CHARS_PER_TOKEN * 8192),
) -> tuple[Iterable[Item], int | None]:
    """The items to run, from the arguments, --input FILE, or stdin (--input - or nothing), and their
    count when it is known before reading (arguments, files); cap: the most bytes read of one line."""
    if texts:
        if spec.expand is not None:
            raise UserError('rerank reads JSONL lines {"query": ..., "documents": [...]} from --input or stdin.')
        if spec.pair and question is None:
            raise UserError("question answering needs --question with texts given as arguments.")
        return read_arguments(texts, spec, question), len(texts)
    if input_file is not None and str(input_file) != "-":
        if not input_file.exists():
            raise UserError(f"input file {input_file} does not exist.")
        if input_file.is_dir():
            raise UserError(f"input {input_file} is a folder; give a file of texts.")
        if not input_file.is_file():  # a pipe (--input <(cmd)) or a device: read once, count unknown
            return _file_items(input_file, fmt, spec, question, cap), None
        return _file_items(input_file, fmt, spec, question, cap), count_lines(input_file)
    if sys.stdin is None:  # closed (mbedge run MODEL <&-)
        raise UserError("no input: stdin is closed; pass texts as arguments, --input FILE, or pipe text to stdin.")
    if sys.stdin.isatty():
        raise UserError("no input: pass texts as arguments, --input FILE, or pipe text to stdin.")
    return read_stream(sys.stdin.buffer, "stdin", fmt, spec, question, cap), None


def read_arguments(texts: list[str], spec: Task, question: str | None) -> Iterator[Item]:
    """Items from the command line; an argument that was not valid UTF-8 (Python keeps its bytes as
    lone surrogates) is an error for that argument."""
    for n, text in enumerate(texts, 1):
        label = f"argument {n}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape") if _escaped_bytes(text) else b""
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Item(label, error=f"is not valid UTF-8 (byte {raw[e.start]:#04x} at byte {e.start + 1}).")
                continue
        yield Item(label, (question, text) if spec.pair else text)


def _escaped_bytes(text: str) -> bool:
    """Whether every lone surrogate of text is one the OS decoding made of an undecodable byte."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def read_lines(stream: BinaryIO, cap: int) -> Iterator[tuple[bytes, bool]]:
    """(line without its newline, whether it was longer than cap bytes and cut there), holding at most
    cap bytes of a line; the rest of an overlong line is read in blocks and dropped."""
    while raw := stream.readline(cap + 1):
        cut = len(raw) > cap and not raw.endswith(b"\n")
        if cut:
            raw = raw[:cap]
            while (rest := stream.readline(SKIP_BLOCK)) and not rest.endswith(b"\n"):
                pass
        yield raw.rstrip(b"\n").rstrip(b"\r"), cut


def read_stream(
    stream: BinaryIO, name: str, fmt: str, spec: Task, question: str | None, cap: int = line_cap(CHARS_PER_TOKEN * 8192)
) -> Iterator[Item]:
    """Items from a byte stream, one per line (at most cap bytes of each); each line is decoded (and
    parsed) on its own, so a bad line becomes an Item with an error and the others still run."""
    mode = None if fmt == "auto" else fmt
    for n, (line, cut) in enumerate(read_lines(stream, cap), 1):
        label = f"line {n} of {name}"
        if n == 1:
            if line.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in line:
                raise UserError(f"{name} is not UTF-8 text (it looks like UTF-16 or binary): convert it to UTF-8.")
            line = line.removeprefix(b"\xef\xbb\xbf")
        if cut:  # a character cut in two at the cap is dropped
            line = line[: len(line) - _partial_tail(line)]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Item(label, error=f"is not valid UTF-8 (byte {line[e.start]:#04x} at column {e.start + 1}).")
            continue
        if mode is None and text.strip():
            looks_json = text.lstrip().startswith("{") if cut else _is_json_object(text)
            mode = "jsonl" if name.endswith((".jsonl", ".ndjson")) or looks_json else "lines"
        if mode == "jsonl" and cut:
            yield Item(
                label,
                error=f"is longer than {cap} bytes, the most a JSONL line may hold for this model (it reads "
                "only the start of a longer text): shorten its text.",
            )
        elif mode == "jsonl":
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


def _partial_tail(line: bytes) -> int:
    """How many bytes at the end of line begin a UTF-8 character that the line does not complete."""
    for back in range(1, min(4, len(line)) + 1):
        byte = line[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): complete when its sequence fits in `back` bytes
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return back if need > back else 0
    return 0


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False
    except RecursionError:  # nested too deeply to parse: an object when it starts as one
        return text.lstrip().startswith("{")


def _from_json(label: str, text: str, spec: Task, question: str | None) -> Item:
    if not text.strip():
        return Item(label, error="is blank (expected a JSON object).")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return Item(label, error=f"is not valid JSON ({e.msg} at column {e.colno}).")
    except RecursionError:
        return Item(label, error="is nested too deeply to be read as JSON.")
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


def _file_items(path: Path, fmt: str, spec: Task, question: str | None, cap: int) -> Iterator[Item]:
    with path.open("rb") as f:
        yield from read_stream(f, str(path), fmt, spec, question, cap)
