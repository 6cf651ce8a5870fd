"""Predictor: the one path every task takes, inputs in, results out (Model adds the task methods).

    predict = run_encoded(encode(...)):
        encode:      the task's row (tasks.TASKS) ─ its prepare (prompt) or expand (rerank rows)
                     ─ tokenize (validate, truncate) ─ the row's check ─ Encoded
        run_encoded: plan_batches (sorted, token budget) ─ Session.run (the row's mark)
                     ─ the row's post-processor per batch ─ results back in input order

The two steps are public so that a caller that must count tokens before running (the server's
admission, `mbedge batch`'s statistics) tokenizes once: what it counted is what runs. Every input is
checked before the model runs: a bad one raises its InputError (or, with `predict(...,
errors="return")`, takes the error's place in the results). A task whose inputs stand for several
rows each (rerank) runs all rows together and gathers each input's result from its rows. Nothing in
a Predictor changes after loading, so threads may share one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from modernbert_edge.contract import LAST_HIDDEN_STATE, LOGITS
from modernbert_edge.errors import OptionError, UserError
from modernbert_edge.runtime.batching import pad, plan_batches
from modernbert_edge.runtime.encoded import Encoded, TokenIds
from modernbert_edge.runtime.engines import engine_line, int8_lines
from modernbert_edge.runtime.errors import (
    InputError,
    InputTooLongError,
    MissingTokenizerError,
    TaskMismatchError,
    TruncationWarning,
)
from modernbert_edge.runtime.folder import ModelInfo, describe
from modernbert_edge.runtime.options import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_PADDING,
    DEFAULT_TRUNCATION,
)
from modernbert_edge.runtime.postprocess import Batch
from modernbert_edge.runtime.session import Session
from modernbert_edge.runtime.tasks import TASKS, Task, find_task
from modernbert_edge.runtime.tokenize import TextTokenizer

OUTPUT_BYTES = 256 << 20  # per-token outputs of one batch (fill-mask logits: tokens × vocab floats)
# Logits of marked rows per graph run (fill-mask: masks × vocab floats). onnxruntime's decoder holds a few
# such buffers: with a ModernBERT-base vocabulary (50,368) a run decodes up to 666 masks, and one text
# of 8,000 masks peaked at 0.9 GB of RSS in `mbedge run` where one run for all of them took 9.8 GB
# (one-off, tiny model with a base vocabulary, Xeon with AMX, 2026-12-05). A batch with more masks
# runs the encoder once per part.
DECODE_BYTES = 128 << 20


class Predictor:
    """The folder's graph and tokenizer: inputs encoded and checked, run in planned batches, post-processed
    by the task's row. `Model` adds the task methods a user calls."""

    engine = "onnxruntime"  # the engine running the graph (runtime.engines.ENGINES); `load` sets it

    def __init__(
        self,
        info: ModelInfo,
        session: Session,
        tokenizer: TextTokenizer | None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        truncation: str = DEFAULT_TRUNCATION,
        max_padding: float | None = DEFAULT_MAX_PADDING,
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.batch_rows = batch_rows
        self.max_padding = max_padding
        self.truncation = truncation
        self._session = session

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def max_length(self) -> int:
        """The longest input in tokens, special tokens included."""
        return self.tokenizer.max_length if self.tokenizer else self.info.max_position_embeddings

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        mask_positions: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The graph's outputs for (batch, sequence) token ids, one call, no batching or post-processing.

        mask_positions (fill-mask graphs of this project): flat indices b * S + s of real tokens; `logits`
        is then (1, M, vocab) for those positions only, in row-major order (sorted, each once), which
        skips the vocabulary decoder everywhere else.
        """
        try:
            ids = np.asarray(input_ids)
            mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        except (TypeError, ValueError) as e:  # ragged rows, objects numpy cannot hold
            raise InputError(f"of run() is not an array of token ids ({type(e).__name__}).") from None
        if ids.ndim == 1 and mask.ndim == 1:  # one row
            ids, mask = ids[None], mask[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or mask.shape != ids.shape:
            raise InputError(
                f"of run() must be (batch, sequence) integer input_ids and an attention_mask of the same shape, "
                f"got {ids.dtype} {list(ids.shape)} and {list(mask.shape)}."
            )
        if ids.size == 0:
            raise InputError(f"of run() is an empty batch (shape {list(ids.shape)}): pass at least one token.")
        if ids.shape[1] > self.info.max_position_embeddings:
            raise InputTooLongError(
                f"has {ids.shape[1]} tokens per row, more than the {self.info.max_position_embeddings} "
                "this model reads."
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.info.vocab_size):
            raise UserError(f"run() got token ids outside the model's vocabulary [0, {self.info.vocab_size}).")
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise UserError("run() got an attention_mask with values other than 0 and 1.")
        empty = np.flatnonzero(mask.sum(axis=1) == 0)
        if empty.size:
            raise InputError(f"of run() has rows with no tokens (an attention_mask of only 0s): rows {empty.tolist()}.")
        mask = mask.astype(np.int64)  # a copy: marks go into it
        if mask_positions is not None:
            if not self.decodes_masked_rows_only:
                raise UserError(f"{self.info.folder}'s graph cannot decode chosen rows (not this project's fill-mask).")
            flat = np.asarray(mask_positions).reshape(-1)
            if not np.issubdtype(flat.dtype, np.integer) or (
                flat.size and (flat.min() < 0 or flat.max() >= mask.size or not mask.reshape(-1)[flat].all())
            ):
                raise InputError(
                    f"of run() has mask_positions that are not flat indices b * S + s of real tokens within "
                    f"[0, {ids.size}) for a batch of shape {list(ids.shape)}."
                )
            mask.reshape(-1)[flat.astype(np.int64)] = self._session.mark
        return self._session.run(ids.astype(np.int64, copy=False), mask)

    def predict(
        self,
        inputs: Sequence,
        task: str | None = None,
        errors: str = "raise",
        on_batch: Callable[[int], None] | None = None,
        **options: object,
    ) -> list:
        """Run the folder's task on a list of inputs (texts; (question, context) pairs for QA).

        errors="raise" raises the first bad input's InputError before anything runs;
        errors="return" puts each bad input's InputError in its place and runs the others.
        on_batch(rows) is called after each batch. Options are those of the task's method
        (top_k, pooling, aggregation, ...). The same as `run_encoded(encode(inputs, task, **options))`.
        """
        if errors not in ("raise", "return"):
            raise UserError(f"errors must be 'raise' or 'return', got {errors!r}.")
        return self.run_encoded(self.encode(inputs, task, **options), errors, on_batch)

    def encode(
        self, inputs: Sequence, task: str | None = None, truncation: str | None = None, **options: object
    ) -> Encoded:
        """predict's first step: the inputs tokenized and checked, as `run_encoded` runs them (a bad input's
        InputError in its place). truncation ("truncate" or "error") overrides the model's for this call.
        A server counts the tokens of the result for admission and queues it: what was counted is what runs."""
        spec = self.resolve_task(task)
        options = spec.with_options(options)
        tokenizer = self._need_tokenizer()
        truncation = self.truncation if truncation is None else truncation
        if truncation not in ("truncate", "error"):
            raise OptionError(f"truncation must be 'truncate' or 'error', got {truncation!r}.", "truncation")
        inputs = as_list(inputs, "predict", plain=False)
        if spec.expand is None:
            if spec.prepare is not None:
                inputs, options = spec.prepare(inputs, options, self.info, tokenizer)
            rows, encodings = self._encode_rows(spec, inputs, truncation)
            return Encoded(spec, options, rows, encodings)
        groups = [spec.expand(x) for x in inputs]  # each input's rows, or why it has none
        owner = [i for i, g in enumerate(groups) if not isinstance(g, InputError) for _ in g]  # row -> input
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows, encodings = self._encode_rows(
                spec, [r for g in groups if not isinstance(g, InputError) for r in g], truncation
            )
        for w in caught:  # a row's warning names its input
            m = w.message
            if isinstance(m, TruncationWarning):
                m = TruncationWarning(m.reason, owner[m.index], m.tokens, m.dropped)
            warnings.warn(m, stacklevel=2)
        sizes = [g if isinstance(g, InputError) else len(g) for g in groups]
        return Encoded(spec, options, rows, encodings, sizes)

    def encode_ids(self, ids: Sequence[Sequence[int]], truncation: str | None = None, **options: object) -> Encoded:
        """Token ids of this model's tokenizer as `encode` gives them for feature extraction, used as given
        (no special tokens or prompt added): an id outside the vocabulary or an empty row is an InputError
        in its place, a row longer than the model reads is cut (or an InputTooLongError with "error")."""
        spec = self.resolve_task("feature-extraction")
        if options.get("prompt") is not None or options.get("prompt_name") is not None:
            raise UserError("token ids are used as given: they take no prompt.")
        options = {**spec.with_options(options), "prompt_tokens": 0}
        del options["prompt"], options["prompt_name"]
        truncation = self.truncation if truncation is None else truncation
        encodings: list = []
        for i, row in enumerate(ids):
            row = list(row)
            bad = next((t for t in row if isinstance(t, bool) or not isinstance(t, int)), None)
            outside = next((t for t in row if isinstance(t, int) and not 0 <= t < self.info.vocab_size), None)
            if not row or bad is not None:
                encodings.append(InputError("must be a non-empty list of token ids (integers).", i))
            elif outside is not None:
                encodings.append(
                    InputError(f"has token id {outside}, outside the vocabulary [0, {self.info.vocab_size}).", i)
                )
            elif len(row) > self.max_length and truncation == "error":
                encodings.append(
                    InputTooLongError(
                        f"has {len(row)} tokens, more than the {self.max_length} this model reads",
                        i,
                        "it",
                    )
                )
            else:
                encodings.append(TokenIds(row[: self.max_length]))
        return Encoded(spec, options, [None] * len(encodings), encodings)

    def run_encoded(
        self, encoded: Encoded, errors: str = "raise", on_batch: Callable[[int], None] | None = None
    ) -> list:
        """predict's second step: run what `encode` made, in planned batches; one result per input."""
        bad = [e for e in encoded.errors if e is not None]
        if bad and errors == "raise":
            raise bad[0]
        spec, options = encoded.task, encoded.options
        results = self._run(spec, encoded.inputs, encoded.encodings, None if encoded.groups else on_batch, options)
        if encoded.groups is None:
            return results
        out: list = []
        k = 0
        for size, error in zip(encoded.groups, encoded.errors, strict=True):
            part = [] if isinstance(size, InputError) else results[k : k + size]
            k += len(part)
            out.append(error if error is not None else spec.gather(part, **options))
        if on_batch is not None:
            on_batch(len(out) - len(bad))
        return out

    def _encode_rows(self, spec: Task, inputs: list, truncation: str) -> tuple[list, list]:
        """(the rows as the post-processor reads them, each one's checked Encoding or InputError).
        Text classification also takes (text, text_pair) pairs, encoded as [CLS] text [SEP] text_pair [SEP]."""
        tokenizer = self.tokenizer
        if spec.pair:
            inputs = [_as_pair(x) for x in inputs]
            names = ("query", "document") if spec.expand is not None else ("question", "context")
            encoded = tokenizer.encode_pairs(inputs, truncation, names)
        elif spec.name == "text-classification" and any(isinstance(x, (tuple, list)) for x in inputs):
            encoded = [None] * len(inputs)
            paired = [i for i, x in enumerate(inputs) if isinstance(x, (tuple, list))]
            single = [i for i, x in enumerate(inputs) if not isinstance(x, (tuple, list))]
            for part, done in (
                (
                    paired,
                    tokenizer.encode_pairs([_as_pair(inputs[i]) for i in paired], truncation, ("text", "text pair")),
                ),
                (single, tokenizer.encode([inputs[i] for i in single], truncation)),
            ):
                for i, e in zip(part, done, strict=True):
                    encoded[i] = type(e)(e.reason, i) if isinstance(e, InputError) else e
        else:
            encoded = tokenizer.encode(inputs, truncation)
        if spec.check is not None:
            encoded = [e if isinstance(e, InputError) else spec.check(e, i, tokenizer) for i, e in enumerate(encoded)]
        return inputs, encoded

    def _run(self, spec: Task, inputs: list, encoded: list, on_batch: Callable | None, options: dict) -> list:
        """Run the valid rows in planned batches and post-process each batch; errors stay in place."""
        results: list = list(encoded)  # errors stay in place; encodings are replaced by results
        valid = [i for i, e in enumerate(encoded) if not isinstance(e, InputError)]
        for planned in self.plan([len(encoded[i].ids) for i in valid]):
            rows = [valid[j] for j in planned]
            encs = [encoded[i] for i in rows]
            ids, mask = pad([e.ids for e in encs], self.info.pad_token_id)  # (B, S) each
            done = self._run_batch(spec, ids, mask, encs, [inputs[i] for i in rows], options)
            for i, result in zip(rows, done, strict=True):
                results[i] = result
            if on_batch is not None:
                on_batch(len(rows))
        return results

    def _run_batch(
        self, spec: Task, ids: np.ndarray, mask: np.ndarray, encs: list, inputs: list, options: dict
    ) -> list:
        """One planned batch through the graph and the task's post-processor, one result per row.

        A graph that decodes marked rows only (fill-mask) gets its marks in parts of at most
        DECODE_BYTES of logits, one graph run each, and each row's per-mask results are joined in
        order: thousands of [MASK] tokens in one text cost more runs, never more memory."""
        tokenizer = self.tokenizer
        if spec.mark is None or not self.decodes_masked_rows_only:
            out = self._session.run(ids, mask)
            return spec.post(Batch(out, ids, mask, encs, inputs, self.info, tokenizer), **options)
        flat = np.flatnonzero(spec.mark(ids, mask, tokenizer, self._session.mark) == self._session.mark)
        per_run = max(1, DECODE_BYTES // (4 * self.info.vocab_size))
        joined: list[list] = [[] for _ in encs]
        for start in range(0, max(flat.size, 1), per_run):
            part = flat[start : start + per_run]
            marked = mask.copy()
            marked.reshape(-1)[part] = self._session.mark
            batch = Batch(self._session.run(ids, marked), ids, mask, encs, inputs, self.info, tokenizer, part)
            for row, result in zip(joined, spec.post(batch, **options), strict=True):
                row.extend(result)
        return joined

    def resolve_task(self, name: str | None) -> Task:
        """The folder's task; `name` must be it (or feature-extraction, on a graph with hidden states)."""
        try:
            spec = TASKS[self.task] if name is None else find_task(name)
        except KeyError:
            names = [n for t in TASKS.values() for n in (t.name, *t.aliases)]
            raise OptionError(f"task {name!r} is not one of {', '.join(names)}.", "task") from None
        hidden = LAST_HIDDEN_STATE in self._session.output_names
        if spec.name == self.task or (spec.name == "feature-extraction" and hidden):
            return spec
        if spec.folder_task == self.task and spec.head_size(self.info) == TASKS[self.task].head_size(self.info):
            return spec  # rerank on a one-label text-classification folder
        if spec.folder_task is not None:
            raise TaskMismatchError(
                f"{self.info.folder} holds a {self.task} model with a head of size "
                f"{TASKS[self.task].head_size(self.info)}, so it cannot {spec.method}: {spec.name} runs on "
                f"{spec.folder_task} models whose head has size {spec.head_size(self.info)}."
            )
        own = TASKS[self.task]  # the task first, then the method that runs it: CLI, server and library users
        raise TaskMismatchError(
            f"{self.info.folder} holds a {self.task} model: it does {self.task} ({own.method}()), not "
            f"{spec.name} ({spec.method}()); for that, export the checkpoint with --task {spec.name}."
        )

    def _need_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise MissingTokenizerError(
                f"{self.info.folder} has no tokenizer.json, so it cannot take text: pass token ids to "
                "Model.run(), or export from a checkpoint folder that has a tokenizer.json."
            )
        return self.tokenizer

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """The batches (input indices) this model runs inputs of these token lengths in."""
        return plan_batches(lengths, self._token_budget(), self.batch_rows, self.max_padding)

    @property
    def decodes_masked_rows_only(self) -> bool:
        """Whether the graph decodes marked rows only (fill-mask logits for the [MASK] rows)."""
        return self._session.mark is not None

    def _token_budget(self) -> int:
        """Padded tokens per batch: batch_tokens, lowered so that the per-token outputs of one batch
        (those shaped (batch, sequence, ...), e.g. fill-mask logits without marked rows) stay
        within OUTPUT_BYTES."""
        selected = self.decodes_masked_rows_only
        per_token = sum(
            math.prod(d if isinstance(d, int) else 1 for d in shape[2:])
            for name, shape in self._session.output_shapes.items()
            if len(shape) >= 2 and not isinstance(shape[1], int) and not (selected and name == LOGITS)
        )
        return max(1, min(self.batch_tokens, OUTPUT_BYTES // (4 * per_token))) if per_token else self.batch_tokens

    def describe(self) -> dict:
        """What the folder holds, for `mbedge info` (JSON-friendly)."""
        return {
            **describe(self.info, self._session, self.tokenizer, self.max_length),
            "engine": engine_line(self.info, self.engine),
            "int8": int8_lines(self.info),
        }


def as_list(value: object, method: str, what: str = "", plain: bool = True) -> list:
    """A text as [text] (when plain), a list, tuple or other iterable of inputs as a list; anything else
    (None, a number, bytes, a mapping) is an InputError naming the method."""
    if plain and isinstance(value, str):
        return [value]
    if isinstance(value, (str, bytes, bytearray, dict)) or not isinstance(value, Iterable):
        kind = f"{what}s" if what else "texts"
        expected = f"a {what or 'text'} or a list of {kind}" if plain else "a list of inputs"
        raise InputError(f"of {method}() must be {expected} (got {type(value).__name__}).")
    return list(value)


def _as_pair(x: object) -> tuple[object, object]:
    if isinstance(x, dict):
        return x.get("question"), x.get("context")
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    return x, None  # reported as a missing context
