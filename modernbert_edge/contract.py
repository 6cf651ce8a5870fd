"""What a model folder's graph promises (DESIGN.md, "Contract"), in one place.

    inputs    input_ids, attention_mask               int64 (batch, sequence)
    outputs   per task (HEADS)                        float, dims named below
    marked    metadata_props MARKED_ROWS = MARK       attention_mask == MARK: a row the head decodes alone
    task      of a transformers architecture          by its class-name suffix (task_of_architecture)

export writes graphs to it; runtime, quantize, serve and scaleout read folders by it. Plain Python,
no imports: the device-side install reads it, and every layer can.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
INPUTS = (INPUT_IDS, ATTENTION_MASK)  # int64 (batch, sequence), in the graph's order
INPUT_DIMS = ("batch", "sequence")

# Graph metadata (metadata_props) of a graph whose per-token head can decode marked rows only:
# attention_mask == MARK marks those rows (and counts as 1 everywhere else); see export/heads.py.
MARKED_ROWS = "modernbert_edge.marked_rows"
MARK = 2

LAST_HIDDEN_STATE, LOGITS, START_LOGITS, END_LOGITS = "last_hidden_state", "logits", "start_logits", "end_logits"


@dataclass(frozen=True)
class Head:
    """One task's graph outputs and the transformers classes whose checkpoints carry its head."""

    task: str  # as Hugging Face pipelines name it, and as the manifest records it
    outputs: tuple[tuple[str, tuple[str, ...]], ...]  # (name, dims) of each graph output, in order
    suffix: str  # the architecture's class-name suffix: ModernBert{suffix}, and any *{suffix} elsewhere

    @property
    def architecture(self) -> str:
        """The ModernBERT class of this head, e.g. ModernBertForMaskedLM."""
        return f"ModernBert{self.suffix}"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.outputs)


HEADS: dict[str, Head] = {
    h.task: h
    for h in (
        Head("feature-extraction", ((LAST_HIDDEN_STATE, ("batch", "sequence", "hidden")),), "Model"),
        Head("fill-mask", ((LOGITS, ("batch", "sequence", "vocab")),), "ForMaskedLM"),
        Head("text-classification", ((LOGITS, ("batch", "labels")),), "ForSequenceClassification"),
        Head("token-classification", ((LOGITS, ("batch", "sequence", "labels")),), "ForTokenClassification"),
        Head(
            "question-answering",
            ((START_LOGITS, ("batch", "sequence")), (END_LOGITS, ("batch", "sequence"))),
            "ForQuestionAnswering",
        ),
    )
}
TASKS = tuple(HEADS)


def feeds(input_ids: object, attention_mask: object) -> dict[str, object]:
    """The graph's inputs by name."""
    return {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}


def task_of_architecture(architecture: str) -> str | None:
    """The task whose head a transformers class carries, by its name's suffix (ModernBertForMaskedLM
    and BertForMaskedLM: fill-mask; ModernBertModel: feature-extraction); None for any other."""
    heads = sorted(HEADS.values(), key=lambda h: -len(h.suffix))  # "For…" suffixes before "Model"
    return next((h.task for h in heads if architecture.endswith(h.suffix)), None)
