"""The routes of `mbedge serve` and the path every model route shares.

Every model route reads the body (size-limited), refuses a field it does not take (ENDPOINTS: 422
naming it), checks its fields by hand (422 names the field), picks the model (the body's "model",
else the first folder whose task fits the route), encodes the inputs once and counts their tokens
(400 empty, 413 too many or too long), queues the encodings as one Job on that model's Batcher (429
when its queue is full) and waits for its rows, or for the client to go away (the job is dropped).

Both TEI's and the Hugging Face Inference API's bodies are taken: `InferenceClient` sends task
options in a "parameters" object (and then gets the pipeline's shapes: a list per input from
/predict), and POST / runs the route of the model's task, as TEI routes it (`root`).
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
from modernbert_edge.runtime.numerics import classification_function
from modernbert_edge.serve import defaults
from modernbert_edge.serve.batcher import Batcher, QueueFull
from modernbert_edge.serve.requests import (
    ApiError,
    encoding_format,
    get,
    no_raw_scores,
    parameters,
    positive,
    predict_inputs,
    texts,
    texts_or_ids,
    truncation,
    unknown,
)

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


# The folder task a route's default model has (rerank: a one-label text-classification model is
# looked for first; /tokenize: the first embedder, else the first model).
FOLDER_TASK = {"rerank": "text-classification", "tokenize": "feature-extraction"}


# ── the shared path of every model route ──────────────────────────────────────────────────────────


def pick_model(state: State, name: str | None, task: str) -> tuple[str, object]:
    """The named model; else the first whose folder task is `task`; else the first that runs `task`
    (rerank: a one-label classifier); else the first whose folder task is the route's; else the first."""
    if name is not None:
        if name not in state.models:
            raise ApiError(404, f"no model is named {name!r}; this server has {', '.join(state.models)}.")
        return name, state.models[name]
    models = list(state.models.items())
    for n, m in models:
        if m.task == task:
            return n, m
    for n, m in models:
        if task != "tokenize" and _runs(m, task):
            return n, m
    return next(((n, m) for n, m in models if m.task == FOLDER_TASK.get(task, task)), models[0])


def _runs(model: object, task: str) -> bool:
    try:
        model.resolve_task(task)
    except UserError:
        return False
    return True


