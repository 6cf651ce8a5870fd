"""`mbedge serve` driven by the real clients: the openai SDK, langchain-openai and huggingface_hub's
InferenceClient, at the server root, at per-model roots and at route URLs.

Every answer is compared with `load(folder)` on the same inputs (equal, or within float32's JSON
round trip where the client turns numbers into float64). One server (six tiny models) for the module.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("uvicorn")

from test_serve import Server  # noqa: E402

from modernbert_edge.bench.checkpoints import sample_text  # noqa: E402
from modernbert_edge.runtime import load  # noqa: E402

MAX_LENGTH = 128
TEXTS = sample_text(6, seed=11)
MODELS = {  # name: (task, checkpoint options); the first is the server's default model
    "emb": ("feature-extraction", {}),
    "cls": ("text-classification", {}),
    "ce": ("text-classification", {"num_labels": 1}),
    "mask": ("fill-mask", {}),
    "ner": ("token-classification", {}),
    "qa": ("question-answering", {}),
}


@pytest.fixture(scope="module")
def folders(exported_factory):
    return {name: exported_factory(task, **kwargs) for name, (task, kwargs) in MODELS.items()}


@pytest.fixture(scope="module")
def offline(folders):
    return {name: load(folder, max_length=MAX_LENGTH) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("clients"), *(f"{n}={f}" for n, f in folders.items()),
               "--max-input-length", str(MAX_LENGTH))  # fmt: skip
    yield s
    assert s.stop() == 0


def embed(model, texts: list[str], **options) -> np.ndarray:
    return np.stack(model.predict(texts, task="feature-extraction", **options))  # (n, dim)


def hf(server, path: str = "") -> hub.InferenceClient:
    return hub.InferenceClient(model=server.url + path)


# ── OpenAI ────────────────────────────────────────────────────────────────────────────────────────


def test_openai_sdk_embeddings_and_models(server, offline) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    want = embed(offline["emb"], TEXTS)
    got = client.embeddings.create(input=TEXTS, model="emb")  # the SDK asks for base64 and decodes it
    assert np.array_equal(np.asarray([d.embedding for d in got.data], np.float32), want)
    assert got.model == "emb" and got.usage.prompt_tokens == sum(
        len(e.ids) for e in offline["emb"].tokenizer.encode(TEXTS)
    )
    floats = client.embeddings.create(input=TEXTS[0], model="emb", encoding_format="float")
    assert np.array_equal(np.asarray(floats.data[0].embedding, np.float32), want[0])
    short = client.embeddings.create(input=TEXTS, model="emb", dimensions=16)
    assert np.array_equal(
        np.asarray([d.embedding for d in short.data], np.float32), embed(offline["emb"], TEXTS, dim=16)
    )

    # token ids, as langchain's default mode sends them: the model's own ids, used as given
    ids = [offline["emb"].tokenizer.encode([t])[0].ids for t in TEXTS[:2]]
    by_ids = client.embeddings.create(input=ids, model="emb")
    assert np.array_equal(np.asarray([d.embedding for d in by_ids.data], np.float32), want[:2])
    raw = [1, 50, 60, 2]
    one = client.embeddings.create(input=raw, model="emb", encoding_format="float")
    hidden = offline["emb"].run(np.asarray([raw]))["last_hidden_state"][0]  # (4, hidden): mean, L2-normalized
    np.testing.assert_allclose(one.data[0].embedding, hidden.mean(0) / np.linalg.norm(hidden.mean(0)), atol=1e-6)
    with pytest.raises(openai.UnprocessableEntityError, match=r'"input\[1\]" has token id 99999'):
        client.embeddings.create(input=[raw, [1, 99999]], model="emb")
    with pytest.raises(openai.UnprocessableEntityError, match='"dimension" is not a field'):
        client.embeddings.create(input="a", model="emb", extra_body={"dimension": 3})

    assert [m.id for m in client.models.list()] == list(MODELS)
    assert client.models.retrieve("cls").id == "cls"
    with pytest.raises(openai.NotFoundError, match="no model is named"):
        client.models.retrieve("nope")

    tei = openai.OpenAI(base_url=server.url, api_key="unused")  # TEI's alias: POST /embeddings
    assert np.array_equal(np.asarray(tei.embeddings.create(input=TEXTS, model="emb").data[2].embedding), want[2])


def test_langchain_openai(server, offline) -> None:
    lc = pytest.importorskip("langchain_openai")
    # check_embedding_ctx_length=False sends the texts; the default mode sends tiktoken's ids, which
    # are not this model's (the ids path is the openai test's token-id requests)
    emb = lc.OpenAIEmbeddings(model="emb", base_url=server.url + "/v1", api_key="unused",
                              check_embedding_ctx_length=False)  # fmt: skip
    want = embed(offline["emb"], TEXTS)
    assert np.array_equal(np.asarray(emb.embed_documents(TEXTS), np.float32), want)
    assert np.array_equal(np.asarray(emb.embed_query(TEXTS[1]), np.float32), want[1])
    short = lc.OpenAIEmbeddings(model="emb", base_url=server.url + "/v1", api_key="unused", dimensions=8,
                                check_embedding_ctx_length=False)  # fmt: skip
    assert np.array_equal(
        np.asarray(short.embed_documents(TEXTS[:2]), np.float32), embed(offline["emb"], TEXTS[:2], dim=8)
    )


# ── huggingface_hub's InferenceClient ─────────────────────────────────────────────────────────────


def test_inference_client_at_the_root_and_at_routes(server, offline) -> None:
    want = embed(offline["emb"], TEXTS[:1])
    for path in ("", "/embed", "/models/emb"):  # the root runs the first model's route, as TEI does
        assert np.array_equal(hf(server, path).feature_extraction(TEXTS[0]), want), path
    cut = hf(server).feature_extraction(TEXTS[0], dimensions=16, normalize=True, truncate=True)
    assert np.array_equal(cut, embed(offline["emb"], TEXTS[:1], dim=16))
    vectors = embed(offline["emb"], TEXTS)
    scores = offline["emb"].similarity(vectors[:1], vectors[1:])[0]
    for path in ("", "/similarity"):
        np.testing.assert_allclose(hf(server, path).sentence_similarity(TEXTS[0], TEXTS[1:]), scores, rtol=1e-6)

    labels = offline["cls"].predict(TEXTS[:1], task="text-classification")[0]
    for path in ("/models/cls", "/predict"):
        got = hf(server, path).text_classification(TEXTS[0])
        assert [{"label": e.label, "score": e.score} for e in got] == labels, path
    top = hf(server, "/predict").text_classification(TEXTS[0], top_k=1, function_to_apply="softmax")
    assert [e.label for e in top] == [labels[0]["label"]]

    masked = "alice works at [MASK] in berlin"
    predictions = offline["mask"].predict([masked], task="fill-mask", top_k=3)[0][0]  # its one mask's
    for path in ("/models/mask", "/fill_mask"):
        got = hf(server, path).fill_mask(masked, top_k=3)
        assert [{k: getattr(e, k) for k in ("score", "token", "token_str", "sequence")} for e in got] == predictions

    entities = offline["ner"].predict(TEXTS[:1], task="token-classification")[0]
    for path in ("/models/ner", "/tag"):
        got = hf(server, path).token_classification(TEXTS[0])
        assert [{k: getattr(e, k) for k in ("entity_group", "score", "word", "start", "end")} for e in got] == entities

    span = offline["qa"].predict([("who works?", TEXTS[0])], task="question-answering")[0]
    for path in ("/models/qa", "/answer"):
        got = hf(server, path).question_answering(question="who works?", context=TEXTS[0])
        assert {k: getattr(got, k) for k in ("answer", "score", "start", "end")} == span

    with pytest.raises(hub.errors.HfHubHTTPError, match="422"):
        hf(server, "/fill_mask").fill_mask(masked, targets=["paris"])  # a value it cannot honour: one sentence


def test_tei_bodies(server, offline) -> None:
    def post(path: str, body: dict) -> httpx.Response:
        return server.post(path, body)

    pairs = [("alice works", "bob works"), ("paris", "berlin")]
    want = offline["cls"].predict(pairs, task="text-classification")
    assert post("/predict", {"inputs": [list(p) for p in pairs], "model": "cls"}).json() == want
    mixed = post("/predict", {"inputs": [["alice works"], list(pairs[1])], "model": "cls"}).json()
    assert mixed == offline["cls"].predict(["alice works", pairs[1]], task="text-classification")

    query, docs = "who works in berlin", TEXTS[:4]
    ranking = offline["ce"].predict([(query, docs)], task="rerank")[0]
    assert post("/rerank", {"query": query, "texts": docs}).json() == ranking  # the one-label model, unnamed
    assert post("/", {"query": query, "texts": docs, "model": "ce"}).json() == ranking
    assert post("/models/ce", {"query": query, "texts": docs}).json() == ranking
    long_query = post("/rerank", {"query": "word " * 300, "texts": ["a"], "truncate": True})
    assert long_query.status_code == 413 and "has a query of" in long_query.json()["error"]
    assert "question" not in long_query.json()["error"]

    want = embed(offline["emb"], TEXTS)
    assert np.array_equal(np.asarray(post("/", {"inputs": TEXTS}).json(), np.float32), want)
    ids = [e.ids for e in offline["emb"].tokenizer.encode(TEXTS[:2])]  # TEI's token-id input: the same vectors
    assert np.array_equal(np.asarray(post("/embed", {"inputs": ids}).json(), np.float32), want[:2])
    r = post("/embed", {"inputs": "a", "normalise": True})
    assert r.status_code == 422 and r.json()["error"].startswith('"normalise" is not a field this route takes')
    r = post("/", {"inputs": "a", "parameters": {"top_k": 2}})  # a classifier's body at an embedder's root
    assert r.status_code == 422 and r.json()["error"].startswith("/ runs model 'emb' (feature-extraction) as /embed: ")
    assert '"parameters" is not a field' in r.json()["error"] and "POST /models/NAME" in r.json()["error"]
    r = post("/models/emb", {"inputs": "a", "model": "cls"})
    assert r.status_code == 422 and "the path names model 'emb'" in r.json()["error"]
    r = post("/embed", {"inputs": "a", "truncation_direction": "left"})
    assert r.status_code == 422 and '"truncation_direction"' in r.json()["error"]
    r = post("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b", " "]}})
    assert r.status_code == 400 and r.json()["error"].startswith('"inputs.sentences[1]" is empty')
    assert httpx.get(server.url + "/").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert [m["model_type"].keys() for m in info["models"][1:3]] == [{"classifier"}, {"reranker"}]


def test_metrics_count_every_route(server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert server.post("/rerank", {"query": "q", "texts": ["a b", "c"]}).status_code == 200
    assert server.post("/tokenize", {"inputs": "a b"}).status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("mbedge_tokens_total", model="ce", task="rerank") >= 2 * 4  # two pairs of ≥ 4 tokens
    assert value("mbedge_batch_rows_count", model="ce", task="rerank") >= 1
    assert value("mbedge_batch_tokens_count", model="emb", task="tokenize") >= 1
    assert value("mbedge_requests_total", route="/rerank", status="200") >= 1
    assert value("mbedge_requests_total", route="/models/{name}", status="200") >= 1
    assert value("process_resident_memory_bytes") > 10 * 2**20
    assert value("process_cpu_seconds_total") > 0
