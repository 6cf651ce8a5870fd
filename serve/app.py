"""The ASGI app of `mbedge serve`: routes, request checks, metrics, access log (starlette).

Every model route reads the body (size-limited), checks its fields by hand (422 names the field),
picks the model (the body's "model", else the first folder whose task fits the route), counts the
inputs' tokens (400 empty, 413 too many or too long), queues one Job on that model's Batcher (429
when its queue is full) and waits for its rows, or for the client to go away (the job is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modernbert_edge import __version__
from modernbert_edge.errors import UserError
from modernbert_edge.runtime import InputError, InputTooLongError, TruncationWarning
from modernbert_edge.serve.batcher import Batcher, BatchStats, QueueFull

log = logging.getLogger("mbedge.serve")
access_log = logging.getLogger("mbedge.access")

ERROR_TYPES = {400: "Validation", 401: "Unauthorized", 404: "NotFound", 413: "Validation", 422: "Validation",
               429: "Overloaded", 500: "Backend", 503: "Unhealthy"}  # fmt: skip


@dataclass
class Settings:
    """What `mbedge serve` was given (besides the models)."""

    batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queue_tokens: int = 65536
    max_client_batch_size: int = 64
    max_body_bytes: int = 2 << 20
    api_key: str | None = None


class ApiError(Exception):
    """A request the server refuses: status, one sentence, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class State:
    models: dict  # name -> Model
    settings: Settings
    batchers: dict = field(default_factory=dict)
    ready: bool = False


# ── request checks ────────────────────────────────────────────────────────────────────────────────

_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
               dict: "an object", type(None): "null"}  # fmt: skip


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number"}.get(type(value), _JSON_TYPES.get(type(value), "?"))


def get(body: dict, name: str, kind: type | tuple, default: object = None, required: bool = False) -> object:
    """body[name], checked to be of `kind` (bool is not an int); 422 naming the field otherwise."""
    if name not in body or body[name] is None:
        if required:
            raise ApiError(422, f'the body has no "{name}" field.')
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        wanted = " or ".join(_JSON_TYPES[k] for k in kinds)
        raise ApiError(422, f'"{name}" must be {wanted}, got {_kind(value)}.')
    return value


def texts(body: dict, name: str, limit: int) -> tuple[list[str], bool]:
    """(the texts, whether one string was given) of a string-or-list field."""
    value = get(body, name, (str, list), required=True)
    single = isinstance(value, str)
    items = [value] if single else value
    if not items:
        raise ApiError(400, f'"{name}" is an empty list.')
    if len(items) > limit:
        raise ApiError(413, f'"{name}" has {len(items)} inputs, more than the {limit} one request may send.')
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ApiError(422, f'"{name}[{i}]" must be a string, got {_kind(item)}.')
    return items, single


def positive(body: dict, name: str, default: int | None) -> int | None:
    value = get(body, name, int, default)
    if value is not None and value < 1:
        raise ApiError(422, f'"{name}" must be a positive integer, got {value}.')
    return value


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object: 413 beyond `limit` bytes, 422 when it is not a JSON object."""
    import json

    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"the body has {int(size)} bytes, more than the {limit} this server accepts.")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the body is larger than the {limit} bytes this server accepts.")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(422, f"the body is not valid JSON ({getattr(e, 'msg', e)}).") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, got {_kind(body)}.")
    return body


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


def count_tokens(model: object, inputs: list, pair: bool, truncate: bool, field_name: str) -> int:
    """The tokens the inputs take (cut ones: max_length); 400 for an empty input, 413 for a long one."""
    tok = model.tokenizer
    encoded = tok.encode_pairs(inputs, "error") if pair else tok.encode(inputs, "error")
    total = 0
    for i, e in enumerate(encoded):
        if isinstance(e, InputTooLongError) and truncate:
            total += model.max_length
        elif isinstance(e, InputTooLongError):
            raise ApiError(413, f'"{field_name}[{i}]" {e.reason} Send "truncate": true to cut it.')
        elif isinstance(e, InputError):
            raise ApiError(400, f'"{field_name}[{i}]" {e.reason}')
        else:
            total += len(e.ids)
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
) -> tuple[str, list, int]:
    """(model name, one result per input, tokens) through the model's batcher."""
    name, model = pick_model(state, model_name, task)
    try:
        model.resolve_task(task)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    if model.tokenizer is None:
        raise ApiError(400, f"model {name!r} has no tokenizer.json, so it cannot take text.")
    tokens = await asyncio.to_thread(count_tokens, model, inputs, pair, truncate, field_name)
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
    return name, rows, tokens


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ── routes ────────────────────────────────────────────────────────────────────────────────────────


