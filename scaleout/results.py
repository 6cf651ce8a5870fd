"""One call of the runtime on a list of values, as Arrow columns: the part every worker shares.

    run_values(model, values, task, options) ─ Model.encode (once: the token count is the encodings')
        ─ Model.run_encoded(errors="return") (the runtime sorts by length and batches under its token
        budget) ─ result columns + `error` + token count

Columns per task: feature-extraction `embedding` fixed_size_list<float32>[hidden]; text-classification
`label`, `score` (and `labels` list<struct<label, score>> when top_k is given); token-classification
`entities` list<struct<entity_group | entity, score, [index,] word, start, end>>. A row whose value
is not a usable text has nulls there and its reason in `error`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modernbert_edge.contract import TASKS as CONTRACT_TASKS
from modernbert_edge.errors import UserError

# The contract's tasks whose result is one row of columns per text (result_type below); fill-mask's
# per-mask predictions and question-answering's (question, context) pairs have no such columns yet.
TASKS = tuple(t for t in CONTRACT_TASKS if t not in ("fill-mask", "question-answering"))


@dataclass
class Stats:
    """What one worker did, summed over its calls."""

    rows: int = 0
    failed: int = 0
    tokens: int = 0  # tokens the model ran (after truncation), special tokens included
    truncated: int = 0
    model_s: float = 0.0  # in Model.predict
    other_s: float = 0.0  # reading, counting tokens, building Arrow columns, writing


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UserError(f"batch runs {', '.join(TASKS)} models, not {task}.")
    return task


def result_type(task: str, hidden: int, options: dict):  # noqa: ANN201 - dict[str, pyarrow.DataType]
    """The Arrow type of each result column (without `error`)."""
    import pyarrow as pa

    if task == "feature-extraction":
        return {"embedding": pa.list_(pa.float32(), hidden)}
    if task == "text-classification":
        types = {"label": pa.string(), "score": pa.float32()}
        if options.get("top_k") is not None:
            types["labels"] = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))
        return types
    if options.get("aggregation", "simple") == "none":
        fields = [("entity", pa.string()), ("score", pa.float32()), ("index", pa.int64())]
    else:
        fields = [("entity_group", pa.string()), ("score", pa.float32())]
    fields += [("word", pa.string()), ("start", pa.int64()), ("end", pa.int64())]
    return {"entities": pa.list_(pa.struct(fields))}


def run_values(model, values: Sequence[object], task: str, options: dict, stats: Stats) -> dict:  # noqa: ANN001
    """{column: pyarrow.Array} for the values, in order, with `error` (null where the row ran)."""
    import pyarrow as pa

    from modernbert_edge.runtime.errors import InputError, TruncationWarning

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # truncation is counted here, not printed per row
        encoded = model.encode(list(values), task, **options)
        results = model.run_encoded(encoded, errors="return")
    t1 = time.perf_counter()
    errors = [f"text {r.reason}" if isinstance(r, InputError) else None for r in results]
    ok = [i for i, e in enumerate(errors) if e is None]
    tokens = sum(encoded.tokens)  # what ran: the encodings, tokenized once
    truncated = sum(1 for w in caught if isinstance(w.message, TruncationWarning))
    types = result_type(task, model.info.hidden_size, options)
    mask = pa.array([e is not None for e in errors])
    kept = [None if e else r for r, e in zip(results, errors, strict=True)]  # error rows: null
    if task == "feature-extraction":
        flat = np.zeros((len(results), model.info.hidden_size), np.float32)  # (n, hidden); error rows stay 0
        for i in ok:
            flat[i] = results[i]
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), type=types["embedding"], mask=mask)
        columns = {"embedding": embedding}
    elif task == "text-classification":
        top = [r[0] if r else None for r in kept]
        columns = {
            "label": pa.array([t["label"] if t else None for t in top], types["label"]),
            "score": pa.array([t["score"] if t else None for t in top], types["score"]),
        }
        if "labels" in types:
            columns["labels"] = pa.array(kept, types["labels"])
    else:
        columns = {"entities": pa.array(kept, types["entities"])}
    columns["error"] = pa.array(errors, pa.string())
    stats.rows += len(results)
    stats.failed += len(results) - len(ok)
    stats.tokens += tokens
    stats.truncated += truncated
    stats.model_s += t1 - t0
    stats.other_s += time.perf_counter() - t1
    return columns


def count_tokens(model, texts: list[str]) -> tuple[int, int]:  # noqa: ANN001
    """(tokens the model ran, rows truncated), from the model's own tokenizer."""
    from modernbert_edge.runtime.errors import TruncationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encodings = model.tokenizer.encode(texts, model.truncation)
    tokens = sum(len(e.ids) for e in encodings if hasattr(e, "ids"))
    return tokens, sum(1 for w in caught if isinstance(w.message, TruncationWarning))
