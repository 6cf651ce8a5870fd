"""The routes of `mbedge serve` and the path every model route shares.

Every model route reads the body (size-limited), checks its fields by hand (422 names the field),
picks the model (the body's "model", else the first folder whose task fits the route), counts the
inputs' tokens (400 empty, 413 too many or too long), queues one Job on that model's Batcher (429
when its queue is full) and waits for its rows, or for the client to go away (the job is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modernbert_edge import __version__
from modernbert_edge.errors import UserError
from modernbert_edge.runtime import InputError, InputTooLongError
from modernbert_edge.serve import defaults
from modernbert_edge.serve.batcher import Batcher, QueueFull
from modernbert_edge.serve.requests import ApiError, get, positive, texts

log = logging.getLogger("mbedge.serve")


@dataclass
class Settings:
    """What `mbedge serve` was given (besides the models)."""

    batch_tokens: int = defaults.BATCH_TOKENS  # every default: serve/defaults.py
    max_wait_ms: float = defaults.MAX_WAIT_MS
    max_queue_tokens: int = defaults.MAX_QUEUE_TOKENS
    max_client_batch_size: int = defaults.MAX_CLIENT_BATCH_SIZE
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    api_key: str | None = None
    max_top_k: int = defaults.MAX_TOP_K  # top_k of /answer, /fill_mask and /predict
    max_masks: int = defaults.MAX_MASKS  # mask tokens in one /fill_mask input
    body_timeout: float = defaults.BODY_TIMEOUT  # seconds a request's body may take to arrive (408 beyond)


@dataclass
class State:
    models: dict  # name -> Model
    settings: Settings
    batchers: dict = field(default_factory=dict)
    ready: bool = False
    failed: str | None = None  # why warm-up failed (then /health answers 503 with it)


FOLDER_TASK = {"rerank": "text-classification", "tokenize": "feature-extraction"}  # the model a route picks


# ── the shared path of every model route ──────────────────────────────────────────────────────────


def pick_model(state: State, name: str | None, task: str) -> tuple[str, object]:
    """The named model, else the first whose folder task is `task`, else the first model."""
    if name is not None:
        if name not in state.models:
            raise ApiError(404, f"no model is named {name!r}; this server has {', '.join(state.models)}.")
        return name, state.models[name]
    for n, m in state.models.items():
        if m.task == task:
            return n, m
    return next(iter(state.models.items()))


def mask_cost(model: object) -> int:
    """Tokens one [MASK] counts as: its decoder row (vocab floats) against a token's hidden state."""
    return max(1, model.info.vocab_size // max(1, model.info.hidden_size))


def count_tokens(
    model: object, inputs: list, pair: bool, truncate: bool, field_name: str, max_masks: int | None = None
) -> int:
    """The tokens the inputs take (cut ones: max_length); 400 for an empty input, 413 for a long one.

    With max_masks (fill-mask), each mask token counts as mask_cost(model) tokens, and an input
    with more than max_masks of them is 413: a batch's decoder rows stay within its token budget."""
    tok = model.tokenizer
    encoded = tok.encode_pairs(inputs, "error") if pair else tok.encode(inputs, "error")
    total = 0
    for i, e in enumerate(encoded):
        if isinstance(e, InputTooLongError) and truncate:
            e = tok.encode([inputs[i]], "truncate")[0] if max_masks is not None else None
            total += model.max_length
        elif isinstance(e, InputTooLongError):
            raise ApiError(413, f'"{field_name}[{i}]" {e.reason} Send "truncate": true to cut it.')
        elif isinstance(e, InputError):
            raise ApiError(400, f'"{field_name}[{i}]" {e.reason}')
        else:
            total += len(e.ids)
        if max_masks is not None and e is not None and not isinstance(e, InputError) and tok.mask_id is not None:
            masks = e.ids.count(tok.mask_id)
            if masks > max_masks:
                raise ApiError(
                    413, f'"{field_name}[{i}]" has {masks} {tok.mask_token} tokens, more than the {max_masks} '
                    "one input may have."
                )  # fmt: skip
            total += masks * (mask_cost(model) - 1)
    return total


async def run_task(
    request: Request,
    state: State,
    model_name: str | None,
    task: str,
    inputs: list,
    options: dict,
    truncate: bool,
    field_name: str,
    pair: bool = False,
    counted: list | None = None,
) -> tuple[str, list, int]:
    """(model name, one result per input, tokens) through the model's batcher; `counted` are the
    inputs whose tokens are admitted (default: `inputs`; rerank: one (query, document) pair each)."""
    name, model = pick_model(state, model_name, FOLDER_TASK.get(task, task))
    if task != "tokenize":
        try:
            model.resolve_task(task)
        except UserError as e:
            raise ApiError(400, str(e)) from None
    if model.tokenizer is None:
        raise ApiError(400, f"model {name!r} has no tokenizer.json, so it cannot take text.")
    masks = state.settings.max_masks if task == "fill-mask" else None
    tokens = await asyncio.to_thread(
        count_tokens, model, inputs if counted is None else counted, pair, truncate, field_name, masks
    )
    batcher: Batcher = state.batchers[name]
    if tokens > batcher.max_queue_tokens:
        raise ApiError(
            413, f"the request has {tokens} tokens, more than the server's queue holds ({batcher.max_queue_tokens})."
        )
    try:
        job = batcher.submit(task, inputs, options, tokens)
    except QueueFull as e:
        raise ApiError(429, f"model {name!r} is overloaded: {e}.", {"Retry-After": str(e.retry_after)}) from None
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not job.future.done():  # the client went away
        batcher.cancel(job)
        raise ApiError(499, "the client closed the connection.")
    try:
        rows = job.future.result()
    except UserError as e:
        raise ApiError(400, str(e)) from None
    for i, row in enumerate(rows):
        if isinstance(row, InputError):
            raise ApiError(400, f'"{field_name}[{i}]" {row.reason}')
        if not _finite(row):
            raise ApiError(
                422, f'"{field_name}[{i}]" gave a non-finite result (NaN or infinity), which JSON cannot hold.'
            )
    return name, rows, tokens


def _finite(value: object) -> bool:
    """Whether a result holds only finite numbers (strict JSON has no NaN or infinity)."""
    if isinstance(value, np.ndarray):
        return not np.issubdtype(value.dtype, np.floating) or bool(np.isfinite(value).all())
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ── routes ────────────────────────────────────────────────────────────────────────────────────────


async def embed(request: Request, state: State, body: dict) -> Response:
    inputs, _ = texts(body, "inputs", state.settings.max_client_batch_size)
    normalize = get(body, "normalize", bool, True)
    truncate = get(body, "truncate", bool, False)
    options = {"normalize": normalize, "prompt_name": get(body, "prompt_name", str)}
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "feature-extraction", inputs, options, truncate, "inputs"
    )
    return JSONResponse(np.stack(rows).tolist())


