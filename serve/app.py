"""The ASGI app of `mbedge serve` (starlette): the POST routes of routes.py, the GET routes, auth,
the access log and metrics (metrics.py), the lifespan.

The models are loaded and warmed up before /health says ready; SIGTERM stops accepting, finishes
what is in flight and exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modernbert_edge import __version__
from modernbert_edge.errors import UserError
from modernbert_edge.runtime import TruncationWarning
from modernbert_edge.serve.admission import Settings, State, pick_model, refused
from modernbert_edge.serve.batcher import Batcher
from modernbert_edge.serve.metrics import Metrics
from modernbert_edge.serve.requests import ApiError, error_response, read_json, unknown
from modernbert_edge.serve.routes import ENDPOINTS, ROOTS, root, tokenize_rows

log = logging.getLogger("mbedge.serve")
access_log = logging.getLogger("mbedge.access")


def authorized(request: Request, api_key: str) -> bool:
    """Whether the request carries `Authorization: Bearer <api_key>` (RFC 6750: the scheme is
    case-insensitive, one or more spaces, then the token; compared as UTF-8 bytes in constant time)."""
    raw = request.headers.getlist("authorization")
    if len(raw) != 1:
        return False
    scheme, _, token = raw[0].encode("latin-1").partition(b" ")  # header bytes as sent
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.lstrip(b" "), api_key.encode("utf-8"))


GET_ROUTES = ("/", "/health", "/ping", "/info", "/metrics", "/v1/models", "/v1/models/{name}")


def create_app(models: dict, settings: Settings) -> Starlette:
    """The app serving `models` ({name: loaded Model}); they are warmed up before /health says ready."""
    state = State(models, settings)
    metrics = Metrics()
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        warnings.filterwarnings("ignore", category=TruncationWarning)  # truncate: true asked for it
        for name, model in models.items():
            b = Batcher(
                model,
                name,
                settings.batch_tokens,
                settings.max_wait_ms / 1000,
                settings.max_queue_tokens,
                metrics.on_batch,
                {"tokenize": tokenize_rows},
            )
            b.start()
            state.batchers[name] = b
            metrics.watch(b)
        warming = asyncio.ensure_future(get_ready(state))
        yield
        state.ready = False
        warming.cancel()
        for b in state.batchers.values():
            await b.stop()

    async def dispatch(request: Request, route: str) -> Response:
        path = request.url.path
        request.scope["mbedge.route"] = route  # the metrics' route label: the template, not the path
        try:
            public = request.method == "GET" and path in ("/", "/health", "/ping")  # health only; POST / runs a model
            if settings.api_key is not None and not public and not authorized(request, settings.api_key):
                raise ApiError(401, "this server needs an Authorization: Bearer <api key> header.")
            if request.method == "GET":
                return answer_get(request, route, state, metrics, created)
            if state.failed:
                raise ApiError(503, state.failed)
            if not state.ready:
                raise ApiError(503, "the models are still warming up.", {"Retry-After": "1"})
            body = await read_json(request, settings.max_body_bytes, settings.body_timeout)
            if route in ROOTS:
                return await root(request, state, body)
            unknown(body, ENDPOINTS[route].fields)
            return await ENDPOINTS[route].handler(request, state, body)
        except ApiError as e:
            return error_response(path, e.status, e.message, e.headers)
        except UserError as e:
            refusal = refused(e)
            return error_response(path, refusal.status, refusal.message, refusal.headers)

    def endpoint(route: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await dispatch(request, route)

        return handle

    routes = [Route(p, endpoint(p), methods=["POST"]) for p in (*ENDPOINTS, *ROOTS)]
    routes += [Route(p, endpoint(p), methods=["GET"]) for p in GET_ROUTES]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: no_such_route})
    app.state.serve = state
    return access_log_and_metrics(app, metrics)


def answer_get(request: Request, route: str, state: State, metrics: Metrics, created: int) -> Response:
    """The GET routes: health (also TEI's GET / and SageMaker's /ping), metrics, TEI's /info, OpenAI's models."""
    models, settings = state.models, state.settings
    if route in ("/", "/health", "/ping"):
        if state.failed:
            return JSONResponse({"status": "failed", "error": state.failed}, 503)
        return JSONResponse({"status": "ok" if state.ready else "loading"}, 200 if state.ready else 503)
    if route == "/metrics":
        return Response(metrics.render(), media_type=metrics.content_type)
    if route == "/info":
        name, model = pick_model(state, request.query_params.get("model"), "feature-extraction")
        every = [model_info(n, m, settings) for n, m in models.items()]
        return JSONResponse({**model_info(name, model, settings), "models": every})
    if route == "/v1/models":
        return JSONResponse({"object": "list", "data": [openai_model(n, m, created) for n, m in models.items()]})
    name, model = pick_model(state, request.path_params["name"], "")  # /v1/models/{name}
    return JSONResponse(openai_model(name, model, created))


def model_info(name: str, model: object, settings: Settings) -> dict:
    """One model's entry of GET /info, in TEI's shape, with this server's limits."""
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


async def get_ready(state: State) -> None:
    """Warm every model up on a thread; /health says ready after, or says why it failed."""
    try:
        await asyncio.to_thread(warm_up, state.models)
    except Exception as e:  # a graph that loads but cannot run: say so on /health and in the log
        state.failed = f"warm-up failed: {e}".splitlines()[0][:500]
        log.error("%s", state.failed)
        return
    state.ready = True
    log.info("ready: %s", ", ".join(f"{n} ({m.task}, {m.info.folder})" for n, m in state.models.items()))


def warm_up(models: dict) -> None:
    for name, model in models.items():
        text = f"warm up {model.tokenizer.mask_token or ''}".strip()
        try:
            model.predict([(text, text)] if model.task == "question-answering" else [text], errors="raise")
        except Exception as e:
            raise RuntimeError(f"model {name!r} ({model.info.folder}) could not run: {e}") from e


def access_log_and_metrics(app: Starlette, metrics: Metrics) -> Callable:
    """ASGI wrapper: metrics and one access-log line per request."""

    async def timed(scope: dict, receive: Callable, send: Callable) -> None:
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
        except asyncio.CancelledError:  # --shutdown-timeout passed: one access-log line, not a traceback
            status[0] = 503
        finally:
            path = scope["path"]
            route = scope.get("mbedge.route", "other")  # the matched route's template
            seconds = time.perf_counter() - start
            metrics.request(route, status[0], seconds)
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s:%s "%s %s" %d %.1fms', client[0], client[1], scope["method"], path, status[0], 1000 * seconds
            )

    return timed


async def no_such_route(request: Request, exc: HTTPException) -> Response:
    """404 and 405 (Starlette's routing) in the error shape of every other answer."""
    path = request.url.path
    if exc.status_code == 404:
        message = f"there is no route {path}; POST takes {', '.join(ENDPOINTS)}; GET takes {', '.join(GET_ROUTES)}."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{path} does not take {request.method}" + (f"; it takes {allowed}." if allowed else ".")
    else:
        message = str(exc.detail)
    return error_response(path, exc.status_code, message, exc.headers)
