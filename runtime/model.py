"""Model: a loaded model folder and its tasks, as plain Python and numpy results.

    load(folder) (loader.py): read_folder ─ open_session ─ check_graph ─ TextTokenizer ─ Model(info, session, ...)
    task method (this module) ─ Predictor.predict (predictor.py): encode ─ run_encoded

Each text method takes one text (and returns one result) or a list (and returns a list), nested as
Hugging Face's pipelines nest them; `embed` returns a (dim,) vector for a text and an (n, dim) array
for a list, as sentence-transformers does, and `embed_iter` streams one vector per text. Every input
is checked before the model runs (embed: each batch_size chunk before it runs): a bad one raises
its InputError. Nothing in a Model changes after loading, so threads may share one.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.errors import InputError, TruncationWarning
from modernbert_edge.runtime.options import DEFAULT_BATCH_SIZE, Aggregation, Pooling, positive
from modernbert_edge.runtime.postprocess import pipeline_nesting
from modernbert_edge.runtime.predictor import Predictor, as_list
from modernbert_edge.runtime.progress import Progress
from modernbert_edge.runtime.results import Answer, Entity, FillMaskPrediction, LabelScore, RankedDocument
from modernbert_edge.runtime.tasks import TASKS


class Model(Predictor):
    """A model folder loaded for CPU inference; create it with `load`."""

    def __repr__(self) -> str:
        return f"Model({str(self.info.folder)!r}, task={self.task!r}, precision={self.info.precision!r})"

    # ── tasks: options left at None take the task's defaults (tasks.TASKS) ──────────────────────────

    def embed(
        self,
        texts: str | Iterable[str],
        pooling: Pooling | str | None = None,
        normalize: bool | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embeddings as the model's sentence-transformers modules make them (its pooling, Dense, Normalize
        and default prompt); a plain checkpoint's: mean over the tokens, L2-normalized. float32.

        One text gives one vector, shape (dim,); a list (or any iterable) of texts gives (n, dim), as
        sentence-transformers' encode does. pooling ("mean", "cls", ...) and normalize override the
        model's; prompt_name picks one of its prompts, prompt gives the text itself; dim keeps the first
        dim values (Matryoshka), renormalized. batch_size texts are tokenized, sorted by length and run
        together at a time (in batches under the model's token budget); show_progress draws a progress
        line on stderr. For inputs larger than memory, use embed_iter.
        """
        if isinstance(texts, str):
            return self.embed([texts], pooling, normalize, prompt_name=prompt_name, prompt=prompt, dim=dim)[0]
        items = as_list(texts, "embed")
        total = len(items)
        rows = list(
            self.embed_iter(
                items,
                pooling,
                normalize,
                prompt_name=prompt_name,
                prompt=prompt,
                dim=dim,
                batch_size=batch_size,
                show_progress=show_progress,
                total=total,
            )
        )
        width = self.info.sentence.width(dim, self.info.hidden_size)
        return np.stack(rows) if rows else np.zeros((0, width), np.float32)  # (n, dim)

    def embed_iter(
        self,
        texts: Iterable[str],
        pooling: Pooling | str | None = None,
        normalize: bool | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress: bool = False,
        total: int | None = None,
    ) -> Iterator[np.ndarray]:
        """One (dim,) float32 vector per text, in input order, reading `texts` lazily: batch_size texts at
        a time are read, run and yielded, so a generator over a corpus larger than memory works.
        Options as embed; total (when known) sizes the progress bar. The options are checked before
        the first text is read."""
        if isinstance(texts, (str, bytes, bytearray, dict)) or not isinstance(texts, Iterable):
            raise InputError(f"of embed_iter() must be an iterable of texts (got {type(texts).__name__}).")
        positive("batch_size", batch_size)
        given = _given(pooling=pooling, normalize=normalize, prompt_name=prompt_name, prompt=prompt, dim=dim)
        spec = self.resolve_task("feature-extraction")
        spec.with_options(given)  # a bad option fails before any input is read
        return self._embed_chunks(iter(texts), given, batch_size, Progress(total, bool(show_progress)))

    def _embed_chunks(
        self, texts: Iterator[str], given: dict, batch_size: int, progress: Progress
    ) -> Iterator[np.ndarray]:
        """embed_iter's work: chunk by chunk; errors and warnings name the input's index in the whole input."""
        offset = 0
        try:
            while chunk := list(itertools.islice(texts, batch_size)):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        rows = self.predict(chunk, task="feature-extraction", on_batch=progress.update, **given)
                    except InputError as e:
                        raise (type(e)(e.reason, e.index + offset) if e.index is not None else e) from None
                for w in caught:
                    m = w.message
                    if isinstance(m, TruncationWarning):
                        m = TruncationWarning(m.reason, m.index + offset, m.tokens, m.dropped)
                    warnings.warn(m, stacklevel=3)
                offset += len(chunk)
                yield from rows
        finally:
            progress.close()

    def similarity(self, a: str | Sequence[str] | np.ndarray, b: str | Sequence[str] | np.ndarray) -> np.ndarray:
        """(n, m) scores between two sets of texts or embeddings, with the model's similarity function (cosine,
        dot, euclidean or manhattan, as its sentence-transformers config names it; cosine otherwise).

        Each side is a text, a list of texts (embedded with the model's defaults), a (dim,) vector or an
        (n, dim) array; one text or vector counts as one row."""
        a, b = self._vectors(a, "a"), self._vectors(b, "b")
        if a.shape[1] != b.shape[1]:
            raise UserError(f"similarity() got vectors of {a.shape[1]} and {b.shape[1]} values: they must match.")
        return self.info.sentence.similarity(a, b)

    def _vectors(self, x: object, side: str) -> np.ndarray:
        """One side of similarity() as (n, dim) float32: texts are embedded, arrays checked."""
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x)):
            return np.atleast_2d(self.embed(x))
        try:
            v = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError):
            v = None
        if v is None or v.ndim not in (1, 2) or v.size == 0 or not np.isfinite(v).all():
            raise UserError(
                f"similarity()'s {side} must be a text, a list of texts, or a (dim,) or (n, dim) array of finite "
                f"numbers (got {type(x).__name__}{f' of shape {list(v.shape)}' if v is not None else ''})."
            )
        return np.atleast_2d(v)

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> list[RankedDocument]:
        """[{index, score}] of the documents, best first (top_k of them): a one-label cross-encoder's score
        of each (query, document) pair, through its activation (sigmoid unless its config names one)."""
        if isinstance(documents, (str, bytes, bytearray, dict)) or not isinstance(documents, Iterable):
            raise InputError(f"of rerank() must be a query and a list of documents (got {type(documents).__name__}).")
        return self.predict([(query, list(documents))], task="rerank", **_given(top_k=top_k))[0]

    def fill_mask(
        self, texts: str | Sequence[str], top_k: int | None = None
    ) -> list[FillMaskPrediction] | list[list[FillMaskPrediction]] | list[list[list[FillMaskPrediction]]]:
        """The top_k (5) predictions [{score, token, token_str, sequence}] for the mask token of a text, as
        Hugging Face's fill-mask pipeline nests them: a text with one mask gives a list of predictions
        (each with the filled-in `sequence`); a text with several masks gives one such list per mask
        (without `sequence`). A list of texts gives a list of those, one per text."""
        if isinstance(texts, str):
            return pipeline_nesting(self.predict([texts], task="fill-mask", **_given(top_k=top_k))[0])
        results = self.predict(as_list(texts, "fill_mask"), task="fill-mask", **_given(top_k=top_k))
        return [pipeline_nesting(r) for r in results]

    def classify(self, texts: str | Sequence[str], top_k: int | None = 1) -> list[LabelScore] | list[list[LabelScore]]:
        """Labels with their scores (softmax; sigmoid for multi-label models), as Hugging Face's
        text-classification pipeline gives them: by default the top label, {label, score}, per text (one
        text: [{label, score}]); top_k=None: every label, sorted by score, per text; top_k=k: the best k
        (a list per text, one text: that list)."""
        if isinstance(texts, str):
            return self.predict([texts], task="text-classification", top_k=top_k)[0]
        results = self.predict(as_list(texts, "classify"), task="text-classification", top_k=top_k)
        return [r[0] for r in results] if top_k == 1 else results

    def tag(
        self,
        texts: str | Sequence[str],
        aggregation: Aggregation | str | None = None,
        ignore_labels: Sequence[str] | None = None,
    ) -> list[Entity] | list[list[Entity]]:
        """Entities [{entity_group, score, word, start, end}] as character spans of each text.

        aggregation as in Hugging Face's token-classification pipeline: "none" (one per token, key
        "entity"), "simple" (the default: group adjacent tokens), "first" / "average" / "max" (one label
        per word). Entities labelled one of ignore_labels (("O",)) are left out.
        """
        return self._one_or_many(texts, "token-classification", aggregation=aggregation, ignore_labels=ignore_labels)

    def answer(
        self,
        question: str | Sequence[str],
        context: str | Sequence[str],
        top_k: int | None = None,
        max_answer_len: int | None = None,
        align_to_words: bool | None = None,
    ) -> Answer | list[Answer] | list[list[Answer]]:
        """The best span of the context, {answer, score, start, end} (a list of top_k when top_k > 1).

        A question and a context give one result; lists (or one question for a list of contexts)
        give a list. Character offsets index the context, widened to whole words unless
        align_to_words=False; answers are at most max_answer_len (15) tokens long.
        """
        single = isinstance(question, str) and isinstance(context, str)
        questions = as_list(question, "answer", "question")
        contexts = as_list(context, "answer", "context")
        if len(questions) == 1 and len(contexts) > 1:
            questions = questions * len(contexts)
        if len(questions) != len(contexts):
            raise UserError(f"answer() got {len(questions)} questions for {len(contexts)} contexts.")
        results = self.predict(
            list(zip(questions, contexts, strict=True)),
            task="question-answering",
            **_given(top_k=top_k, max_answer_len=max_answer_len, align_to_words=align_to_words),
        )
        return results[0] if single else results

    def _one_or_many(self, texts: str | Sequence[str], task: str, **options: object) -> list:
        if isinstance(texts, str):
            return self.predict([texts], task=task, **_given(**options))[0]
        return self.predict(as_list(texts, TASKS[task].method), task=task, **_given(**options))


def _given(**options: object) -> dict[str, object]:
    """The options a caller set (None: the task's default)."""
    return {key: value for key, value in options.items() if value is not None}
