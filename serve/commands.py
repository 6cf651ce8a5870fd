"""CLI commands of the server: `mbedge serve` and `mbedge loadtest` (uvicorn and starlette are
imported inside the command bodies, so `mbedge --help` needs neither)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.cli_options import ENGINE_DEFAULT, EngineOpt, Threads, plain
from modernbert_edge.errors import UserError
from modernbert_edge.runtime.options import HELP
from modernbert_edge.serve import defaults

EXTRA = 'install the serve extra: pip install "modernbert-edge[serve]"'


class Route(StrEnum):
    """serve.loadtest.ROUTES (a test checks they agree)."""

    EMBED = "embed"
    OPENAI = "openai"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def parse_models(specs: list[str]) -> dict[str, Path]:
    """{name: folder} from MODEL_DIR or NAME=DIR arguments; a folder's name is its default name."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or "/" in name:
            name, folder = Path(spec).resolve().name, spec
        if name in models:
            raise UserError(f"two models are named {name!r}: give them different names with NAME=DIR.")
        models[name] = Path(folder)
    return models


def serve_cmd(
    models: Annotated[
        list[str], typer.Argument(metavar="MODEL_DIR", help="Model folders, each MODEL_DIR or NAME=MODEL_DIR.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (1-65535).")] = 8080,
    threads: Threads = None,
    engine: EngineOpt = ENGINE_DEFAULT,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per batch the scheduler forms.")] = defaults.BATCH_TOKENS,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a lone request waits for others to batch with (0-60000).")
    ] = defaults.MAX_WAIT_MS,
    max_queue_tokens: Annotated[
        int, typer.Option(help="Tokens a model's queue holds; beyond it: 429.")
    ] = defaults.MAX_QUEUE_TOKENS,
    max_length: Annotated[
        int | None, typer.Option("--max-length", "--max-input-length", help=HELP["max_length"], show_default=False)
    ] = None,
    max_client_batch_size: Annotated[
        int, typer.Option(help="Inputs one request may send; beyond it: 413.")
    ] = defaults.MAX_CLIENT_BATCH_SIZE,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body; beyond it: 413.")
    ] = defaults.MAX_BODY_BYTES,
    max_top_k: Annotated[
        int, typer.Option(help="Largest top_k of /answer, /fill_mask, /predict (422).")
    ] = defaults.MAX_TOP_K,
    max_masks: Annotated[
        int, typer.Option(help="Mask tokens one /fill_mask input may have (413).")
    ] = defaults.MAX_MASKS,
    max_connections: Annotated[
        int, typer.Option(help="Open connections; beyond it the oldest idle one is closed.")
    ] = 1000,
    limit_concurrency: Annotated[
        int | None,
        typer.Option(
            help="uvicorn's cap on open connections plus requests in progress, beyond it 503 (default: off; "
            "--max-connections bounds connections)."
        ),
    ] = None,
    header_timeout: Annotated[float, typer.Option(help="Seconds a connection may take to send a request head.")] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request's body may take to arrive (408).")
    ] = defaults.BODY_TIMEOUT,
    keep_alive_timeout: Annotated[float, typer.Option(help="Seconds an idle keep-alive connection stays open.")] = 5.0,
    max_header_bytes: Annotated[int, typer.Option(help="Largest request head in bytes (h11; beyond: 400).")] = 16384,
    shutdown_timeout: Annotated[
        float, typer.Option(help="Seconds SIGTERM waits for requests in flight before cancelling them.")
    ] = 10.0,
    api_key: Annotated[
        str | None, typer.Option(envvar="MBEDGE_API_KEY", help="Require 'Authorization: Bearer KEY' (not on /health).")
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn's and the server's log level.")] = LogLevel.INFO,
) -> None:
    """Serve model folders over HTTP (TEI and OpenAI routes), batching requests across clients."""
    try:
        import uvicorn

        from modernbert_edge.serve.admission import Settings
        from modernbert_edge.serve.app import create_app
        from modernbert_edge.serve.connections import ConnectionLimits, guarded_h11
    except ImportError as e:
        raise UserError(f"mbedge serve needs {e.name}: {EXTRA}.") from None
    import modernbert_edge

    counts = {"--batch-tokens": batch_tokens, "--max-queue-tokens": max_queue_tokens,
              "--max-client-batch-size": max_client_batch_size, "--max-body-bytes": max_body_bytes,
              "--max-top-k": max_top_k, "--max-masks": max_masks, "--max-connections": max_connections,
              "--limit-concurrency": limit_concurrency, "--max-header-bytes": max_header_bytes}  # fmt: skip
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}.")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}.")
    if not 0 <= max_wait_ms <= 60000:  # NaN fails too
        raise UserError(f"--max-wait-ms must be between 0 and 60000, got {max_wait_ms}.")
    timeouts = {"--header-timeout": header_timeout, "--body-timeout": body_timeout,
                "--keep-alive-timeout": keep_alive_timeout, "--shutdown-timeout": shutdown_timeout}  # fmt: skip
    for flag, value in timeouts.items():
        if not 0 < value <= 3600:
            raise UserError(f"{flag} must be more than 0 and at most 3600 seconds, got {value}.")
    if api_key is None and os.environ.get("MBEDGE_API_KEY") is not None:
        api_key = os.environ["MBEDGE_API_KEY"]  # click reads an empty variable as unset: it is not
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key (or MBEDGE_API_KEY) is empty: give a key, or unset it to serve without one.")
    log_level = plain(log_level)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sock = _listen(host, port)
    _raise_open_file_limit(max_connections + 256)
    loaded = {}
    for name, folder in parse_models(models).items():
        model = modernbert_edge.load(folder, threads=threads, max_length=max_length, engine=plain(engine))
        if model.tokenizer is None:
            raise UserError(f"{folder} has no tokenizer.json, so it cannot serve text.")
        loaded[name] = model
        logging.getLogger("mbedge.serve").info("loaded %s: %s (%s, %s)", name, folder, model.task, model.info.precision)
    settings = Settings(batch_tokens, max_wait_ms, max_queue_tokens, max_client_batch_size, max_body_bytes, api_key,
                        max_top_k, max_masks, body_timeout)  # fmt: skip
    app = create_app(loaded, settings)
    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on",
        http=guarded_h11(ConnectionLimits(max_connections, header_timeout)),
        timeout_keep_alive=keep_alive_timeout, limit_concurrency=limit_concurrency,
        h11_max_incomplete_event_size=max_header_bytes, timeout_graceful_shutdown=shutdown_timeout,
    )  # fmt: skip
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGTERM (no new connections, in-flight requests finish), then raises
    # the signal again: with this handler in place that ends in exit code 0, not a kill.
    signal.signal(signal.SIGTERM, lambda *_: logging.getLogger("mbedge.serve").info("stopped on SIGTERM"))
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("mbedge.serve").info("listening on http://%s:%d", shown, bound_port)
    server.run(sockets=[sock])
    if not server.started:
        raise UserError(f"the server could not start on {host}:{port}.")


