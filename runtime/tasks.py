"""The runtime's tasks, one row each: names, options and their defaults, post-processor.

Graph outputs come from the contract (modernbert_edge/contract.py), the folder task's. A new task is a
row here plus its post-processor
(postprocess.py) and, for the API, a Model method that calls `predict` with the row's name.
A row may run on another task's folders (rerank: a text-classification folder with one label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modernbert_edge.contract import HEADS
from modernbert_edge.errors import OptionError
from modernbert_edge.runtime import postprocess
from modernbert_edge.runtime.options import AGGREGATIONS, DEFAULT_AGGREGATION, POOLINGS, check_task_option

if TYPE_CHECKING:
    from modernbert_edge.runtime.folder import ModelInfo

__all__ = ["AGGREGATIONS", "FOLDER_TASKS", "POOLINGS", "TASKS", "Task", "find_task"]


@dataclass(frozen=True)
class Task:
    name: str  # as Hugging Face pipelines name it, and as the manifest records it
    method: str  # the Model method that runs it
    result_key: str  # the key of each result in `mbedge run`'s JSON lines
    aliases: tuple[str, ...]  # other names accepted by `mbedge run --task`
    options: Mapping[str, object] = field(hash=False)  # the post-processor's options and their defaults
    post: Callable[..., list]  # post(Batch, **options) -> one result per row
    head_size: Callable[[ModelInfo], int | None]  # the first output's last axis as config.json implies it
    pair: bool = False  # inputs are (question, context) pairs
    labelled: bool = False  # results name labels from config.id2label
    check: Callable | None = None  # check(encoding, index, tokenizer) -> the encoding or an InputError
    mark: Callable | None = None  # mark(ids, mask, tokenizer, mark) -> the mask with the rows to decode marked
    prepare: Callable | None = None  # prepare(inputs, options, info, tokenizer) -> (inputs, options), before encoding
    folder_task: str | None = None  # the folder task it runs on, when not its own (then head_size must match)
    # An input that stands for several rows (rerank: one (query, document) pair per document):
    expand: Callable | None = None  # expand(input) -> its rows, or the InputError that says why it has none
    gather: Callable | None = None  # gather(the rows' results, **options) -> the input's result
    row_name: str = "row"  # what an error calls one of an expanded input's rows

    @property
    def outputs(self) -> tuple[str, ...]:
        """The graph output names of the folder it runs on (the contract's); the first one's last axis
        is `head_size`."""
        return HEADS[self.folder_task or self.name].output_names

    def with_options(self, given: Mapping[str, object]) -> dict[str, object]:
        """The task's options: its defaults updated with `given` (None keeps the default), checked."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise OptionError(
                f"{self.name} takes no option {', '.join(unknown)} (it takes {', '.join(sorted(self.options))}).",
                *unknown,
                *self.options,
            )
        options = {**self.options, **{k: v for k, v in given.items() if v is not None}}  # None: the default
        return {key: check_task_option(key, value) for key, value in options.items()}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "feature-extraction",
            method="embed",
            result_key="embedding",
            aliases=("embed",),
            # None: as the model's sentence-transformers modules say (plain checkpoints: mean, normalized)
            options={"pooling": None, "normalize": None, "prompt_name": None, "prompt": None, "dim": None},
            post=postprocess.embed,
            head_size=lambda info: info.hidden_size,
            prepare=postprocess.add_prompt,
        ),
        Task(
            "fill-mask",
            method="fill_mask",
            result_key="predictions",
            aliases=("mask",),
            options={"top_k": 5},
            post=postprocess.fill_mask,
            head_size=lambda info: info.vocab_size,
            check=postprocess.check_mask,
            mark=postprocess.mark_masks,
        ),
        Task(
            "text-classification",
            method="classify",
            result_key="labels",
            aliases=("classify",),
            options={"top_k": None},
            post=postprocess.classify,
            head_size=lambda info: len(info.id2label) or None,
            labelled=True,
        ),
        Task(
            "rerank",
            method="rerank",
            result_key="ranking",
            aliases=("cross-encoder",),
            options={"top_k": None},
            post=postprocess.rerank_scores,
            head_size=lambda info: 1,
            pair=True,
            folder_task="text-classification",
            expand=postprocess.rerank_pairs,
            gather=postprocess.ranking,
            row_name="document",
        ),
        Task(
            "token-classification",
            method="tag",
            result_key="entities",
            aliases=("tag", "ner"),
            options={"aggregation": DEFAULT_AGGREGATION, "ignore_labels": ("O",)},
            post=postprocess.tag,
            head_size=lambda info: len(info.id2label) or None,
            labelled=True,
        ),
        Task(
            "question-answering",
            method="answer",
            result_key="answer",
            aliases=("answer", "qa"),
            options={"top_k": 1, "max_answer_len": 15, "align_to_words": True},
            post=postprocess.answer,
            head_size=lambda info: None,
            pair=True,
        ),
    )
}


# The tasks a model folder holds (its manifest names one); the others run on one of these.
FOLDER_TASKS: dict[str, Task] = {name: t for name, t in TASKS.items() if t.folder_task is None}


def find_task(name: str) -> Task:
    """A task by its name or one of its aliases; KeyError when none matches."""
    for task in TASKS.values():
        if name == task.name or name in task.aliases:
            return task
    raise KeyError(name)