def mask_cost(model: object) -> int:
    """Tokens one [MASK] counts as: its decoder row (vocab floats) against a token's hidden state."""
    return max(1, model.info.vocab_size // max(1, model.info.hidden_size))


def admit(
    model: object,
    task: str,
    inputs: list,
    options: dict,
    truncate: bool,
    field_name: str | list[str],
    max_masks: int,
    ids: bool = False,
) -> tuple[object, int]:
    """(the inputs encoded once, as the batcher will run them; their tokens). 400 for an empty or
    unusable input, 413 for one longer than the model reads (unless truncate), for more than
    max_masks mask tokens in a fill-mask input; each mask token counts as mask_cost(model) tokens,
    so a batch's decoder rows stay within its token budget. Row i is `field_name[i]` (a list: its i-th name)."""
    truncation = "truncate" if truncate else "error"
    dim = options.get("dim")
    if dim is not None and dim > (width := model.info.sentence.dimension or model.info.hidden_size):
        raise ApiError(400, f'"dimensions" is {dim}, more than the model\'s {width}.')
    try:
        if task == "tokenize":
            encoded = model.tokenizer.encode(inputs, "truncate")  # cut to the model's length, as before
        elif ids:
            encoded = model.encode_ids(inputs, truncation, **options)
        else:
            encoded = model.encode(inputs, task, truncation, **options)
    except UserError as e:  # an option the task refuses (a prompt the model does not have, ...)
        raise ApiError(400, str(e)) from None
    rows = encoded if task == "tokenize" else encoded.encodings
    tok = model.tokenizer
    total = 0
    for i, e in enumerate(rows):
        where = field_name[i] if isinstance(field_name, list) else f"{field_name}[{i}]"
        if isinstance(e, InputTooLongError):
            hint = "" if truncate or "leaves no room" in e.reason else ' Send "truncate": true to cut it.'
            raise ApiError(413, f'"{where}" {e.reason}{hint}')
        if isinstance(e, InputError):  # token ids that are not this model's: the request's fault as sent
            raise ApiError(422 if ids else 400, f'"{where}" {e.reason}')
        total += len(e.ids)
        if task == "fill-mask" and tok.mask_id is not None:
            masks = e.ids.count(tok.mask_id)
            if masks > max_masks:
                raise ApiError(
                    413, f'"{where}" has {masks} {tok.mask_token} tokens, more than the {max_masks} '
                    "one input may have."
                )  # fmt: skip
            total += masks * (mask_cost(model) - 1)
    return (list(zip(inputs, encoded, strict=True)) if task == "tokenize" else encoded), total


async def run_task(
    request: Request,
    state: State,
    model_name: str | None,
    task: str,
    inputs: list,
    options: dict,
    truncate: bool,
    field_name: str | list[str],
    ids: bool = False,
) -> tuple[str, list, int]:
    """(model name, one result per input, tokens) through the model's batcher: the inputs are
    encoded and counted once (`admit`), and the encodings are what the batcher runs."""
    name, model = pick_model(state, model_name, task)
    if task != "tokenize":
        try:
            model.resolve_task(task)
        except UserError as e:
            raise ApiError(400, str(e)) from None
    if model.tokenizer is None and not ids:
        raise ApiError(400, f"model {name!r} has no tokenizer.json, so it cannot take text.")
    work, tokens = await asyncio.to_thread(
        admit, model, task, inputs, options, truncate, field_name, state.settings.max_masks, ids
    )
    batcher: Batcher = state.batchers[name]
    if tokens > batcher.max_queue_tokens:
        raise ApiError(
            413, f"the request has {tokens} tokens, more than the server's queue holds ({batcher.max_queue_tokens})."
        )
    try:
        job = batcher.submit(task, work, options if task == "tokenize" else work.options, tokens)
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
        where = field_name[i] if isinstance(field_name, list) else f"{field_name}[{i}]"
        if isinstance(row, InputError):
            raise ApiError(400, f'"{where}" {row.reason}')
        if not _finite(row):
            raise ApiError(422, f'"{where}" gave a non-finite result (NaN or infinity), which JSON cannot hold.')
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
    inputs, ids = texts_or_ids(body, "inputs", state.settings.max_client_batch_size)
    encoding_format(body, ("float",))
    options = {
        "normalize": get(body, "normalize", bool, True),
        "prompt_name": get(body, "prompt_name", str),
        "dim": positive(body, "dimensions", None),
    }
    model_name = get(body, "model", str)
    _, rows, _ = await run_task(
        request, state, model_name, "feature-extraction", inputs, options, truncation(body), "inputs", ids=ids
    )
    return JSONResponse(np.stack(rows).tolist())


async def openai_embeddings(request: Request, state: State, body: dict) -> Response:
    inputs, ids = texts_or_ids(body, "input", state.settings.max_client_batch_size)
    get(body, "user", str)
    encoding = encoding_format(body, ("float", "base64"))
    options = {"normalize": True, "dim": positive(body, "dimensions", None)}
    name, rows, tokens = await run_task(
        request, state, get(body, "model", str), "feature-extraction", inputs, options, False, "input", ids=ids
    )
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64" else v.tolist(),
        }
        for i, v in enumerate(rows)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})


async def predict(request: Request, state: State, body: dict) -> Response:
    inputs, single = predict_inputs(body, state.settings.max_client_batch_size)
    hf, envelope = parameters(body, ("function_to_apply", "top_k"))
    no_raw_scores(body)
    top_k = positive(hf, "top_k", None, state.settings.max_top_k) if envelope else None
    top_k = positive(body, "top_k", top_k, state.settings.max_top_k)
    name, model = pick_model(state, get(body, "model", str), "text-classification")
    function = get(hf, "function_to_apply", str)
    if function is not None and model.task == "text-classification":
        own = classification_function(model.info.problem_type, len(model.info.id2label))
        if function != own:
            raise ApiError(422, f'"function_to_apply" must be {own!r} for model {name!r}, got {function!r}.')
    _, rows, _ = await run_task(
        request, state, name, "text-classification", inputs, {"top_k": top_k}, truncation(body), "inputs"
    )
    return JSONResponse(rows[0] if single and not envelope else rows)  # the Inference API: a list per input


def pipeline_nesting(predictions: list) -> list:
    """A fill-mask result as Hugging Face's pipeline nests it: one mask, its predictions; several,
    a list per mask."""
    return predictions[0] if len(predictions) == 1 and isinstance(predictions[0], list) else predictions


async def fill_mask(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    hf, envelope = parameters(body, ("top_k", "targets"))
    if get(hf, "targets", list) is not None:
        raise ApiError(422, '"parameters.targets" is not supported: the predictions are the top_k of the vocabulary.')
    top_k = positive(body, "top_k", positive(hf, "top_k", 5, state.settings.max_top_k), state.settings.max_top_k)
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "fill-mask", inputs, {"top_k": top_k}, truncation(body), "inputs"
    )
    rows = [pipeline_nesting(r) for r in rows]
    return JSONResponse(rows[0] if single else rows)