async def openai_embeddings(request: Request, state: State, body: dict) -> Response:
    inputs, _ = texts(body, "input", state.settings.max_client_batch_size)
    model_name = get(body, "model", str)
    dimensions = positive(body, "dimensions", None)
    encoding = get(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise ApiError(422, f'"encoding_format" must be "float" or "base64", got {encoding!r}.')
    name, rows, tokens = await run_task(
        request, state, model_name, "feature-extraction", inputs, {"normalize": True}, False, "input"
    )
    vectors = np.stack(rows)  # (n, hidden), L2-normalized
    if dimensions is not None:
        if dimensions > vectors.shape[1]:
            raise ApiError(400, f'"dimensions" is {dimensions}, more than the model\'s {vectors.shape[1]}.')
        vectors = vectors[:, :dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64" else v.tolist(),
        }
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})


def _one_or_many(rows: list, single: bool) -> object:
    return rows[0] if single else rows


async def predict(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    if get(body, "raw_scores", bool, False):
        raise ApiError(400, '"raw_scores" is not supported: scores are softmax (or sigmoid) as the model defines.')
    options = {"top_k": positive(body, "top_k", None, state.settings.max_top_k)}
    truncate = get(body, "truncate", bool, False)
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "text-classification", inputs, options, truncate, "inputs"
    )
    return JSONResponse(_one_or_many(rows, single))


