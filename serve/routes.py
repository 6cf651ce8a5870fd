"""The POST routes of `mbedge serve`: each route's handler, POST / (the model's own route) and the
table of routes and the fields each takes.

A handler reads its fields by hand (requests.py: 422 names the field), and ENDPOINTS refuses a field
its route does not take (422 naming it); the inputs then take the path every model route shares
(admission.py: pick the model, encode and count once, check the limits, queue, await the rows).

Both TEI's and the Hugging Face Inference API's bodies are taken: `InferenceClient` sends task
options in a "parameters" object (and then gets the pipeline's shapes: a list per input from
/predict), and POST / runs the route of the model's task, as TEI routes it (`root`).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modernbert_edge.runtime.numerics import classification_function
from modernbert_edge.runtime.postprocess import pipeline_nesting
from modernbert_edge.serve.admission import State, pick_model, run_task
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
    try:
        unknown(body, ENDPOINTS[path].fields)
        return await ENDPOINTS[path].handler(request, state, {**body, "model": name})
    except ApiError as e:  # a body for another task's route: say which route the root took, and why
        if e.status != 422:
            raise
        raise ApiError(
            422,
            f"{request.url.path} runs model {name!r} ({model.task}) as {path}: {e.message} Another model or "
            f'task: name it with "model", POST /models/NAME, or the task\'s route.',
            e.headers,
        ) from None


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
