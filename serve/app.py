"""The ASGI app of `mbedge serve` (starlette): the routes of routes.py, metrics, access log, lifespan.

The models are loaded and warmed up before /health says ready; SIGTERM stops accepting, finishes
what is in flight and exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import warnings
from collections.abc import Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modernbert_edge.errors import UserError
from modernbert_edge.runtime import TruncationWarning
from modernbert_edge.serve.batcher import Batcher, BatchStats
from modernbert_edge.serve.requests import ApiError, error_response, read_json
from modernbert_edge.serve.routes import POST_ROUTES, Settings, State, model_info, pick_model

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
        for name, model in models.items():
            text = f"warm up {model.tokenizer.mask_token or ''}".strip()
            try:
                model.predict([(text, text)] if model.task == "question-answering" else [text], errors="raise")
            except Exception as e:
                raise RuntimeError(f"model {name!r} ({model.info.folder}) could not run: {e}") from e

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
            try:
                await asyncio.to_thread(warm_up)
            except Exception as e:  # a graph that loads but cannot run: say so on /health and in the log
                state.failed = f"warm-up failed: {e}".splitlines()[0][:500]
                log.error("%s", state.failed)
                return
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
            if settings.api_key is not None and path != "/health" and not authorized(request, settings.api_key):
                raise ApiError(401, "this server needs an Authorization: Bearer <api key> header.")
            if path == "/health":
                if state.failed:
                    return JSONResponse({"status": "failed", "error": state.failed}, 503)
                ok = state.ready
                return JSONResponse({"status": "ok" if ok else "loading"}, 200 if ok else 503)
            if path == "/metrics":
                return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
            if path == "/info":
                name, model = pick_model(state, request.query_params.get("model"), "feature-extraction")
                info = model_info(name, model, settings)
                info["models"] = [model_info(n, m, settings) for n, m in models.items()]
                return JSONResponse(info)
            if state.failed:
                raise ApiError(503, state.failed)
            if not state.ready:
                raise ApiError(503, "the models are still warming up.", {"Retry-After": "1"})
            body = await read_json(request, settings.max_body_bytes, settings.body_timeout)
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
        except asyncio.CancelledError:  # --shutdown-timeout passed: one access-log line, not a traceback
            status[0] = 503
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
