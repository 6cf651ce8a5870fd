"""The numpy side of post-processing: softmax, pooling, label scores, entity grouping, span search.

Each follows the Hugging Face pipeline that does the same, so results can be compared with theirs:
FillMaskPipeline, TextClassificationPipeline, TokenClassificationPipeline (aggregation
none/simple/first/average/max) and the question-answering span search (softmax over context tokens
and [CLS], best start×end with end - start < max_answer_len).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modernbert_edge.runtime.options import AGGREGATIONS, POOLINGS  # noqa: F401 - re-exported

# sentence-transformers Pooling modes (several in one model are concatenated)
SPAN_BLOCK = 1 << 20  # span scores best_spans holds at once


# ── numerics ────────────────────────────────────────────────────────────────────────────────────


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """(B, S, D) hidden states and (B, S) mask (right-padded) -> (B, D), as sentence-transformers' Pooling
    does it. "cls" is the first token the mask keeps (0, or the first after a prompt left out of pooling)."""
    h = hidden.astype(np.float32)
    m = mask.astype(np.float32)[..., None]  # (B, S, 1)
    if mode == "cls":
        return h[np.arange(h.shape[0]), np.argmax(mask > 0, axis=1)]
    if mode == "max":
        return np.where(m > 0, h, -np.inf).max(axis=1)
    if mode == "lasttoken":
        last = np.maximum(mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1), 0)  # each row's last kept token
        return h[np.arange(h.shape[0]), last]
    if mode == "weightedmean":
        m = m * np.arange(1, h.shape[1] + 1, dtype=np.float32)[None, :, None]
    total = (h * m).sum(axis=1)
    count = np.maximum(m.sum(axis=1), 1e-9)
    return total / (np.sqrt(count) if mode == "mean_sqrt_len_tokens" else count)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores of a 1-D array, largest first."""
    k = min(k, scores.shape[-1])
    if k == 1:
        return np.array([int(scores.argmax())])  # the first of equal scores, as np.argmax picks it
    idx = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[-1] else np.arange(scores.shape[-1])
    return idx[np.argsort(-scores[idx], kind="stable")]


# ── classification ──────────────────────────────────────────────────────────────────────────────


def classification_function(problem_type: str | None, num_labels: int) -> str:
    """What turns logits into scores, as TextClassificationPipeline chooses it."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


SCORE_FUNCTIONS = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: x}  # logits -> scores


def label_scores(logits: np.ndarray, id2label: Sequence[str], function: str, top_k: int | None) -> list[dict]:
    """(num_labels,) logits -> [{label, score}] sorted by score, the top_k first (all when None)."""
    scores = SCORE_FUNCTIONS[function](logits.astype(np.float32))
    order = top_k_indices(scores, top_k or len(scores))
    return [{"label": id2label[i], "score": float(scores[i])} for i in order]


# ── token classification ────────────────────────────────────────────────────────────────────────


def _tag(label: str) -> tuple[str, str]:
    """('B' | 'I', entity type) of an IOB label; a label without a prefix continues ('I')."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def entities(
    text: str,
    scores: np.ndarray,  # (S, L) probabilities, special tokens included
    offsets: Sequence[tuple[int, int]],
    special: Sequence[int],
    is_subword: Sequence[bool],
    id2label: Sequence[str],
    aggregation: str = "simple",
    ignore_labels: Sequence[str] = ("O",),
) -> list[dict]:
    """Entities as character spans of `text`, grouped like TokenClassificationPipeline."""
    tokens = [i for i in range(len(scores)) if not special[i]]
    if aggregation in ("none", "simple"):
        items = [_token_entity(text, scores[i], offsets[i], id2label, index=i) for i in tokens]
    else:  # first / average / max: one label per word, then group words
        words: list[list[int]] = []
        for i in tokens:
            if words and is_subword[i]:
                words[-1].append(i)
            else:
                words.append([i])
        items = [_word_entity(text, scores, offsets, id2label, w, aggregation) for w in words]
    if aggregation != "none":
        items = _group(text, items)
        key = "entity_group"
    else:
        key = "entity"
    return [e for e in items if e[key] not in ignore_labels]


def _token_entity(text: str, s: np.ndarray, span: tuple[int, int], id2label: Sequence[str], index: int) -> dict:
    best = int(s.argmax())
    start, end = span
    return {
        "entity": id2label[best],
        "score": float(s[best]),
        "index": index,
        "word": text[start:end],
        "start": start,
        "end": end,
    }