def _listen(host: str, port: int):  # noqa: ANN202 - socket.socket
    """A socket bound to host:port (before the models load): a port in use is one sentence, exit 2."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise UserError(f"--host {host!r} is not an address this machine can listen on ({e}).") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}): is the port in use? Choose another --port."
        ) from None  # noqa: E501
    sock.set_inheritable(True)
    return sock


def _raise_open_file_limit(wanted: int) -> None:
    """Raise the soft open-file limit towards `wanted` (as far as the hard limit allows)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def loadtest_cmd(
    url: Annotated[str, typer.Argument(metavar="URL", help="The server, on this machine: http://127.0.0.1:PORT")],
    concurrency: Annotated[str, typer.Option(help="Comma-separated numbers of closed-loop clients.")] = "1,8,32",
    requests: Annotated[int, typer.Option(help="Requests per concurrency level (at most).")] = 500,
    seconds: Annotated[float, typer.Option(help="Seconds per concurrency level (at most).")] = 30.0,
    route: Annotated[Route, typer.Option(help="embed (TEI /embed) or openai (/v1/embeddings).")] = Route.EMBED,
    inputs_per_request: Annotated[int, typer.Option(help="Texts per request.")] = 1,
    min_tokens: Annotated[int, typer.Option(help="Shortest text, in the server's tokens.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Longest text, in the server's tokens.")] = 512,
    texts: Annotated[int, typer.Option(help="Distinct texts the clients cycle through.")] = 256,
    backoff_ms: Annotated[float, typer.Option(help="A client's pause after a 429.")] = 50.0,
    api_key: Annotated[str | None, typer.Option(envvar="MBEDGE_API_KEY", help="Bearer token.")] = None,
    out: Annotated[Path, typer.Option(help="Where loadtest.json, loadtest.md (and loadtest.png) go.")] = Path(
        "loadtest-results"
    ),
) -> None:
    """Closed-loop clients against a local server: requests/s, tokens/s, p50/p95/p99 latency, errors."""
    from modernbert_edge.serve import loadtest

    levels = [int(c) for c in concurrency.split(",") if c.strip()] if concurrency.strip() else []
    if not levels or min(levels) < 1 or requests < 1 or seconds <= 0 or inputs_per_request < 1:
        raise UserError("--concurrency needs numbers >= 1; --requests, --seconds and --inputs-per-request > 0.")
    if not 1 <= min_tokens <= max_tokens:
        raise UserError(f"--min-tokens and --max-tokens must satisfy 1 <= min <= max, got {min_tokens}, {max_tokens}.")
    client = loadtest.Client(url, api_key)
    try:
        pool = loadtest.make_texts(texts, min_tokens, max_tokens, client.count_tokens)
    except OSError as e:
        raise UserError(f"no server answers at {url} ({e.strerror or e}): start mbedge serve there first.") from None
    results = loadtest.run(client, pool, levels, requests, seconds, plain(route), inputs_per_request, backoff_ms / 1000)
    files = loadtest.write_outputs(results, out)
    typer.echo(loadtest.markdown(results))
    typer.echo("wrote " + ", ".join(str(p) for p in files))
