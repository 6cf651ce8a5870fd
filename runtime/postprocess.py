"""Each task's post-processor: one batch's graph outputs -> one plain-Python result per input.

A post-processor is `post(batch, **options) -> list`, the options being its task's (see tasks.py).
Feature extraction also prepares its inputs (`add_prompt`: the model's prompt before each text).
Fill-mask also marks its rows (`mark_masks`: where the graph offers it, it decodes only the
[MASK] rows) and checks its inputs (`check_mask`: the text must keep its mask token). Rerank
expands each input into (query, document) rows (`rerank_pairs`), scores each row, and gathers the
scores into a ranking (`ranking`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Encoding

from modernbert_edge.contract import END_LOGITS, LAST_HIDDEN_STATE, LOGITS, START_LOGITS
from modernbert_edge.runtime.errors import InputError, MissingMaskError
from modernbert_edge.runtime.numerics import (
    SCORE_FUNCTIONS,
    best_spans,
    classification_function,
    entities,
    label_scores,
    softmax,
    subword_flags,
    top_k_indices,
)
from modernbert_edge.runtime.sentence import cross_encoder_function, prompt_tokens

if TYPE_CHECKING:
    from modernbert_edge.runtime.folder import ModelInfo
    from modernbert_edge.runtime.tokenize import TextTokenizer


@dataclass(frozen=True)
class Batch:
    """One batch as a post-processor reads it."""

    outputs: dict[str, np.ndarray]  # graph output name -> array
    ids: np.ndarray  # (B, S) int64, right-padded
    mask: np.ndarray  # (B, S) int64 attention mask
    encodings: list[Encoding]  # one per row
    inputs: list  # the texts (or (question, context) pairs) of the rows
    info: ModelInfo
    tokenizer: TextTokenizer
    # The flat indices b * S + s of the rows the graph decoded, in order (fill-mask: logits (1, M, V) for
    # those M rows), when it decoded marked rows only; None: it decoded every row.
    marked: np.ndarray | None = None


# ── feature extraction ──────────────────────────────────────────────────────────────────────────


def add_prompt(inputs: list, options: dict, info: ModelInfo, tokenizer: TextTokenizer) -> tuple[list, dict]:
    """The texts with the prompt (prompt, else prompt_name's, else the model's default) before each;
    options gain the prompt's length in tokens, which pooling leaves out when the model says so."""
    options = dict(options)
    prefix = info.sentence.prompt(options.pop("prompt_name"), options.pop("prompt"))
    return info.sentence.texts(inputs, prefix), {**options, "prompt_tokens": prompt_tokens(tokenizer, prefix)}


def embed(batch: Batch, pooling: str | None, normalize: bool | None, dim: int | None, prompt_tokens: int) -> list:
    hidden = batch.outputs[LAST_HIDDEN_STATE]  # (B, S, D)
    return list(batch.info.sentence.vectors(hidden, batch.mask, prompt_tokens, pooling, normalize, dim))  # (B, dim)


# ── fill-mask ───────────────────────────────────────────────────────────────────────────────────


def mark_masks(ids: np.ndarray, mask: np.ndarray, tokenizer: TextTokenizer, mark: int) -> np.ndarray:
    """The attention mask with `mark` at the mask tokens: the rows the graph's decoder then runs on."""
    return np.where(ids == tokenizer.mask_id, mark, mask)  # (B, S)


def check_mask(enc: Encoding, index: int, tok: TextTokenizer) -> Encoding | InputError:
    """The encoding, or why it cannot be filled (no mask token, or one truncated away)."""
    if tok.mask_id is not None and tok.mask_id in enc.ids:
        return enc
    if tok.mask_id is None:
        return MissingMaskError("cannot be filled: the tokenizer has no mask token.", index)
    if any(tok.mask_id in o.ids for o in enc.overflowing):
        return MissingMaskError(
            f"has its {tok.mask_token} token after the first {tok.max_length} tokens, which is all the model "
            "reads: it was truncated away.",
            index,
        )
    if enc.overflowing:  # cut (to max_chars, then to max_length) before any mask token
        return MissingMaskError(
            f"has no {tok.mask_token} token within what the model reads (the first {tok.max_length} tokens): "
            "it was truncated away.",
            index,
        )
    return MissingMaskError(f"has no {tok.mask_token} token to fill.", index)