async def tag(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    hf, _ = parameters(body, ("aggregation_strategy", "ignore_labels", "stride"))
    if get(hf, "stride", int) is not None:
        raise ApiError(422, '"parameters.stride" is not supported: a long text is truncated or refused, not split.')
    aggregation = get(body, "aggregation", str, get(hf, "aggregation_strategy", str, "simple"))
    ignore = get(body, "ignore_labels", list, get(hf, "ignore_labels", list, ["O"]))
    if not all(isinstance(x, str) for x in ignore):
        raise ApiError(422, '"ignore_labels" must be a list of strings.')
    options = {"aggregation": aggregation, "ignore_labels": tuple(ignore)}
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "token-classification", inputs, options, truncation(body), "inputs"
    )
    return JSONResponse(rows[0] if single else rows)


QA_UNSUPPORTED = ("doc_stride", "max_question_len", "max_seq_len")


async def answer(request: Request, state: State, body: dict) -> Response:
    limit = state.settings.max_client_batch_size
    hf, envelope = parameters(
        body, ("top_k", "max_answer_len", "align_to_words", "handle_impossible_answer", *QA_UNSUPPORTED)
    )
    for key in QA_UNSUPPORTED:
        if key in hf and hf[key] is not None:
            raise ApiError(422, f'"parameters.{key}" is not supported: a long context is truncated or refused.')
    if get(hf, "handle_impossible_answer", bool, False):
        raise ApiError(422, '"parameters.handle_impossible_answer" is not supported: every answer is a span.')
    pair = get(body, "inputs", dict)
    if pair is not None:  # the Inference API's {"inputs": {"question", "context"}}
        unknown(pair, ("question", "context"), "inputs.")
        body = {**body, **pair}
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
    opts = body if not envelope else {**hf, **{k: v for k, v in body.items() if v is not None}}
    options = {
        "top_k": positive(opts, "top_k", 1, state.settings.max_top_k),
        # a span is at most the whole input: the span search looks at tokens × max_answer_len candidates
        "max_answer_len": positive(opts, "max_answer_len", 15, model.max_length),
        "align_to_words": get(opts, "align_to_words", bool, True),
    }
    pairs = list(zip(questions, contexts, strict=True))
    _, rows, _ = await run_task(
        request, state, model_name, "question-answering", pairs, options, truncation(body), "context"
    )
    return JSONResponse(rows[0] if one_q and one_c else rows)


async def rerank(request: Request, state: State, body: dict) -> Response:
    query = get(body, "query", str, required=True)
    docs, _ = texts(body, "texts", state.settings.max_client_batch_size)
    return_text = get(body, "return_text", bool, False)
    no_raw_scores(body)
    if not query.strip():
        raise ApiError(400, '"query" is empty.')
    for i, doc in enumerate(docs):
        if not doc.strip():
            raise ApiError(400, f'"texts[{i}]" is empty.')
    _, rows, _ = await run_task(
        request, state, get(body, "model", str), "rerank", [(query, docs)], {}, truncation(body), "texts"
    )
    out = [{"index": r["index"], "score": r["score"]} for r in rows[0]]
    if return_text:
        for r in out:
            r["text"] = docs[r["index"]]
    return JSONResponse(out)


async def similarity(request: Request, state: State, body: dict) -> Response:
    pair = get(body, "inputs", dict, required=True)
    unknown(pair, ("source_sentence", "sentences"), "inputs.")
    source = get(pair, "source_sentence", str, required=True)
    others, _ = texts(pair, "sentences", state.settings.max_client_batch_size - 1)
    hf, _ = parameters(body, ("truncate", "truncation_direction", "prompt_name"))
    options = {"prompt_name": get(hf, "prompt_name", str)}
    names = ["inputs.source_sentence", *(f"inputs.sentences[{i}]" for i in range(len(others)))]
    name, model = pick_model(state, get(body, "model", str), "feature-extraction")
    _, rows, _ = await run_task(
        request, state, name, "feature-extraction", [source, *others], options, truncation(hf), names
    )
    vectors = np.stack(rows)  # (1 + n, dim): the source, then the sentences
    return JSONResponse(model.similarity(vectors[:1], vectors[1:])[0].tolist())


async def tokenize(request: Request, state: State, body: dict) -> Response:
    inputs, _ = texts(body, "inputs", state.settings.max_client_batch_size)
    specials = get(body, "add_special_tokens", bool, True)
    options = {"add_special_tokens": specials}
    # cut to the model's length, as before: counted (and queued, 429 / 413) like any other route's inputs
    _, rows, _ = await run_task(request, state, get(body, "model", str), "tokenize", inputs, options, True, "inputs")
    return JSONResponse(rows)