async def embed(request: Request, state: State, body: dict) -> Response:
    inputs, _ = texts(body, "inputs", state.settings.max_client_batch_size)
    normalize = get(body, "normalize", bool, True)
    truncate = get(body, "truncate", bool, False)
    if get(body, "prompt_name", str) is not None:
        raise ApiError(400, 'this server has no prompts: "prompt_name" must be null.')
    options = {"normalize": normalize}
    _, rows, _ = await run_task(
        request, state, body.get("model"), "feature-extraction", inputs, options, truncate, "inputs"
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
    options = {"top_k": positive(body, "top_k", None)}
    truncate = get(body, "truncate", bool, False)
    _, rows, _ = await run_task(
        request, state, body.get("model"), "text-classification", inputs, options, truncate, "inputs"
    )
    return JSONResponse(_one_or_many(rows, single))


async def fill_mask(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    options = {"top_k": positive(body, "top_k", 5)}
    truncate = get(body, "truncate", bool, False)
    _, rows, _ = await run_task(request, state, body.get("model"), "fill-mask", inputs, options, truncate, "inputs")
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
        request, state, body.get("model"), "token-classification", inputs, options, truncate, "inputs"
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
    options = {
        "top_k": positive(body, "top_k", 1),
        "max_answer_len": positive(body, "max_answer_len", 15),
        "align_to_words": get(body, "align_to_words", bool, True),
    }
    truncate = get(body, "truncate", bool, False)
    pairs = list(zip(questions, contexts, strict=True))
    _, rows, _ = await run_task(
        request, state, body.get("model"), "question-answering", pairs, options, truncate, "context", pair=True
    )
    return JSONResponse(_one_or_many(rows, one_q and one_c))


async def rerank(request: Request, state: State, body: dict) -> Response:
    query = get(body, "query", str, required=True)
    docs, _ = texts(body, "texts", state.settings.max_client_batch_size)
    return_text = get(body, "return_text", bool, False)
    name, model = pick_model(state, get(body, "model", str), "text-classification")
    if not query.strip():
        raise ApiError(400, '"query" is empty.')
    loop = asyncio.get_running_loop()
    try:
        ranked = await loop.run_in_executor(state.batchers[name].executor, model.rerank, query, docs)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    out = [{"index": r["index"], "score": r["score"]} for r in ranked]
    if return_text:
        for r in out:
            r["text"] = docs[r["index"]]
    return JSONResponse(out)


async def tokenize(request: Request, state: State, body: dict) -> Response:
    inputs, single = texts(body, "inputs", state.settings.max_client_batch_size)
    specials = get(body, "add_special_tokens", bool, True)
    name, model = pick_model(state, get(body, "model", str), "feature-extraction")
    if model.tokenizer is None:
        raise ApiError(400, f"model {name!r} has no tokenizer.json.")
    encoded = await asyncio.to_thread(model.tokenizer.encode, inputs, "truncate")
    out = []
    for i, (text, enc) in enumerate(zip(inputs, encoded, strict=True)):
        if isinstance(enc, InputError):
            raise ApiError(400, f'"inputs[{i}]" {enc.reason}')
        out.append(
            [
                {"id": t, "text": text[s:e] if not sp else token, "special": bool(sp), "start": s, "stop": e}
                for t, token, (s, e), sp in zip(enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True)
                if specials or not sp
            ]
        )
    return JSONResponse(_one_or_many(out, False))


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
        "version": __version__,
    }


# ── the app ───────────────────────────────────────────────────────────────────────────────────────

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


def error_response(path: str, status: int, message: str, headers: dict | None = None) -> Response:
    if path.startswith("/v1/"):  # OpenAI's error shape
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers)
    return JSONResponse({"error": message, "error_type": ERROR_TYPES.get(status, "Error")}, status, headers)


