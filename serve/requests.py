"""Request checks of `mbedge serve`: the JSON body and its fields, and the error responses.

Every check raises ApiError with a status and one sentence that names the field: 413 beyond the
size limits, 422 for malformed JSON, a field of the wrong type, a field the route does not take or a
value it cannot honour, 400 for an empty input. The fields TEI's, the Inference API's and OpenAI's
clients send (truncation, "parameters", encoding formats, token ids, pairs) are read here.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

ERROR_TYPES = {400: "Validation", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 408: "Timeout",
               413: "Validation", 422: "Validation", 429: "Overloaded", 499: "ClientClosed", 500: "Backend",
               503: "Unhealthy"}  # fmt: skip


class ApiError(Exception):
    """A request the server refuses: status, one sentence, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ── request checks ────────────────────────────────────────────────────────────────────────────────

_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
               dict: "an object", type(None): "null"}  # fmt: skip


def kind_of(value: object) -> str:
    """What a JSON value is, as a message names it ("a string", "a number", ...)."""
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
        raise ApiError(422, f'"{name}" must be {wanted}, got {kind_of(value)}.')
    return value


def unknown(body: dict, allowed: tuple[str, ...], prefix: str = "") -> None:
    """422 naming the first field of `body` not in `allowed` (a client's typo is not silently ignored)."""
    for name in body:
        if name not in allowed:
            raise ApiError(
                422, f'"{prefix}{name}" is not a field this route takes; it takes {", ".join(sorted(allowed))}.'
            )


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
            raise ApiError(422, f'"{name}[{i}]" must be a string, got {kind_of(item)}.')
    return items, single


def positive(body: dict, name: str, default: int | None, maximum: int | None = None) -> int | None:
    """A positive integer field, at most `maximum` (422 naming the field and the bound otherwise)."""
    value = get(body, name, int, default)
    if value is not None and value < 1:
        raise ApiError(422, f'"{name}" must be a positive integer, got {_short(value)}.')
    if value is not None and maximum is not None and value > maximum:
        raise ApiError(422, f'"{name}" must be at most {maximum}, got {_short(value)}.')
    return value


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"an integer of {len(text)} digits"


# ── fields every client sends ───────────────────────────────────────────────────────────────────


def truncation(body: dict) -> bool:
    """`truncate` (false: a long input is 413) and TEI's `truncation_direction` (only "right": the
    tokenizer cuts the end of a text)."""
    direction = get(body, "truncation_direction", str, "right")
    if direction.lower() != "right":
        raise ApiError(422, f'"truncation_direction" must be "right" (this server cuts the end), got {direction!r}.')
    return get(body, "truncate", bool, False)


def parameters(body: dict, allowed: tuple[str, ...]) -> tuple[dict, bool]:
    """(the Hugging Face Inference API's "parameters" object, whether the body has one): what
    `InferenceClient` sends for every task but feature extraction; its fields are checked as the body's."""
    value = get(body, "parameters", dict)
    if value is None:
        return {}, False
    unknown(value, allowed, "parameters.")
    return value, True


def encoding_format(body: dict, choices: tuple[str, ...]) -> str:
    value = get(body, "encoding_format", str, "float")
    if value not in choices:
        wanted = " or ".join(f'"{c}"' for c in choices)
        more = " (base64 is on /v1/embeddings)" if choices == ("float",) else ""
        raise ApiError(422, f'"encoding_format" must be {wanted}{more}, got {value!r}.')
    return value


def no_raw_scores(body: dict) -> None:
    if get(body, "raw_scores", bool, False):
        raise ApiError(422, '"raw_scores": true is not supported: scores go through the model\'s own function.')


def texts_or_ids(body: dict, name: str, limit: int) -> tuple[list, bool]:
    """(the inputs, whether they are token ids): a string or a list of strings; token ids as a list
    of integers (one input) or a list of such lists (OpenAI's and TEI's forms)."""
    value = get(body, name, (str, list), required=True)
    if isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        value = [value]  # one input as token ids
    if isinstance(value, list) and value and isinstance(value[0], list):
        if len(value) > limit:
            raise ApiError(413, f'"{name}" has {len(value)} inputs, more than the {limit} one request may send.')
        for i, row in enumerate(value):
            if (
                not isinstance(row, list)
                or not row
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in row)
            ):
                raise ApiError(422, f'"{name}[{i}]" must be a non-empty list of token ids (integers).')
        return value, True
    return texts(body, name, limit)[0], False


def predict_inputs(body: dict, limit: int) -> tuple[list, bool]:
    """(the inputs, whether one was given): a string; a list of strings; pairs as [text, text_pair]
    items (or {"text", "text_pair"}) of a list, a [text] item being one text."""
    value = get(body, "inputs", (str, list, dict), required=True)
    if isinstance(value, (str, dict)):
        return [_sequence(value, "inputs")], True
    if not value:
        raise ApiError(400, '"inputs" is an empty list.')
    if len(value) > limit:
        raise ApiError(413, f'"inputs" has {len(value)} inputs, more than the {limit} one request may send.')
    return [_sequence(x, f"inputs[{i}]") for i, x in enumerate(value)], False


def _sequence(x: object, where: str) -> str | tuple[str, str]:
    if isinstance(x, dict) and set(x) <= {"text", "text_pair"} and "text" in x:
        x = [x["text"], x["text_pair"]] if x.get("text_pair") is not None else [x["text"]]
    if isinstance(x, list) and len(x) in (1, 2) and all(isinstance(t, str) for t in x):
        return x[0] if len(x) == 1 else (x[0], x[1])
    if isinstance(x, str):
        return x
    raise ApiError(422, f'"{where}" must be a string, [text] or [text, text_pair], got {kind_of(x)}.')


async def read_json(request: Request, limit: int, timeout: float | None = None) -> dict:
    """The body as a JSON object: 413 beyond `limit` bytes, 408 when it has not all arrived within
    `timeout` seconds (the connection is closed), 422 when it is not a JSON object."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"the body has {int(size)} bytes, more than the {limit} this server accepts.")
    chunks: list[bytes] = []

    async def receive() -> None:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"the body is larger than the {limit} bytes this server accepts.")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout)
    except TimeoutError:
        raise ApiError(
            408, f"the body did not arrive within {timeout:g} s; send it at once.", {"Connection": "close"}
        ) from None
    except ClientDisconnect:
        raise ApiError(499, "the client closed the connection while sending the body.") from None
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(422, f"the body is not valid JSON ({getattr(e, 'msg', e)}).") from None
    except RecursionError:
        raise ApiError(422, "the body is not valid JSON here: it is nested too deeply.") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ApiError(422, f"the body is not valid JSON here ({e}).") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, got {kind_of(body)}.")
    return body


def error_response(path: str, status: int, message: str, headers: dict | None = None) -> Response:
    if path.startswith("/v1/") or path == "/embeddings":  # OpenAI's error shape
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers)
    return JSONResponse({"error": message, "error_type": ERROR_TYPES.get(status, "Error")}, status, headers)