async def fill_mask(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    options = {"top_k": positive(body, "top_k", 5, state.settings.max_top_k)}
    truncate = get(body, "truncate", bool, False)
    model_name = get(body, "model", str)
    _, rows, _ = await run_task(request, state, model_name, "fill-mask", inputs, options, truncate, "inputs")
    return JSONResponse(_one_or_many(rows, single))


async def tag(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    aggregation = get(body, "aggregation", str, "simple")
    ignore = get(body, "ignore_labels", list, ["O"])
    if not all(isinstance(x, str) for x in ignore):
        raise ApiError(422, '"ignore_labels" must be a list of strings.')
    options = {"aggregation": aggregation, "ignore_labels": tuple(ignore)}
    truncate = get(body, "truncate", bool, False)
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "token-classification", inputs, options, truncate, "inputs"
    )
    return JSONResponse(_one_or_many(rows, single))


async def answer(request: Request, state: State, body: dict) -> Response:
    limit = state.settings.max_client_batch_size
    questions, one_q = texts(body, "question", limit)
    contexts, one_c = texts(body, "context", limit)
    if len(questions) == 1 and len(contexts) > 1:
        questions = questions * len(contexts)
    if len(questions) != len(contexts):
        raise ApiError(400, f'"question" has {len(questions)} texts for {len(contexts)} in "context".')
    for name, items in (("question", questions), ("context", contexts)):
        for i, text in enumerate(items):
            if not text.strip():
                raise ApiError(400, f'"{name}[{i}]" is empty.')
    model_name = get(body, "model", str)
    _, model = pick_model(state, model_name, "question-answering")
    options = {
        "top_k": positive(body, "top_k", 1, state.settings.max_top_k),
        # a span is at most the whole input: the span search looks at tokens × max_answer_len candidates
        "max_answer_len": positive(body, "max_answer_len", 15, model.max_length),
        "align_to_words": get(body, "align_to_words", bool, True),
    }
    truncate = get(body, "truncate", bool, False)
    pairs = list(zip(questions, contexts, strict=True))
    _, rows, _ = await run_task(
        request, state, model_name, "question-answering", pairs, options, truncate, "context", pair=True
    )
    return JSONResponse(_one_or_many(rows, one_q and one_c))


async def rerank(request: Request, state: State, body: dict) -> Response:
    query = get(body, "query", str, required=True)
    docs, _ = texts(body, "texts", state.settings.max_client_batch_size)
    return_text = get(body, "return_text", bool, False)
    truncate = get(body, "truncate", bool, False)
    if not query.strip():
        raise ApiError(400, '"query" is empty.')
    for i, doc in enumerate(docs):
        if not doc.strip():
            raise ApiError(400, f'"texts[{i}]" is empty.')
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "rerank", [(query, docs)], {}, truncate, "texts", pair=True,
        counted=[(query, d) for d in docs],
    )  # fmt: skip
    out = [{"index": r["index"], "score": r["score"]} for r in rows[0]]
    if return_text:
        for r in out:
            r["text"] = docs[r["index"]]
    return JSONResponse(out)


async def tokenize(request: Request, state: State, body: dict) -> Response:
    inputs, _ = texts(body, "inputs", state.settings.max_client_batch_size)
    specials = get(body, "add_special_tokens", bool, True)
    options = {"add_special_tokens": specials}
    # cut to the model's length, as before: counted (and queued, 429 / 413) like any other route's inputs
    _, rows, _ = await run_task(request, state, get(body, "model", str), "tokenize", inputs, options, True, "inputs")
    return JSONResponse(rows)


def tokenize_rows(model: object, inputs: list, add_special_tokens: bool) -> list:
    """/tokenize's answer for each input (on the model thread): [{id, text, special, start, stop}]."""
    out: list = []
    for text, enc in zip(inputs, model.tokenizer.encode(inputs, "truncate"), strict=True):
        if isinstance(enc, InputError):
            out.append(enc)
            continue
        out.append(
            [
                {"id": t, "text": text[s:e] if not sp else token, "special": bool(sp), "start": s, "stop": e}
                for t, token, (s, e), sp in zip(enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True)
                if add_special_tokens or not sp
            ]
        )
    return out


def model_info(name: str, model: object, settings: Settings) -> dict:
    info = model.info
    kind = {"feature-extraction": {"embedding": {"pooling": "+".join(info.sentence.pooling)}}}.get(
        model.task, {"classifier": {"id2label": dict(enumerate(info.id2label))}} if info.id2label else {model.task: {}}
    )
    return {
        "model_id": name,
        "model_dir": str(info.folder),
        "task": model.task,
        "model_dtype": info.precision,
        "model_type": kind,
        "max_input_length": model.max_length,
        "max_batch_tokens": settings.batch_tokens,
        "max_client_batch_size": settings.max_client_batch_size,
        "max_queue_tokens": settings.max_queue_tokens,
        "max_wait_ms": settings.max_wait_ms,
        "max_top_k": settings.max_top_k,
        "max_masks": settings.max_masks,
        "version": __version__,
    }


POST_ROUTES: dict[str, Callable[[Request, State, dict], Awaitable[Response]]] = {
    "/embed": embed,
    "/v1/embeddings": openai_embeddings,
    "/predict": predict,
    "/rerank": rerank,
    "/fill_mask": fill_mask,
    "/tag": tag,
    "/answer": answer,
    "/tokenize": tokenize,
}
