"""The shapes of the task methods' results, as TypedDicts (the keys Hugging Face pipelines use).

Pure typing: importing this module loads nothing else, so `modernbert_edge.FillMaskPrediction` and the
others cost nothing until the runtime runs.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class FillMaskPrediction(TypedDict):
    """One prediction for one mask token (fill_mask)."""

    score: float
    token: int
    token_str: str
    sequence: NotRequired[str]  # the filled-in text; only when the text has one mask, as the pipeline gives it


class LabelScore(TypedDict):
    """A label and its probability (classify)."""

    label: str
    score: float


class Entity(TypedDict):
    """An entity of a text as character offsets (tag); aggregation "none" gives `entity` and `index`
    (the token's position) instead of `entity_group`."""

    entity_group: NotRequired[str]
    entity: NotRequired[str]
    index: NotRequired[int]
    score: float
    word: str
    start: int
    end: int


class Answer(TypedDict):
    """A span of the context (answer)."""

    score: float
    start: int
    end: int
    answer: str


class RankedDocument(TypedDict):
    """A document's position in the input and its cross-encoder score (rerank)."""

    index: int
    score: float


__all__ = ["Answer", "Entity", "FillMaskPrediction", "LabelScore", "RankedDocument"]
