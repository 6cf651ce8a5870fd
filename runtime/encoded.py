"""What `Predictor.encode` makes and `Predictor.run_encoded` runs: inputs tokenized and checked for one task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modernbert_edge.runtime.errors import InputError

if TYPE_CHECKING:
    from modernbert_edge.runtime.tasks import Task


@dataclass(frozen=True)
class TokenIds:
    """A row given as token ids (`Model.encode_ids`): what the runtime reads of a tokenizer's Encoding."""

    ids: list[int]


@dataclass(frozen=True)
class Encoded:
    """Inputs tokenized and checked for one task (`Model.encode`), to run with `Model.run_encoded`.

    One row per input, except for a task whose inputs stand for several rows (rerank), where `groups`
    holds each input's number of rows (or its InputError). Parts with the same task and options join
    into one (`Encoded.join`): a server batches requests so, and splits the results back by `len`.
    """

    task: Task
    options: dict  # the post-processor's options (feature extraction: with prompt_tokens)
    inputs: list  # per row, as the post-processor reads it (texts with their prompt, (question, context) pairs)
    encodings: list  # per row: its Encoding (or TokenIds), or the InputError that says why it cannot run
    groups: list | None = None  # per input of an expanded task: its number of rows, or its InputError

    def __len__(self) -> int:
        return len(self.encodings) if self.groups is None else len(self.groups)

    @property
    def errors(self) -> list:
        """Per input: its InputError (an expanded input's own, or its first bad row's), else None."""
        if self.groups is None:
            return [e if isinstance(e, InputError) else None for e in self.encodings]
        out, k = [], 0
        for i, size in enumerate(self.groups):
            if isinstance(size, InputError):
                out.append(size)
                continue
            j, bad = next(
                ((j, e) for j, e in enumerate(self.encodings[k : k + size]) if isinstance(e, InputError)), (0, None)
            )
            out.append(
                type(bad)(f"{bad.reason.rstrip('.')} ({self.task.row_name} {j}).", i) if bad is not None else None
            )
            k += size
        return out

    @property
    def tokens(self) -> list[int]:
        """Per row: the tokens it runs (0 for a bad one)."""
        return [0 if isinstance(e, InputError) else len(e.ids) for e in self.encodings]

    @staticmethod
    def join(parts: Sequence[Encoded]) -> Encoded:
        """The parts as one (same task and options; a part's InputErrors keep their own indices)."""
        first = parts[0]
        grouped = first.groups is not None
        return Encoded(
            first.task,
            first.options,
            [x for p in parts for x in p.inputs],
            [e for p in parts for e in p.encodings],
            [g for p in parts for g in p.groups] if grouped else None,
        )
