"""Closed-loop load test of a local `mbedge serve` (stdlib HTTP client, one thread per client).

Each client sends a request, waits for its answer, sends the next (after a 429 it pauses
`backoff` seconds), until the level's request count or time runs out. Latency is measured per
request from send to the end of the answer; tokens are the server's own counts (its /tokenize).
Only servers on this machine are accepted (127.0.0.1, localhost, ::1).
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from modernbert_edge.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ROUTES = {"embed": "/embed", "openai": "/v1/embeddings"}


class Client:
    """A local server's address; `post` opens its own connection per thread via `connection()`."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            port = parts.port
        except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535"
            raise UserError(f"{url!r} is not a URL the load test can use ({e}).") from None
        if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS:
            raise UserError(
                f"the load test only targets a server on this machine (http://127.0.0.1:PORT), got {url!r}."
            )
        if port == 0:
            raise UserError(f"{url!r} has port 0; give the server's port (1-65535).")
        self.host, self.port, self.timeout = parts.hostname, port or 80, timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, bytes, dict]:
        conn.request("POST", path, json.dumps(body), self.headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's tokens as the server counts them (special tokens included)."""
        conn, counts = self.connection(), []
        try:
            conn.request("GET", "/info", headers=self.headers)
            response = conn.getresponse()
            info = json.loads(response.read()) if response.status == 200 else {}
            step = int(info.get("max_client_batch_size", 1))
            for start in range(0, len(texts), step):
                status, data, _ = self.post(conn, "/tokenize", {"inputs": list(texts[start : start + step])})
                if status != 200:
                    raise UserError(f"the server's /tokenize answered {status}: {data[:200]!r}.")
                counts += [len(t) for t in json.loads(data)]
        except OSError as e:
            raise UserError(f"cannot reach the server at {self.host}:{self.port} ({e}).") from None
        finally:
            conn.close()
        return counts


def make_texts(
    n: int, min_tokens: int, max_tokens: int, count: Callable[[Sequence[str]], list[int]], seed: int = 1234
) -> list[tuple[str, int]]:
    """n (text, tokens) pairs with token lengths spread uniformly over [min_tokens, max_tokens]."""
    from modernbert_edge.timing import sample_text

    rng = random.Random(seed)
    words = " ".join(sample_text(400, seed)).split()
    sample = " ".join(words[:200])
    per_word = max(count([sample])[0] - 2, 1) / 200  # tokens per word, special tokens aside
    targets = [rng.randint(min_tokens, max_tokens) for _ in range(n)]
    starts = [rng.randrange(len(words)) for _ in range(n)]

    def text(i: int, k: int) -> str:
        return " ".join(words[(starts[i] + j) % len(words)] for j in range(max(k, 1)))

    sizes = [max(1, round(t / per_word)) for t in targets]
    for _ in range(6):  # refit the word counts to the measured tokens
        tokens = count([text(i, k) for i, k in enumerate(sizes)])
        off = [i for i, t in enumerate(tokens) if not min_tokens <= t <= max_tokens]
        if not off:
            break
        for i in off:
            sizes[i] = max(1, round(sizes[i] * targets[i] / max(tokens[i], 1)) - (tokens[i] > max_tokens))
    tokens = count([text(i, k) for i, k in enumerate(sizes)])
    return [(text(i, k), t) for i, (k, t) in enumerate(zip(sizes, tokens, strict=True))]


def run_level(
    client: Client,
    texts: Sequence[tuple[str, int]],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    route: str = "embed",
    inputs_per_request: int = 1,
    backoff: float = 0.05,
) -> dict:
    """One concurrency level: `concurrency` closed-loop clients, at most max_requests and max_seconds."""
    path = ROUTES[route]
    key = "inputs" if route == "embed" else "input"
    numbers = itertools.count()
    records: list[tuple[float, float, object, int]] = []  # (start, seconds, status or error name, tokens)
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        conn = client.connection()
        while time.perf_counter() < deadline:
            n = next(numbers)
            if n >= max_requests:
                break
            picked = [texts[(n * inputs_per_request + j) % len(texts)] for j in range(inputs_per_request)]
            body = {key: [t for t, _ in picked]}
            start = time.perf_counter()
            try:
                status, _, _ = client.post(conn, path, body)
            except (OSError, http.client.HTTPException) as e:
                status = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
                conn.close()
                conn = client.connection()
            elapsed = time.perf_counter() - start
            with lock:
                records.append((start, elapsed, status, sum(t for _, t in picked)))
            if status == 429:
                time.sleep(backoff)
        conn.close()

    began = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return summarize(records, time.perf_counter() - began, concurrency)


def summarize(records: list[tuple[float, float, object, int]], seconds: float, concurrency: int) -> dict:
    ok = sorted(r[1] for r in records if r[2] == 200)
    statuses = Counter(str(r[2]) for r in records if r[2] != 200)

    def pct(p: float) -> float | None:
        return round(1000 * ok[min(len(ok) - 1, int(p / 100 * len(ok)))], 2) if ok else None

    tokens = sum(r[3] for r in records if r[2] == 200)
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(statuses),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(ok) / seconds, 2) if seconds else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(1000 * max((r[1] for r in records), default=0.0), 2),
    }