def create_app(models: dict, settings: Settings) -> Starlette:
    """The app serving `models` ({name: loaded Model}); they are warmed up before /health says ready."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    state = State(models, settings)
    registry = CollectorRegistry()
    requests = Counter("mbedge_requests", "HTTP requests by route and status.", ["route", "status"], registry=registry)
    latency = Histogram(
        "mbedge_request_duration_seconds", "Request latency by route.", ["route"], registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )  # fmt: skip
    batch_rows = Histogram(
        "mbedge_batch_rows", "Inputs per batch.", ["model"], registry=registry,
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    )  # fmt: skip
    batch_tokens = Histogram(
        "mbedge_batch_tokens", "Tokens per batch.", ["model"], registry=registry,
        buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536),
    )  # fmt: skip
    tokens_total = Counter("mbedge_tokens", "Tokens run through the model.", ["model"], registry=registry)
    tokens_rate = Gauge(
        "mbedge_tokens_per_second", "Tokens per second of the last batch.", ["model"], registry=registry
    )
    queue_tokens = Gauge("mbedge_queue_tokens", "Tokens waiting in the queue.", ["model"], registry=registry)
    queue_jobs = Gauge("mbedge_queue_requests", "Requests waiting in the queue.", ["model"], registry=registry)

    def on_batch(name: str, stats: BatchStats) -> None:
        batch_rows.labels(name).observe(stats.rows)
        batch_tokens.labels(name).observe(stats.tokens)
        tokens_total.labels(name).inc(stats.tokens)
        tokens_rate.labels(name).set(stats.tokens / stats.seconds if stats.seconds else 0.0)

    def warm_up() -> None:
        for model in models.values():
            text = f"warm up {model.tokenizer.mask_token or ''}".strip()
            model.predict([(text, text)] if model.task == "question-answering" else [text], errors="return")

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        warnings.filterwarnings("ignore", category=TruncationWarning)  # truncate: true asked for it
        for name, model in models.items():
            b = Batcher(
                model, name, settings.batch_tokens, settings.max_wait_ms / 1000, settings.max_queue_tokens, on_batch
            )
            b.start()
            state.batchers[name] = b
            queue_tokens.labels(name).set_function(lambda b=b: b.queued_tokens)
            queue_jobs.labels(name).set_function(lambda b=b: len(b.queue))

        async def get_ready() -> None:
            await asyncio.to_thread(warm_up)
            state.ready = True
            log.info("ready: %s", ", ".join(f"{n} ({m.task}, {m.info.folder})" for n, m in models.items()))

        warming = asyncio.ensure_future(get_ready())
        yield
        state.ready = False
        warming.cancel()
        for b in state.batchers.values():
            await b.stop()

    async def dispatch(request: Request) -> Response:
        path = request.url.path
        try:
            if settings.api_key is not None and path != "/health":
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                    raise ApiError(401, "this server needs an Authorization: Bearer <api key> header.")
            if path == "/health":
                ok = state.ready
                return JSONResponse({"status": "ok" if ok else "loading"}, 200 if ok else 503)
            if path == "/metrics":
                return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
            if path == "/info":
                name, model = pick_model(state, request.query_params.get("model"), "feature-extraction")
                info = model_info(name, model, settings)
                info["models"] = [model_info(n, m, settings) for n, m in models.items()]
                return JSONResponse(info)
            if not state.ready:
                raise ApiError(503, "the models are still warming up.", {"Retry-After": "1"})
            body = await read_json(request, settings.max_body_bytes)
            return await POST_ROUTES[path](request, state, body)
        except ApiError as e:
            return error_response(path, e.status, e.message, e.headers)
        except UserError as e:
            return error_response(path, 400, str(e))

    async def timed(scope: dict, receive: Callable, send: Callable) -> None:
        """ASGI wrapper: metrics and one access-log line per request."""
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            path = scope["path"]
            route = path if path in POST_ROUTES or path in ("/health", "/info", "/metrics") else "other"
            seconds = time.perf_counter() - start
            requests.labels(route, str(status[0])).inc()
            latency.labels(route).observe(seconds)
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s:%s "%s %s" %d %.1fms', client[0], client[1], scope["method"], path, status[0], 1000 * seconds
            )

    routes = [Route(p, dispatch, methods=["POST"]) for p in POST_ROUTES]
    routes += [Route(p, dispatch, methods=["GET"]) for p in ("/health", "/info", "/metrics")]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.serve = state
    return timed  # type: ignore[return-value]
