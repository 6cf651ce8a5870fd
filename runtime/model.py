"""Model: a loaded model folder and its tasks, as plain Python and numpy results.

    load(folder) ─ read_folder (manifest, config) ─ TextTokenizer (tokenizer.json) ─ Session (model file)
    task method ─ encode (validate, truncate) ─ plan_batches (sorted, token budget) ─ Session.run
                ─ post-process per batch ─ results back in input order

Each text method takes one text (and returns one result) or a list (and returns a list); `embed`
always returns a (n, hidden) array. Every input is checked before the model runs: a bad one
raises its InputError (or, with `predict(..., errors="return")`, takes the error's place in the
results). Nothing in a Model changes after loading, so threads may share one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.batching import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_PADDING,
    pad,
    plan_batches,
)
from modernbert_edge.runtime.errors import (
    InputError,
    InputTooLongError,
    MissingMaskError,
    MissingTokenizerError,
    ModelFolderError,
    TaskMismatchError,
)
from modernbert_edge.runtime.folder import ModelInfo, folder_info, read_folder
from modernbert_edge.runtime.foreign import foreign_manifest, is_foreign, pick_file
from modernbert_edge.runtime.sentence import POOLING_MODES, Embedder, cross_encoder_function, prompt_tokens
from modernbert_edge.runtime.session import Session
from modernbert_edge.runtime.tasks import (
    AGGREGATIONS,
    TASKS,
    Task,
    best_spans,
    classification_function,
    entities,
    find_task,
    label_scores,
    softmax,
    subword_flags,
    top_k_indices,
)
from modernbert_edge.runtime.tokenize import TRUNCATION, TextTokenizer

# Each task's options and their defaults (the keyword arguments of its method).
OPTIONS: dict[str, dict[str, object]] = {
    "feature-extraction": {"pooling": None, "normalize": None, "prompt_name": None, "prompt": None, "dim": None},
    "fill-mask": {"top_k": 5},
    "text-classification": {"top_k": None, "function_to_apply": None},
    "token-classification": {"aggregation": "simple", "ignore_labels": ("O",)},
    "question-answering": {"top_k": 1, "max_answer_len": 15, "align_to_words": True},
}
OUTPUT_BYTES = 256 << 20  # per-token outputs of one batch (fill-mask logits: tokens × vocab floats)


class Model:
    """A model folder loaded for CPU inference; create it with `load`."""

    def __init__(
        self,
        info: ModelInfo,
        session: Session,
        tokenizer: TextTokenizer | None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        truncation: str = "truncate",
        max_padding: float | None = DEFAULT_MAX_PADDING,
        embedder: Embedder | None = None,
    ) -> None:
        self.info = info
        self.embedder = embedder or Embedder()  # pooling, Dense, Normalize, prompts (sentence-transformers)
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

    def __repr__(self) -> str:
        return f"Model({str(self.info.folder)!r}, task={self.task!r}, precision={self.info.precision!r})"

    # ── tasks ───────────────────────────────────────────────────────────────────────────────────

    def embed(
        self,
        texts: str | Sequence[str],
        pooling: str | None = None,
        normalize: bool | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        """(n, dim) float32 embeddings, as the model's sentence-transformers modules make them (its
        pooling, Dense, Normalize, default prompt); a plain checkpoint: mean pooling, L2-normalized.

        pooling / normalize override the model's; prompt_name picks one of its prompts, prompt gives
        the text itself; dim keeps the first dim values (Matryoshka) and renormalizes.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        options = {"pooling": pooling, "normalize": normalize, "prompt_name": prompt_name, "prompt": prompt, "dim": dim}
        rows = self.predict(texts, task="feature-extraction", **options)
        if rows:
            return np.stack(rows)
        width = dim or self.embedder.truncate_dim or self.embedder.dimension or self.info.hidden_size
        return np.zeros((0, width), np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n, m) scores between two sets of embeddings, with the model's similarity function (cosine,
        dot, euclidean or manhattan, as its sentence-transformers config names it; cosine otherwise)."""
        return self.embedder.similarity(a, b)

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> list[dict]:
        """[{index, score}] of the documents, best first (top_k of them): a one-label cross-encoder's
        score of each (query, document) pair, with its activation (sigmoid unless its config names one)."""
        if self.task != "text-classification" or len(self.info.id2label) != 1:
            raise TaskMismatchError(
                f"{self.info.folder} holds a {self.task} model with {len(self.info.id2label)} labels; rerank() "
                "needs a cross-encoder (text-classification with one label)."
            )
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise UserError(f"top_k must be a positive integer, got {top_k!r}.")
        documents = [documents] if isinstance(documents, str) else list(documents)
        function = cross_encoder_function(self.info.folder, 1)
        rows = self.predict([(query, d) for d in documents], task="text-classification", function_to_apply=function)
        scores = np.array([row[0]["score"] for row in rows], dtype=np.float64)
        order = top_k_indices(scores, top_k or len(scores)) if len(scores) else []
        return [{"index": int(i), "score": float(scores[i])} for i in order]

    def fill_mask(self, texts: str | Sequence[str], top_k: int = 5) -> list:
        """For each mask token in a text, its top_k predictions [{score, token, token_str, sequence}]."""
        return self._one_or_many(texts, "fill-mask", top_k=top_k)

    def classify(self, texts: str | Sequence[str], top_k: int | None = None) -> list:
        """[{label, score}] sorted by score (softmax; sigmoid for multi-label models), top_k of them."""
        return self._one_or_many(texts, "text-classification", top_k=top_k)

    def tag(
        self, texts: str | Sequence[str], aggregation: str = "simple", ignore_labels: Sequence[str] = ("O",)
    ) -> list:
        """Entities [{entity_group, score, word, start, end}] as character spans of each text.

        aggregation as in Hugging Face's token-classification pipeline: "none" (one per token, key
        "entity"), "simple" (group adjacent tokens), "first" / "average" / "max" (one label per word).
        """
        return self._one_or_many(texts, "token-classification", aggregation=aggregation, ignore_labels=ignore_labels)

    def answer(
        self,
        question: str | Sequence[str],
        context: str | Sequence[str],
        top_k: int = 1,
        max_answer_len: int = 15,
        align_to_words: bool = True,
    ) -> dict | list:
        """The best span of the context, {answer, score, start, end} (a list of top_k when top_k > 1).

        A question and a context give one result; lists (or one question for a list of contexts)
        give a list. Character offsets index the context.
        """
        single = isinstance(question, str) and isinstance(context, str)
        questions = [question] if isinstance(question, str) else list(question)
        contexts = [context] if isinstance(context, str) else list(context)
        if len(questions) == 1 and len(contexts) > 1:
            questions = questions * len(contexts)
        if len(questions) != len(contexts):
            raise UserError(f"answer() got {len(questions)} questions for {len(contexts)} contexts.")
        results = self.predict(
            list(zip(questions, contexts, strict=True)),
            task="question-answering",
            top_k=top_k,
            max_answer_len=max_answer_len,
            align_to_words=align_to_words,
        )
        return results[0] if single else results

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        mask_positions: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The graph's outputs for (batch, sequence) token ids, one call, no batching or post-processing.

        mask_positions (fill-mask graphs): flat indices b * S + s; `logits` is then (1, M, vocab) for
        those positions only, which skips the vocabulary decoder everywhere else.
        """
        ids = np.asarray(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if ids.ndim == 1 and mask.ndim == 1:  # one row
            ids, mask = ids[None], mask[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or mask.shape != ids.shape:
            raise UserError(
                f"run() needs (batch, sequence) integer input_ids and an attention_mask of the same shape, "
                f"got {ids.dtype} {list(ids.shape)} and {list(mask.shape)}."
            )
        if ids.shape[1] > self.info.max_position_embeddings:
            raise InputTooLongError(
                f"has {ids.shape[1]} tokens per row, more than the {self.info.max_position_embeddings} "
                "this model reads."
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.info.vocab_size):
            raise UserError(f"run() got token ids outside the model's vocabulary [0, {self.info.vocab_size}).")
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise UserError("run() got an attention_mask with values other than 0 and 1.")
        optional = {}
        if mask_positions is not None:
            if not self.decodes_masked_rows_only:
                raise UserError(f"{self.info.folder}'s graph has no mask_positions input (not a fill-mask graph).")
            optional["mask_positions"] = np.asarray(mask_positions, dtype=np.int64).reshape(-1)
        return self._session.run(ids.astype(np.int64, copy=False), mask.astype(np.int64, copy=False), **optional)

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
        (top_k, pooling, aggregation, ...).
        """
        spec = self.resolve_task(task)
        if errors not in ("raise", "return"):
            raise UserError(f"errors must be 'raise' or 'return', got {errors!r}.")
        options = self._options(spec, options)
        post = getattr(self, f"_post_{spec.method}")
        tokenizer = self._need_tokenizer()
        inputs = list(inputs)
        if spec.name == "feature-extraction":  # the prompt goes before each text; pooling may skip it
            prefix = self.embedder.prompt(options.pop("prompt_name"), options.pop("prompt"))
            inputs = self.embedder.texts(inputs, prefix)
            options["prompt_tokens"] = prompt_tokens(tokenizer, prefix)
        # text-classification also takes (text, text pair) pairs: a cross-encoder's (query, document)
        pairs = spec.name == "text-classification" and bool(inputs) and all(isinstance(x, tuple) for x in inputs)
        if spec.pair or pairs:
            inputs = [_as_pair(x) for x in inputs]
            encoded = tokenizer.encode_pairs(inputs, self.truncation)
        else:
            encoded = tokenizer.encode(inputs, self.truncation)
        if spec.name == "fill-mask":
            encoded = [_check_mask(e, i, tokenizer) for i, e in enumerate(encoded)]
        bad = [e for e in encoded if isinstance(e, InputError)]
        if bad and errors == "raise":
            raise bad[0]

        results: list = list(encoded)  # errors stay in place; encodings are replaced by results
        valid = [i for i, e in enumerate(encoded) if isinstance(e, Encoding)]
        lengths = [len(encoded[i].ids) for i in valid]
        for batch in self.plan(lengths):
            rows = [valid[j] for j in batch]
            encs = [encoded[i] for i in rows]
            ids, mask = pad([e.ids for e in encs], self.info.pad_token_id)
            out = self._forward(spec, ids, mask)
            for i, result in zip(rows, post(out, mask, encs, [inputs[i] for i in rows], **options), strict=True):
                results[i] = result
            if on_batch is not None:
                on_batch(len(rows))
        return results

    def _forward(self, spec: Task, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """One batch through the session. Fill-mask asks for the [MASK] rows only, when the graph can
        (its mask_positions input), and gets {"mask_positions": (M,) flat b * S + s, "mask_logits": (M, V)}."""
        if spec.name != "fill-mask":
            return self._session.run(ids, mask)
        positions = np.flatnonzero(ids == self.tokenizer.mask_id)  # row-major: b * S + s
        if self.decodes_masked_rows_only:
            logits = self._session.run(ids, mask, mask_positions=positions)["logits"][0]  # (M, V)
        else:
            logits = self._session.run(ids, mask)["logits"].reshape(-1, self.info.vocab_size)[positions]
        return {"mask_positions": positions, "mask_logits": logits}

    # ── post-processing, per batch: (outputs, mask, encodings, inputs, options) -> a result per row ──

    def _options(self, spec: Task, given: dict) -> dict:
        """The task's options: the defaults, updated with `given`, checked."""
        options = dict(OPTIONS[spec.name])
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise UserError(
                f"{spec.name} takes no option {', '.join(unknown)} (it takes {', '.join(sorted(options))})."
            )
        options.update(given)
        for key in ("top_k", "max_answer_len"):
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{key} must be a positive integer, got {value!r}.")
        if options.get("pooling") not in (None, *POOLING_MODES):
            raise UserError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {options['pooling']!r}.")
        if options.get("function_to_apply") not in (None, "softmax", "sigmoid", "none"):
            raise UserError(
                f"function_to_apply must be softmax, sigmoid or none, got {options['function_to_apply']!r}."
            )
        if options.get("aggregation", "simple") not in AGGREGATIONS:
            raise UserError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {options['aggregation']!r}.")
        return options

    def _post_embed(
        self,
        out: dict,
        mask: np.ndarray,
        encs: list,
        texts: list,
        pooling: str | None,
        normalize: bool | None,
        dim: int | None,
        prompt_tokens: int,
    ) -> list:
        vectors = self.embedder.vectors(out["last_hidden_state"], mask, prompt_tokens, pooling, normalize, dim)
        return list(vectors)  # (B, dim)

    def _post_fill_mask(self, out: dict, mask: np.ndarray, encs: list[Encoding], texts: list, top_k: int) -> list:
        tok = self.tokenizer
        width = mask.shape[1]
        results = []
        for b, enc in enumerate(encs):
            ids = np.asarray(enc.ids)
            rows = np.flatnonzero(out["mask_positions"] // width == b)  # this text's masks, in order
            positions = out["mask_positions"][rows] % width
            probs = softmax(out["mask_logits"][rows].astype(np.float32))  # (masks, V)
            single = len(positions) == 1  # the pipeline keeps other masks visible in `sequence`
            per_mask = []
            for m, position in enumerate(positions):
                predictions = []
                for token in top_k_indices(probs[m], top_k):
                    filled = ids.copy()
                    filled[position] = token
                    predictions.append(
                        {
                            "score": float(probs[m, token]),
                            "token": int(token),
                            "token_str": tok.decode([int(token)], skip_special_tokens=False),
                            "sequence": tok.decode(filled.tolist(), skip_special_tokens=single),
                        }
                    )
                per_mask.append(predictions)
            results.append(per_mask)
        return results

    def _post_classify(
        self, out: dict, mask: np.ndarray, encs: list, texts: list, top_k: int | None, function_to_apply: str | None
    ) -> list:
        logits = out["logits"]  # (B, num_labels)
        function = function_to_apply or classification_function(self.info.problem_type, logits.shape[-1])
        return [label_scores(row, self.info.id2label, function, top_k) for row in logits]

    def _post_tag(
        self,
        out: dict,
        mask: np.ndarray,
        encs: list[Encoding],
        texts: list[str],
        aggregation: str,
        ignore_labels: Sequence[str],
    ) -> list:
        tok = self.tokenizer
        results = []
        for b, (enc, text) in enumerate(zip(encs, texts, strict=True)):
            scores = softmax(out["logits"][b, : len(enc.ids)].astype(np.float32))  # (S, labels)
            flags = subword_flags(
                text, enc.tokens, enc.offsets, [i == tok.unk_id for i in enc.ids], tok.continuing_subword_prefix
            )
            results.append(
                entities(
                    text,
                    scores,
                    enc.offsets,
                    enc.special_tokens_mask,
                    flags,
                    self.info.id2label,
                    aggregation,
                    tuple(ignore_labels),
                )
            )
        return results

    def _post_answer(
        self,
        out: dict,
        mask: np.ndarray,
        encs: list[Encoding],
        pairs: list[tuple[str, str]],
        top_k: int,
        max_answer_len: int,
        align_to_words: bool,
    ) -> list:
        cls_id = self.tokenizer.cls_id if self.tokenizer.cls_id is not None else self.info.cls_token_id
        results = []
        for b, (enc, (_, context)) in enumerate(zip(encs, pairs, strict=True)):
            n = len(enc.ids)
            allowed = np.array([s == 1 for s in enc.sequence_ids])
            ids = np.asarray(enc.ids)
            cls = np.flatnonzero((ids == cls_id) & np.asarray(enc.special_tokens_mask, dtype=bool))
            spans = best_spans(
                out["start_logits"][b, :n],
                out["end_logits"][b, :n],
                allowed,
                int(cls[0]) if len(cls) else None,
                top_k,
                max_answer_len,
            )
            answers = []
            for s, e, score in spans:
                start, end = _char_span(enc, s, e, align_to_words)
                answers.append({"score": score, "start": start, "end": end, "answer": context[start:end]})
            results.append(answers[0] if top_k == 1 and answers else answers)
        return results

    # ── helpers ─────────────────────────────────────────────────────────────────────────────────

    def _one_or_many(self, texts: str | Sequence[str], task: str, **options: object) -> list:
        if isinstance(texts, str):
            return self.predict([texts], task=task, **options)[0]
        return self.predict(list(texts), task=task, **options)

    def resolve_task(self, name: str | None) -> Task:
        """The folder's task; `name` must be it (or feature-extraction, on a graph with hidden states)."""
        try:
            spec = TASKS[self.task] if name is None else find_task(name)
        except KeyError:
            raise UserError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}.") from None
        hidden = "last_hidden_state" in self._session.output_names
        if spec.name == self.task or (spec.name == "feature-extraction" and hidden):
            return spec
        raise TaskMismatchError(
            f"{self.info.folder} holds a {self.task} model, so {spec.method}() ({spec.name}) does not apply: "
            f"use {TASKS[self.task].method}(), or export the checkpoint with --task {spec.name}."
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
        """Whether the graph takes mask_positions (fill-mask logits for those rows only)."""
        return "mask_positions" in self._session.optional_inputs

    def _token_budget(self) -> int:
        """Padded tokens per batch: batch_tokens, lowered so that the per-token outputs of one batch
        (those shaped (batch, sequence, ...), e.g. fill-mask logits without mask_positions) stay
        within OUTPUT_BYTES."""
        selected = self.decodes_masked_rows_only
        per_token = sum(
            math.prod(d if isinstance(d, int) else 1 for d in shape[2:])
            for name, shape in self._session.output_shapes.items()
            if len(shape) >= 2 and not isinstance(shape[1], int) and not (selected and name == "logits")
        )
        return max(1, min(self.batch_tokens, OUTPUT_BYTES // (4 * per_token))) if per_token else self.batch_tokens

    def describe(self) -> dict:
        """What the folder holds, for `mbedge info` (JSON-friendly)."""
        m = self.info.manifest
        tok = self.tokenizer
        validation = m.get("validation") or {}
        return {
            "folder": str(self.info.folder),
            "task": self.task,
            "precision": self.info.precision,
            "model_file": self.info.model_path.name,
            "model_bytes": _model_bytes(self.info.model_path),
            "inputs": list(self._session.input_names),
            "outputs": {name: self._session.output_shapes[name] for name in self._session.output_names},
            "config": dict(m.get("config") or {}),
            "labels": list(self.info.id2label),
            "problem_type": self.info.problem_type,
            "tokenizer": None
            if tok is None
            else {"file": "tokenizer.json", "vocab_size": tok.max_id + 1, "mask_token": tok.mask_token},
            "max_length": self.max_length,
            "validation": {k: validation[k] for k in ("status", "max_abs_diff", "atol", "reason") if k in validation},
            "source": (m.get("source") or {}).get("checkpoint"),
            "sentence": m.get("sentence"),
        }


def load(
    model_dir: str | Path,
    threads: int | None = None,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    truncation: str = "truncate",
    max_length: int | None = None,
    max_padding: float | None = DEFAULT_MAX_PADDING,
    spinning: bool = False,
    file: str | None = None,
) -> Model:
    """Load a folder written by `mbedge export` or `mbedge quantize` for CPU inference, or an ONNX
    folder made elsewhere (optimum, Hub `onnx/`; see runtime/foreign.py), whose model file `file` picks.

    threads: intra-op threads (None or 0: one per physical core). batch_tokens / batch_rows: the
    padded tokens and rows of one batch. truncation: "truncate" (warn) or "error" for inputs longer
    than max_length (default and upper bound: the model's max_position_embeddings). max_padding:
    the share of a batch's tokens that may be padding (default 0.0: only equal lengths share a
    batch, which keeps attention on its mask-free path; None or 1: any, within batch_tokens). spinning: let idle
    ORT threads spin (faster back-to-back calls, one busy core each in between).
    """
    if truncation not in TRUNCATION:
        raise UserError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}.")
    if batch_tokens < 1 or batch_rows < 1:
        raise UserError(f"batch_tokens and batch_rows must be >= 1, got {batch_tokens} and {batch_rows}.")
    if max_padding is not None and not 0.0 <= max_padding <= 1.0:
        raise UserError(f"max_padding must be between 0 and 1, got {max_padding}.")
    folder = Path(model_dir).expanduser()
    if is_foreign(folder):  # no manifest: the graph's outputs and config.json say what it is
        model_file = pick_file(folder, file)
        session = Session(folder / model_file, threads=threads, spinning=spinning)
        info = folder_info(folder, foreign_manifest(folder, model_file, session.output_shapes))
    else:
        if file is not None:
            raise UserError(f"file= picks a model file in a folder without manifest.json; {folder} has one.")
        info = read_folder(folder)
        session = None
    embedder = Embedder.from_manifest(info.folder, info.manifest.get("sentence"))
    limit = min(info.max_position_embeddings, embedder.max_seq_length or info.max_position_embeddings)
    if max_length is not None:
        if not 3 <= max_length:
            raise UserError(f"max_length must be at least 3 tokens, got {max_length}.")
        limit = min(limit, max_length)
    tokenizer = TextTokenizer.from_folder(info.folder, limit, info.manifest.get("tokenizer_files") or ())
    if tokenizer is not None and tokenizer.max_id >= info.vocab_size:
        raise ModelFolderError(
            f"{info.folder}'s tokenizer.json has token ids up to {tokenizer.max_id}, but the model's "
            f"vocabulary has {info.vocab_size}: the tokenizer is not this model's."
        )
    session = session or Session(info.model_path, threads=threads, spinning=spinning)
    info = _check_graph(info, session)
    return Model(
        info,
        session,
        tokenizer,
        batch_tokens=batch_tokens,
        batch_rows=batch_rows,
        truncation=truncation,
        max_padding=max_padding,
        embedder=embedder,
    )


def _check_graph(info: ModelInfo, session: Session) -> ModelInfo:
    """The graph's outputs are the task's, with the sizes config.json gives; fills id2label if absent."""
    spec = TASKS[info.task]
    where = info.model_path
    if set(session.output_names) != set(info.outputs) or not set(spec.outputs) <= set(session.output_names):
        raise ModelFolderError(
            f"{where} has outputs {session.output_names}, but the manifest says {list(info.outputs)} "
            f"and a {info.task} model needs {list(spec.outputs)}: the folder is inconsistent; export it again."
        )
    last = session.output_shapes[spec.outputs[0]][-1]
    expected = {
        "feature-extraction": info.hidden_size,
        "fill-mask": info.vocab_size,
        "text-classification": len(info.id2label) or None,
        "token-classification": len(info.id2label) or None,
        "question-answering": None,
    }[info.task]
    if isinstance(last, int) and expected is not None and last != expected:
        raise ModelFolderError(
            f"{where}'s {spec.outputs[0]} output has size {last}, but config.json implies {expected} "
            "(hidden_size, vocab_size or id2label): the folder is inconsistent; export it again."
        )
    if spec.labelled and not info.id2label:
        if not isinstance(last, int):
            raise ModelFolderError(
                f"{info.folder / 'config.json'} has no id2label, and the graph does not say how many labels."
            )
        info = dataclasses.replace(info, id2label=tuple(f"LABEL_{i}" for i in range(last)))
    return info


def _as_pair(x: object) -> tuple[object, object]:
    if isinstance(x, dict):
        return x.get("question"), x.get("context")
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    return x, None  # reported as a missing context


def _check_mask(enc: Encoding | InputError, index: int, tok: TextTokenizer) -> Encoding | InputError:
    if isinstance(enc, InputError) or (tok.mask_id is not None and tok.mask_id in enc.ids):
        return enc
    if tok.mask_id is None:
        return MissingMaskError("cannot be filled: the tokenizer has no mask token.", index)
    if any(tok.mask_id in o.ids for o in enc.overflowing):
        return MissingMaskError(
            f"has its {tok.mask_token} token after the first {tok.max_length} tokens, which is all the model "
            "reads: it was truncated away.",
            index,
        )
    return MissingMaskError(f"has no {tok.mask_token} token to fill.", index)


def _char_span(enc: Encoding, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character offsets in the context of tokens s..e; widened to whole words like the HF pipeline."""
    if align_to_words:
        try:
            start_word, end_word = enc.token_to_word(s), enc.token_to_word(e)
            return enc.word_to_chars(start_word, 1)[0], enc.word_to_chars(end_word, 1)[1]
        except Exception:  # noqa: BLE001 - tokenizers without word ids: keep token offsets
            pass
    return enc.offsets[s][0], enc.offsets[e][1]


def _model_bytes(model_path: Path) -> int:
    """The model file's size, with its external-data file when it has one."""
    data = [model_path.with_name(model_path.name + suffix) for suffix in ("_data", ".data")]
    return model_path.stat().st_size + sum(d.stat().st_size for d in data if d.is_file())