def run(
    client: Client,
    texts: Sequence[tuple[str, int]],
    levels: Sequence[int],
    max_requests: int,
    max_seconds: float,
    route: str = "embed",
    inputs_per_request: int = 1,
    backoff: float = 0.05,
) -> dict:
    """Every level in turn; the results dict that write_outputs writes."""
    import shlex
    import sys

    if route not in ROUTES:
        raise UserError(f"--route must be one of {', '.join(ROUTES)}, got {route!r}.")
    rows = [run_level(client, texts, c, max_requests, max_seconds, route, inputs_per_request, backoff) for c in levels]
    command = "mbedge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = summary_results(client, texts, rows, command, route, inputs_per_request)
    results["settings"].update(max_requests=max_requests, max_seconds=max_seconds)
    return results


def summary_results(
    client: Client,
    texts: Sequence[tuple[str, int]],
    rows: list[dict],
    command: str,
    route: str = "embed",
    inputs_per_request: int = 1,
) -> dict:
    """The results dict of levels already run: command, machine, settings, levels."""
    from modernbert_edge.timing import machine

    lengths = [t for _, t in texts]
    return {
        "command": command,
        "machine": machine(0),
        "settings": {
            "server": f"http://{client.host}:{client.port}",
            "route": ROUTES[route],
            "inputs_per_request": inputs_per_request,
            "texts": len(texts),
            "tokens_min": min(lengths),
            "tokens_max": max(lengths),
            "tokens_mean": round(sum(lengths) / len(lengths), 1),
        },
        "levels": rows,
    }


def markdown(results: dict) -> str:
    s = results["settings"]
    out = [
        "# mbedge loadtest",
        "",
        f"Server {s['server']}, route {s['route']}, {s['inputs_per_request']} text(s) per request, {s['texts']} texts "
        f"of {s['tokens_min']}–{s['tokens_max']} tokens (mean {s['tokens_mean']})"
        + (
            f"; at most {s['max_requests']} requests and {s['max_seconds']} s per level."
            if "max_requests" in s
            else "."
        ),
        "",
        f"Command: `{results['command']}`",
        "",
        "| clients | requests | ok | errors | requests/s | tokens/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["levels"]:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
        name = f"{r['name']}: " if r.get("name") else ""
        out.append(
            f"| {name}{r['concurrency']} | {r['requests']} | {r['ok']} | {errors} | {r['requests_per_s']} | "
            f"{r['tokens_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    if results.get("offline"):
        o = results["offline"]
        served = o.get("served_p50_ms_interleaved")
        out += ["", f"Offline: embed(all texts) in one call {o['tokens_per_s']} tokens/s; "
                f"direct embed([text]) median {o['direct_p50_ms']} ms"
                + (f", served {served} ms (interleaved)." if served is not None else ".")]  # fmt: skip
    if results.get("targets"):
        out += [""] + [f"- {line}" for line in results["targets"]]
    return "\n".join(out) + "\n"


def write_outputs(
    results: dict, out_dir: Path, name: str = "loadtest", log: Callable[[str], None] = print
) -> list[Path]:
    """name.json, name.md and (with matplotlib) name.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    files[0].write_text(json.dumps(results, indent=2) + "\n")
    files[1].write_text(markdown(results))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return files
    levels = results["levels"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [str(r["concurrency"]) for r in levels]
    a.bar(xs, [r["tokens_per_s"] or 0 for r in levels])
    a.set_xlabel("clients")
    a.set_ylabel("tokens/s")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        b.plot(xs, [r[key] or float("nan") for r in levels], marker="o", label=key)
    b.set_xlabel("clients")
    b.set_ylabel("latency ms")
    b.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=110)
    plt.close(fig)
    return files + [out_dir / f"{name}.png"]
