"""`mbedge serve`: the real server (uvicorn, a subprocess on a free port) and httpx clients.

Every route against the offline API, concurrent answers equal to serial ones, bad requests, the
API key, overload (429 and recovery), a client that goes away, SIGTERM with requests in flight.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from modernbert_edge.runtime import load  # noqa: E402
from modernbert_edge.timing import sample_text  # noqa: E402

TASKS = ("feature-extraction", "fill-mask", "text-classification", "token-classification", "question-answering")
NAMES = dict(zip(TASKS, ("emb", "mask", "cls", "ner", "qa"), strict=True))
MAX_LENGTH = 128
TEXTS = sample_text(24, seed=3)  # 4-16 words each, several lengths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mbedge serve ARGS` on a free port; stderr (the access log) goes to a file."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self._log = self.log_path.open("w")
        cmd = [sys.executable, "-m", "modernbert_edge.cli", "serve", *args, "--port", str(self.port), "--threads", "1"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("the server did not become ready:\n" + self.log())

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def post(self, path: str, body: object, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name}{{{want}}}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def folders(exported_factory):
    return {task: exported_factory(task) for task in TASKS}


@pytest.fixture(scope="module")
def offline(folders):
    return {task: load(folder, max_length=MAX_LENGTH) for task, folder in folders.items()}


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    args = [f"{NAMES[t]}={folders[t]}" for t in TASKS]
    s = Server(tmp_path_factory.mktemp("serve"), *args, "--max-input-length", str(MAX_LENGTH), "--max-wait-ms", "20",
               "--max-client-batch-size", "8", "--max-body-bytes", "20000")  # fmt: skip
    yield s
    assert s.stop() == 0


def test_every_route_equals_the_offline_api(server, offline) -> None:
    texts = TEXTS[:5]
    emb = offline["feature-extraction"]
    got = server.post("/embed", {"inputs": texts}).json()
    assert np.array_equal(np.asarray(got, np.float32), emb.embed(texts))
    raw = server.post("/embed", {"inputs": texts[0], "normalize": False}).json()
    assert np.array_equal(np.asarray(raw, np.float32), emb.embed([texts[0]], normalize=False))

    oa = server.post("/v1/embeddings", {"input": texts, "model": "emb"}).json()
    assert oa["model"] == "emb" and [d["index"] for d in oa["data"]] == list(range(5))
    assert np.array_equal(np.asarray([d["embedding"] for d in oa["data"]], np.float32), emb.embed(texts))
    assert oa["usage"]["prompt_tokens"] == sum(len(e.ids) for e in emb.tokenizer.encode(texts))
    short = server.post("/v1/embeddings", {"input": texts[0], "dimensions": 8, "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(short["data"][0]["embedding"]), "<f4")
    cut = emb.embed(texts[0])[:8]
    np.testing.assert_allclose(vec, cut / np.linalg.norm(cut), rtol=1e-6)

    labels = offline["text-classification"].classify(texts, top_k=None)
    assert server.post("/predict", {"inputs": texts}).json() == labels
    assert server.post("/predict", {"inputs": texts[0], "top_k": 1}).json() == offline["text-classification"].classify(
        texts[0], top_k=1
    )
    masked = [t.replace(" ", " [MASK] ", 1) for t in texts]
    rows = offline["fill-mask"].predict(masked, task="fill-mask", top_k=3)  # one list per mask
    one_mask = [r[0] if len(r) == 1 and isinstance(r[0], list) else r for r in rows]  # as the HF pipeline nests
    assert server.post("/fill_mask", {"inputs": masked, "top_k": 3}).json() == one_mask
    for aggregation in ("simple", "none", "first"):
        got = server.post("/tag", {"inputs": texts, "aggregation": aggregation, "ignore_labels": []}).json()
        assert got == offline["token-classification"].tag(texts, aggregation=aggregation, ignore_labels=())
    qa = offline["question-answering"]
    assert server.post("/answer", {"question": "who works?", "context": texts[0]}).json() == qa.answer(
        "who works?", texts[0]
    )
    body = {"question": "who works?", "context": texts, "top_k": 2, "max_answer_len": 4}
    assert server.post("/answer", body).json() == qa.answer("who works?", texts, top_k=2, max_answer_len=4)

    tokens = server.post("/tokenize", {"inputs": texts[:2]}).json()
    for row, enc in zip(tokens, emb.tokenizer.encode(texts[:2]), strict=True):
        assert [t["id"] for t in row] == enc.ids
        assert [t["special"] for t in row] == [bool(s) for s in enc.special_tokens_mask]
    plain = server.post("/tokenize", {"inputs": texts[:1], "add_special_tokens": False}).json()[0]
    assert [t["id"] for t in plain] == enc_ids_without_specials(emb, texts[0])
    assert "".join(t["text"] for t in plain) == texts[0]

    info = httpx.get(server.url + "/info").json()
    assert info["model_id"] == "emb" and info["max_input_length"] == MAX_LENGTH
    assert [m["model_id"] for m in info["models"]] == list(NAMES.values())
    assert httpx.get(server.url + "/info", params={"model": "cls"}).json()["model_type"]["classifier"]["id2label"]
    assert server.metric("mbedge_requests_total", route="/embed", status="200") >= 2
    assert server.metric("mbedge_batch_rows_count", model="emb") >= 1
    assert server.metric("mbedge_queue_tokens", model="emb") == 0


def enc_ids_without_specials(model, text: str) -> list[int]:
    enc = model.tokenizer.encode([text])[0]
    return [i for i, s in zip(enc.ids, enc.special_tokens_mask, strict=True) if not s]


def test_concurrent_clients_get_the_serial_answers(server) -> None:
    requests = [TEXTS[i : i + 1 + i % 3] for i in range(len(TEXTS))]
    serial = [server.post("/embed", {"inputs": r}).json() for r in requests]
    batches_before = server.metric("mbedge_batch_rows_count", model="emb")
    with ThreadPoolExecutor(12) as pool:
        concurrent = list(pool.map(lambda r: server.post("/embed", {"inputs": r}).json(), requests * 2))
    assert concurrent == serial * 2  # bit for bit, whatever they were batched with
    batches = server.metric("mbedge_batch_rows_count", model="emb") - batches_before
    assert batches < len(requests) * 2  # requests shared batches


@pytest.mark.filterwarnings("ignore::modernbert_edge.runtime.TruncationWarning")
def test_bad_requests(server, offline) -> None:
    def check(path: str, body: object, status: int, words: str, **kwargs) -> None:
        r = (
            server.post(path, body, **kwargs)
            if not isinstance(body, bytes)
            else httpx.post(server.url + path, content=body, timeout=10)
        )
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert words in (error["message"] if path.startswith("/v1/") else error), error

    check("/embed", b"{inputs", 422, "not valid JSON")
    check("/embed", b"[1, 2]", 422, "must be a JSON object")
    check("/embed", {}, 422, 'no "inputs" field')
    check("/embed", {"inputs": "a", "texts": ["a"]}, 422, '"texts" is not a field this route takes')
    check("/embed", {"inputs": 3}, 422, '"inputs" must be a string or a list')
    check("/embed", {"inputs": ["a", 2]}, 422, '"inputs[1]" must be a string')
    check("/embed", {"inputs": ["a"], "normalize": "yes"}, 422, '"normalize" must be a boolean')
    check("/embed", {"inputs": ["a"], "prompt_name": "query"}, 400, "no prompt named 'query'")
    check("/fill_mask", {"inputs": "a [MASK]", "top_k": 0}, 422, '"top_k" must be a positive integer')
    check("/embed", {"inputs": ["a", "  "]}, 400, '"inputs[1]" is empty')
    check("/embed", {"inputs": []}, 400, "empty list")
    check("/embed", {"inputs": ["a"] * 9}, 413, "more than the 8")
    check("/embed", {"inputs": ["a " * 12000]}, 413, "more than the 20000")
    long = " ".join(TEXTS) * 2
    check("/embed", {"inputs": ["a", long]}, 413, '"inputs[1]" has')
    check("/embed", {"inputs": ["a", long]}, 413, 'this model reads (shorten it, or send "truncate": true).')
    cut = server.post("/embed", {"inputs": ["a", long], "truncate": True}).json()
    assert np.array_equal(np.asarray(cut, np.float32), offline["feature-extraction"].embed(["a", long]))
    check("/fill_mask", {"inputs": ["a [MASK]", "no mask here"]}, 400, '"inputs[1]" has no [MASK]')
    check("/fill_mask", {"inputs": "a [MASK]", "model": "emb"}, 400, "fill-mask")
    check("/embed", {"inputs": "a", "model": "nope"}, 404, "no model is named 'nope'")
    check("/rerank", {"query": "a", "texts": ["b", "c"]}, 400, "cannot rerank")
    check("/v1/embeddings", {"input": "a", "dimensions": 10_000}, 400, "dimensions")
    r = server.post("/v1/embeddings", {"input": ["a", 2]})
    assert r.status_code == 422 and '"input[1]"' in r.json()["error"]["message"]  # OpenAI's error shape
    r = server.post("/v1/embeddings", {"input": [[1, 2], [3, 10**6]]})
    assert r.status_code == 422 and '"input[1]" has token id 1000000, outside' in r.json()["error"]["message"]
    assert server.post("/embed", {"inputs": "still fine"}).status_code == 200  # bad requests harmed nothing
    lines = [ln for ln in server.log().splitlines() if "mbedge.access" in ln]
    assert any('"POST /embed" 413' in ln for ln in lines) and any('"POST /embed" 422' in ln for ln in lines)


def test_api_key(folders, tmp_path) -> None:
    s = Server(tmp_path, str(folders["feature-extraction"]), "--api-key", "s3cret")
    try:
        assert s.post("/embed", {"inputs": "a"}).status_code == 401
        assert s.post("/embed", {"inputs": "a"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(s.url + "/info").status_code == 401
        ok = s.post("/embed", {"inputs": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()) == 1
        assert httpx.get(s.url + "/health").status_code == 200
        # Every route but health needs the key: each POST route (the roots, which run a model, included)
        # and each GET route that is not health.
        from modernbert_edge.serve.app import GET_ROUTES
        from modernbert_edge.serve.routes import ENDPOINTS, ROOTS

        name = folders["feature-extraction"].name
        for path in [*ENDPOINTS, *ROOTS]:
            assert s.post(path.replace("{name}", name), {"inputs": "a"}).status_code == 401, path
        for path in GET_ROUTES:
            want = 200 if path in ("/", "/health", "/ping") else 401
            assert httpx.get(s.url + path.replace("{name}", name)).status_code == want, path
    finally:
        assert s.stop() == 0


@pytest.fixture
def slow_server(folders, tmp_path):
    """A lone request waits 400 ms for company; the queue holds 40 tokens."""
    s = Server(tmp_path, f"emb={folders['feature-extraction']}", "--max-wait-ms", "400", "--max-queue-tokens", "40")
    yield s
    s.stop()


def test_overload_gets_429_then_recovers(slow_server, offline) -> None:
    s = slow_server
    text = "alice works at acme corp in berlin"  # 30-odd tokens: one fits the queue, two do not
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: s.post("/embed", {"inputs": text}), range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1 and "overloaded" in refused.json()["error"]
    again = s.post("/embed", {"inputs": text})  # the queue drained: served again
    assert again.status_code == 200
    assert np.array_equal(np.asarray(again.json(), np.float32), offline["feature-extraction"].embed([text]))
    big = s.post("/embed", {"inputs": " ".join(TEXTS[:4])})
    assert big.status_code == 413 and "queue" in big.json()["error"]


def test_client_that_goes_away_leaves_no_work(slow_server) -> None:
    s = slow_server
    with pytest.raises(httpx.TimeoutException):
        httpx.post(s.url + "/embed", json={"inputs": "alice works"}, timeout=0.1)
    time.sleep(0.6)  # past the 400 ms the job would have waited
    assert s.metric("mbedge_queue_tokens", model="emb") == 0
    with pytest.raises(AssertionError, match="no metric"):
        s.metric("mbedge_batch_rows_count", model="emb")  # no batch ever ran
    assert re.search(r'"POST /embed" 499', s.log())


def test_sigterm_finishes_requests_in_flight(folders, offline, tmp_path) -> None:
    s = Server(tmp_path, f"emb={folders['feature-extraction']}", "--max-wait-ms", "3000")
    texts = ["alice", "bob works", "acme"]
    answers: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        answers[i] = s.post("/embed", {"inputs": texts[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2.5
    while s.metric("mbedge_queue_requests", model="emb") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.metric("mbedge_queue_requests", model="emb") == 3  # queued: a lone batch waits up to 3 s
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(20)
    assert s.stop() == 0
    for i, text in enumerate(texts):
        assert answers[i].status_code == 200
        assert np.array_equal(np.asarray(answers[i].json(), np.float32), offline["feature-extraction"].embed([text]))
    with pytest.raises(httpx.ConnectError):
        httpx.post(s.url + "/embed", json={"inputs": "late"}, timeout=2)
    log = s.log()
    assert log.count('"POST /embed" 200') == 3 and "stopped on SIGTERM" in log


def test_loadtest_against_the_server(server, tmp_path) -> None:
    from modernbert_edge.errors import UserError
    from modernbert_edge.serve import loadtest

    with pytest.raises(UserError, match="on this machine"):
        loadtest.Client("http://example.com:80")
    client = loadtest.Client(server.url)
    texts = loadtest.make_texts(12, 8, 40, client.count_tokens)
    assert all(8 <= t <= 40 for _, t in texts)
    assert [t for _, t in texts] == client.count_tokens([x for x, _ in texts])
    results = loadtest.run(client, texts, [1, 4], max_requests=20, max_seconds=20)
    for row in results["levels"]:
        assert row["requests"] == 20 and row["ok"] == 20 and row["errors"] == {}
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    files = loadtest.write_outputs(results, tmp_path)
    assert json.loads(files[0].read_text())["levels"][1]["concurrency"] == 4
    assert "| 4 | 20 | 20 | none |" in files[1].read_text()


def test_the_server_tokenizes_once(offline, monkeypatch) -> None:
    """What a request was counted by for admission is what runs: the batcher runs the encodings."""
    from modernbert_edge.serve.admission import admit
    from modernbert_edge.serve.batcher import Batcher, Job

    model = offline["feature-extraction"]
    texts = TEXTS[:3]
    want = model.embed(texts)
    calls: list[int] = []
    encode = model.tokenizer.encode
    monkeypatch.setattr(model.tokenizer, "encode", lambda *a, **k: calls.append(len(a[0])) or encode(*a, **k))
    work, tokens = admit(model, "feature-extraction", texts, {"normalize": True}, False, "inputs", 16)
    rows = Batcher(model, "emb", 8192, 0.0, 65536)._run([Job("feature-extraction", work, work.options, tokens, None)])
    assert calls == [3] and tokens == sum(work.tokens) == sum(len(e.ids) for e in encode(texts))
    assert np.array_equal(np.stack(rows[0]), want)


def test_serve_logs_the_address_it_listens_on(exported_factory, tmp_path) -> None:
    s = Server(tmp_path, str(exported_factory("feature-extraction")))
    assert s.stop() == 0
    log = s.log()
    assert f"listening on http://127.0.0.1:{s.port}" in log and "ready: " in log, log


@pytest.mark.parametrize("flag", ["--batch-tokens", "--max-masks", "--limit-concurrency"])
def test_serve_names_the_count_that_is_below_1(tmp_path, flag) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modernbert_edge.cli", "serve", str(tmp_path), flag, "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr == f"error: {flag} must be at least 1, got 0.\n", proc.stderr


def test_errors_have_one_shape_and_name_the_field(server) -> None:
    """An option's bad value is a 422 naming its field, however deep it is checked; an unknown route or
    method gets the JSON error of every other answer (TEI's shape, OpenAI's under /v1/)."""
    r = server.post("/tag", {"inputs": "alice works", "aggregation": "sum", "model": NAMES["token-classification"]})
    assert r.status_code == 422 and r.json()["error"].startswith('"aggregation" must be one of none, simple'), r.text
    r = server.post("/nope", {})
    assert r.status_code == 404 and r.json()["error_type"] == "NotFound" and "/embed" in r.json()["error"], r.text
    r = httpx.get(server.url + "/embed", timeout=5)
    assert r.status_code == 405 and r.json() == {
        "error": "/embed does not take GET; it takes POST.",
        "error_type": "MethodNotAllowed",
    }
    r = server.post("/v1/nope", {})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error", r.text