def fill_mask(batch: Batch, top_k: int) -> list:
    tok = batch.tokenizer
    width = batch.ids.shape[1]
    if batch.marked is not None:  # the graph decoded those rows only: (1, M, V)
        flat, logits = batch.marked, batch.outputs[LOGITS][0]
    else:  # (B, S, V)
        flat = np.flatnonzero(batch.ids == tok.mask_id)  # (M,) b * S + s, row-major
        logits = batch.outputs[LOGITS].reshape(-1, batch.outputs[LOGITS].shape[-1])[flat]
    results = []
    for b, enc in enumerate(batch.encodings):
        ids = np.asarray(enc.ids)
        rows = np.flatnonzero(flat // width == b)  # this text's masks (in this batch's part), in order
        positions = flat[rows] % width
        # One mask: each prediction carries the filled text (`sequence`), as the pipeline does. Several:
        # no `sequence` (the whole text per prediction per mask would make the result grow as
        # masks × length); the text and each mask's `token_str` rebuild it.
        single = int(np.count_nonzero(ids == tok.mask_id)) == 1
        per_mask = []
        for m, position in enumerate(positions):
            probs = softmax(logits[rows[m]].astype(np.float32))  # (V,): one mask at a time
            predictions = []
            for token in top_k_indices(probs, top_k):
                prediction = {
                    "score": float(probs[token]),
                    "token": int(token),
                    "token_str": tok.decode([int(token)], skip_special_tokens=False),
                }
                if single:
                    filled = ids.copy()
                    filled[position] = token
                    prediction["sequence"] = tok.decode(filled.tolist(), skip_special_tokens=True)
                predictions.append(prediction)
            per_mask.append(predictions)
        results.append(per_mask)
    return results


def pipeline_nesting(per_mask: list) -> list:
    """A text's fill-mask result as Hugging Face's pipeline nests it: one mask, its predictions; several,
    a list per mask (already nested: unchanged)."""
    return per_mask[0] if len(per_mask) == 1 and isinstance(per_mask[0], list) else per_mask


# ── labels ──────────────────────────────────────────────────────────────────────────────────────


def classify(batch: Batch, top_k: int | None) -> list:
    logits = batch.outputs[LOGITS]  # (B, num_labels)
    function = classification_function(batch.info.problem_type, logits.shape[-1])
    return [label_scores(row, batch.info.id2label, function, top_k) for row in logits]


def rerank_pairs(x: object) -> list[tuple[object, object]] | InputError:
    """A rerank input, {"query", "documents"} or (query, documents), as one (query, document) row each."""
    if isinstance(x, dict):
        query, documents = x.get("query"), x.get("documents")
    elif isinstance(x, (tuple, list)) and len(x) == 2:
        query, documents = x
    else:
        query, documents = x, None
    if not isinstance(documents, (list, tuple)):
        return InputError('needs a "query" and a list of "documents" to rank.')
    return [(query, d) for d in documents]


def rerank_scores(batch: Batch, top_k: int | None) -> list:
    """Each (query, document) row's score: the cross-encoder's one logit through its activation."""
    function = cross_encoder_function(batch.info.activation, 1)
    scores = SCORE_FUNCTIONS[function](batch.outputs[LOGITS][:, :1].astype(np.float32))  # (B, 1)
    return [float(s) for s in scores[:, 0]]


def ranking(scores: list[float], top_k: int | None) -> list[dict]:
    """[{index, score}] of the documents, best first, top_k of them (all when None)."""
    s = np.asarray(scores, dtype=np.float64)
    order = top_k_indices(s, top_k or len(s)) if len(s) else []
    return [{"index": int(i), "score": float(s[i])} for i in order]


def tag(batch: Batch, aggregation: str, ignore_labels: Sequence[str]) -> list:
    tok = batch.tokenizer
    results = []
    for b, (enc, text) in enumerate(zip(batch.encodings, batch.inputs, strict=True)):
        scores = softmax(batch.outputs[LOGITS][b, : len(enc.ids)].astype(np.float32))  # (S, labels)
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
                batch.info.id2label,
                aggregation,
                tuple(ignore_labels),
            )
        )
    return results


# ── question answering ──────────────────────────────────────────────────────────────────────────


def answer(batch: Batch, top_k: int, max_answer_len: int, align_to_words: bool) -> list:
    """The top_k answers per (question, context), as the Hugging Face pipeline gives them (transformers
    4.53+): spans whose text is the same (ignoring case; widening to whole words makes many) are one
    answer, at the first one's offsets, with their scores summed, among the best top_k * 2 + 10 spans
    when aligning to words (top_k otherwise): where those repeat a few texts, fewer than top_k remain."""
    cls_id = batch.tokenizer.cls_id if batch.tokenizer.cls_id is not None else batch.info.cls_token_id
    candidates = top_k * 2 + 10 if align_to_words else top_k
    results = []
    for b, (enc, (_, context)) in enumerate(zip(batch.encodings, batch.inputs, strict=True)):
        n = len(enc.ids)
        allowed = np.array([s == 1 for s in enc.sequence_ids])
        ids = np.asarray(enc.ids)
        cls = np.flatnonzero((ids == cls_id) & np.asarray(enc.special_tokens_mask, dtype=bool))
        spans = best_spans(
            batch.outputs[START_LOGITS][b, :n],
            batch.outputs[END_LOGITS][b, :n],
            allowed,
            int(cls[0]) if len(cls) else None,
            candidates,
            max_answer_len,
        )
        by_text: dict[str, dict] = {}
        for s, e, score in spans:
            start, end = _char_span(enc, s, e, align_to_words)
            text = context[start:end]
            if (same := by_text.get(text.lower())) is not None:
                same["score"] += score
            else:
                by_text[text.lower()] = {"score": score, "start": start, "end": end, "answer": text}
        answers = sorted(by_text.values(), key=lambda a: -a["score"])[:top_k]  # stable: ties keep span order
        results.append(answers[0] if top_k == 1 and answers else answers)
    return results


def _char_span(enc: Encoding, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character offsets in the context of tokens s..e; widened to whole words like the HF pipeline."""
    if align_to_words:
        try:
            start_word, end_word = enc.token_to_word(s), enc.token_to_word(e)
            return enc.word_to_chars(start_word, 1)[0], enc.word_to_chars(end_word, 1)[1]
        except Exception:  # tokenizers without word ids: keep token offsets
            pass
    return enc.offsets[s][0], enc.offsets[e][1]