def _word_entity(
    text: str,
    scores: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    id2label: Sequence[str],
    word: list[int],
    aggregation: str,
) -> dict:
    if aggregation == "first":
        s = scores[word[0]]
    elif aggregation == "max":
        s = scores[max(word, key=lambda i: scores[i].max())]
    elif aggregation == "average":
        s = np.nanmean(scores[word], axis=0)
    else:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    best = int(s.argmax())
    start, end = offsets[word[0]][0], offsets[word[-1]][1]
    return {"entity": id2label[best], "score": float(s[best]), "word": text[start:end], "start": start, "end": end}


def _group(text: str, items: list[dict]) -> list[dict]:
    """Adjacent entities of one type (continuing with I- or no prefix) become one entity group."""
    groups: list[list[dict]] = []
    for e in items:
        bi, tag = _tag(e["entity"])
        if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
            groups[-1].append(e)
        else:
            groups.append([e])
    out = []
    for g in groups:
        start, end = g[0]["start"], g[-1]["end"]
        score = float(np.nanmean([e["score"] for e in g]))
        label = g[0]["entity"].split("-", 1)[-1]  # B-PER -> PER, as the pipeline does
        out.append({"entity_group": label, "score": score, "word": text[start:end], "start": start, "end": end})
    return out


def subword_flags(
    text: str,
    tokens: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    unknown: Sequence[bool],
    continuing_subword_prefix: str | None,
) -> list[bool]:
    """Whether each token continues the previous word, as TokenClassificationPipeline decides it: exact
    for tokenizers with a continuing-subword prefix (WordPiece '##'), else "no space before it";
    an unknown token always starts a word."""
    flags = []
    for token, (start, end), unk in zip(tokens, offsets, unknown, strict=True):
        if unk:
            flags.append(False)
        elif continuing_subword_prefix:
            flags.append(len(token) != end - start)
        else:
            flags.append(start > 0 and " " not in text[start - 1 : start + 1])
    return flags


# ── question answering ──────────────────────────────────────────────────────────────────────────


def best_spans(
    start_logits: np.ndarray,  # (S,)
    end_logits: np.ndarray,  # (S,)
    allowed: np.ndarray,  # (S,) bool: context tokens
    cls_index: int | None,
    top_k: int = 1,
    max_answer_len: int = 15,
) -> list[tuple[int, int, float]]:
    """The top_k (start token, end token, score) spans inside `allowed`, end - start < max_answer_len.

    Scores are start × end probabilities, each a softmax over the context tokens and [CLS] (so they
    match the Hugging Face question-answering pipeline); [CLS] itself is never an answer. The search
    looks at S × max_answer_len candidates, not S × S.
    """
    in_softmax = allowed.copy()
    if cls_index is not None:
        in_softmax[cls_index] = True
    p_start = _masked_softmax(start_logits, in_softmax)
    p_end = _masked_softmax(end_logits, in_softmax)
    s = len(p_start)
    width = max(1, min(max_answer_len, s))
    block = max(1, SPAN_BLOCK // width)  # start tokens per step: memory stays O(SPAN_BLOCK + top_k)
    scores, flats = [np.zeros(0, np.float64)], [np.zeros(0, np.int64)]
    for first in range(0, s, block):
        starts = np.arange(first, min(first + block, s))
        # band[i, d] = score of span (i, i + d); spans leaving the context score -1.
        ends = starts[:, None] + np.arange(width)[None, :]  # (R, W)
        valid = (ends < s) & allowed[starts][:, None] & allowed[np.minimum(ends, s - 1)]
        band = np.where(valid, p_start[starts][:, None] * p_end[np.minimum(ends, s - 1)], -1.0).ravel()
        keep = top_k_indices(band, top_k)
        keep = keep[band[keep] >= 0]
        scores.append(band[keep].astype(np.float64))
        flats.append(first * width + keep.astype(np.int64))  # i * W + d over the whole (S, W) band
    score, flat = np.concatenate(scores), np.concatenate(flats)
    order = np.lexsort((flat, -score))[:top_k]  # best first; equal scores: the earlier span, as argmax picks
    return [(int(flat[i] // width), int(flat[i] // width + flat[i] % width), float(score[i])) for i in order]


def _masked_softmax(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    x = np.where(keep, logits.astype(np.float32), -np.inf)
    p = np.exp(x - x.max())
    return p / p.sum()
