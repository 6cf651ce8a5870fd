"""A request's inputs to its rows, the path every model route shares: pick the model (the body's
"model", else the first folder whose task fits the route), encode the inputs once and count their
tokens (400 empty, 413 too many or too long), check them against the queue (413 larger than it all),
queue the encodings as one Job on that model's Batcher (429 when its queue is full) and await its
rows, or the client's going away (the job is dropped, 499).

Settings and State are what the server holds: its limits, the models and their batchers.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np
from starlette.requests import Request

from modernbert_edge.errors import OptionError, UserError
from modernbert_edge.runtime import InputError, InputTooLongError
from modernbert_edge.serve import defaults
from modernbert_edge.serve.batcher import Batcher, QueueFull
from modernbert_edge.serve.requests import ApiError


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
        raise refused(e) from None
    rows = encoded if task == "tokenize" else encoded.encodings
    tok = model.tokenizer
    total = 0
    for i, e in enumerate(rows):
        where = field_name[i] if isinstance(field_name, list) else f"{field_name}[{i}]"
        if isinstance(e, InputTooLongError):
            hint = f' (shorten {e.shorten}, or send "truncate": true).' if e.shorten and not truncate else "."
            raise ApiError(413, f'"{where}" {e.what}{hint}')
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
            raise refused(e) from None
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
        raise refused(e) from None
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


def refused(e: UserError) -> ApiError:
    """A UserError from the model as the answer: 422 naming the field for an option's value (as a bad
    field's type or range is), 400 otherwise (a prompt the model does not have, a task it does not do)."""
    if isinstance(e, OptionError):
        return ApiError(422, e.as_fields())
    return ApiError(400, str(e))