def tokenize_rows(encoded: list, add_special_tokens: bool) -> list:
    """/tokenize's answer for each (text, Encoding) (on the model thread): [{id, text, special, start, stop}]."""
    return [
        [
            {"id": t, "text": text[s:e] if not sp else token, "special": bool(sp), "start": s, "stop": e}
            for t, token, (s, e), sp in zip(enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True)
            if add_special_tokens or not sp
        ]
        for text, enc in encoded
    ]


# ── the root: the model's own route, as TEI routes POST / by its model type ─────────────────────────

ROOT_ROUTES = {"feature-extraction": "/embed", "text-classification": "/predict", "fill-mask": "/fill_mask",
               "token-classification": "/tag", "question-answering": "/answer"}  # fmt: skip


def root_route(model: object, body: dict) -> str:
    """The route POST / takes for this model and body: an embedder's /embed (/similarity for a
    {"source_sentence", "sentences"} input), a classifier's /predict (/rerank for a {"query", "texts"}
    body), and so on by the folder's task."""
    if model.task == "feature-extraction" and isinstance(body.get("inputs"), dict):
        return "/similarity"
    if model.task == "text-classification" and "query" in body:
        return "/rerank"
    return ROOT_ROUTES.get(model.task, "/embed")


async def root(request: Request, state: State, body: dict) -> Response:
    """POST / (and /invocations, /models/NAME): the route of the named model (the body's "model", or
    NAME in the path), else of the first model."""
    named = request.path_params.get("name")
    given = get(body, "model", str)
    if named is not None and given is not None and given != named:
        raise ApiError(422, f'"model" is {given!r}, but the path names model {named!r}.')
    name, model = pick_model(state, named or given or next(iter(state.models)), "")
    path = root_route(model, body)
    unknown(body, ENDPOINTS[path].fields)
    return await ENDPOINTS[path].handler(request, state, {**body, "model": name})


# ── the table ─────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Endpoint:
    """A POST route: its handler and the body fields it takes (any other is 422, naming it)."""

    handler: Callable[[Request, State, dict], Awaitable[Response]]
    fields: tuple[str, ...]


TRUNCATE = ("truncate", "truncation_direction")
ENDPOINTS: dict[str, Endpoint] = {
    "/embed": Endpoint(
        embed, ("inputs", "model", "normalize", "prompt_name", "dimensions", "encoding_format", *TRUNCATE)
    ),
    "/v1/embeddings": Endpoint(openai_embeddings, ("input", "model", "encoding_format", "dimensions", "user")),
    "/predict": Endpoint(predict, ("inputs", "model", "top_k", "raw_scores", "parameters", *TRUNCATE)),
    "/rerank": Endpoint(rerank, ("query", "texts", "model", "return_text", "raw_scores", *TRUNCATE)),
    "/fill_mask": Endpoint(fill_mask, ("inputs", "model", "top_k", "parameters", *TRUNCATE)),
    "/tag": Endpoint(tag, ("inputs", "model", "aggregation", "ignore_labels", "parameters", *TRUNCATE)),
    "/answer": Endpoint(
        answer,
        (
            "question",
            "context",
            "inputs",
            "model",
            "top_k",
            "max_answer_len",
            "align_to_words",
            "parameters",
            *TRUNCATE,
        ),
    ),  # fmt: skip
    "/similarity": Endpoint(similarity, ("inputs", "model", "parameters")),
    "/tokenize": Endpoint(tokenize, ("inputs", "model", "add_special_tokens")),
}
ENDPOINTS["/embeddings"] = ENDPOINTS["/v1/embeddings"]  # TEI's alias
ROOTS = ("/", "/invocations", "/models/{name}")  # POST: the model's own route (root)


def model_info(name: str, model: object, settings: Settings) -> dict:
    info = model.info
    labels = {"id2label": dict(enumerate(info.id2label))}
    kind = {"feature-extraction": {"embedding": {"pooling": "+".join(info.sentence.pooling)}}}.get(
        model.task,
        {"reranker" if len(info.id2label) == 1 else "classifier": labels} if info.id2label else {model.task: {}},
    )  # TEI's model types: a one-label classifier is a reranker
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


def openai_model(name: str, model: object, created: int) -> dict:
    """An entry of GET /v1/models, in OpenAI's shape."""
    return {"id": name, "object": "model", "created": created, "owned_by": "mbedge", "task": model.task}
