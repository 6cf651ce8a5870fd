"""Benchmark `mbedge serve` against the offline runtime: the server's four targets.

Builds (or finds in --work) a random ModernBERT checkpoint of --size and its int8 export, as
`mbedge bench` does, makes --texts texts of 16-512 tokens, times the offline runtime on them, then
serves the folder (`mbedge serve`, a subprocess on 127.0.0.1) and runs closed-loop clients:

    1 client          p50 latency ≤ the direct embed([text]) median + 5 ms (the same texts, each sent
                      right after its direct call, so both see the same load)
    32 clients        tokens/s ≥ 90 % of offline embed(all texts) in one call
    64 clients        --requests-64 requests: no error but 429, none older than 30 s, RSS flat
    320 clients       (10× the 32) 429s and no timeouts; then 32 clients again at ≥ 90 % of the first 32

    python scripts/bench_serve.py --size base --threads 2 --out bench-serve   # the real run
    python scripts/bench_serve.py --size tiny --requests-64 500 --out /tmp/bench-serve   # a smoke run

Writes serve-bench.json / .md / .png in --out. Needs the dev and serve extras.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from modernbert_edge.bench import systems as sysmod
from modernbert_edge.bench.commands import DEFAULT_WORK
from modernbert_edge.serve import loadtest


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="base", choices=("base", "tiny"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--requests-64", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=1800.0, help="upper bound per level")
    p.add_argument("--max-queue-tokens", type=int, default=32 * 512)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--out", type=Path, default=Path("bench-serve"))
    args = p.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    import modernbert_edge

    job_dir = args.work / args.size / "embeddings"
    checkpoint = sysmod.make_source_checkpoint(job_dir, "embeddings", args.size, log)
    folder = sysmod.prepare("ours-int8", checkpoint, "embeddings", job_dir, log)

    # ── offline ──
    model = modernbert_edge.load(folder, threads=args.threads)
    tokenizer = model.tokenizer
    count = lambda batch: [len(e.ids) for e in tokenizer.encode(list(batch))]  # noqa: E731
    texts = loadtest.make_texts(args.texts, 16, 512, count)
    pool = [t for t, _ in texts]
    total_tokens = sum(n for _, n in texts)
    model.embed(pool[:4])
    start = time.perf_counter()
    model.embed(pool)
    offline_tps = total_tokens / (time.perf_counter() - start)
    singles = 64
    log(f"offline: {offline_tps:.0f} tokens/s in one call")

    # ── served ──
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "modernbert_edge.cli",
        "serve",
        str(folder),
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--max-queue-tokens",
        str(args.max_queue_tokens),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(cmd)
    client = loadtest.Client(f"http://127.0.0.1:{port}")
    try:
        for _ in range(600):
            try:
                client.count_tokens(["ready?"])
                break
            except Exception:  # not up yet
                time.sleep(0.2)
        levels = []

        def level(concurrency: int, requests: int, name: str) -> dict:
            log(f"{name}: {concurrency} clients, at most {requests} requests")
            row = loadtest.run_level(client, texts, concurrency, requests, args.seconds)
            row["name"] = name
            levels.append(row)
            return row

        # 1 client: each text embedded directly, then sent to the server, alternately, so that both
        # medians see the same texts and the same machine load (the server sleeps while we embed).
        direct, served = [], []
        conn = client.connection()
        for text in pool[:singles]:
            start = time.perf_counter()
            model.embed([text])
            direct.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            status, _, _ = client.post(conn, "/embed", {"inputs": [text]})
            served.append(1000 * (time.perf_counter() - start))
            assert status == 200, status
        direct_p50 = statistics.median(direct)
        log(f"1 client, interleaved: served p50 {statistics.median(served):.2f} ms, direct {direct_p50:.2f} ms")
        del model
        served_p50 = statistics.median(served)
        level(1, singles, "1 client")
        full = level(32, 2 * len(texts), "32 clients")
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append(rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        many = level(64, args.requests_64, "64 clients")
        stop.set()
        sampler.join()
        over = level(320, 4 * len(texts), "10× overload")
        after = level(32, 2 * len(texts), "32 clients after")
    finally:
        server.terminate()
        server.wait(60)

    quarter = max(1, len(samples) // 4)
    rss_first, rss_last = statistics.median(samples[:quarter] or [0]), statistics.median(samples[-quarter:] or [0])
    other_errors = {k: v for k, v in many["errors"].items() if k != "429"}
    over_bad = {k: v for k, v in over["errors"].items() if k != "429"}

    def line(name: str, ok: bool, measured: str) -> str:
        return f"{name}: {'met' if ok else 'NOT met'} ({measured})"

    targets = [
        line(
            "32 clients tokens/s ≥ 90 % of offline embed()",
            full["tokens_per_s"] >= 0.9 * offline_tps,
            f"{full['tokens_per_s']:.0f} vs {offline_tps:.0f} tokens/s, {full['tokens_per_s'] / offline_tps:.0%}",
        ),
        line(
            "1 client p50 ≤ direct embed() + 5 ms",
            served_p50 <= direct_p50 + 5,
            f"served {served_p50:.2f} ms vs direct {direct_p50:.2f} ms, interleaved on the same texts",
        ),
        line(
            f"{many['requests']} requests at 64 clients: only 429s, none older than 30 s, RSS flat",
            not other_errors and many["max_ms"] <= 30_000 and rss_last <= 1.1 * rss_first,
            f"errors {many['errors'] or 'none'}, max {many['max_ms'] / 1000:.1f} s, "
            f"RSS {rss_first:.0f} → {rss_last:.0f} MB",
        ),
        line(
            "10× overload: 429s, no timeouts, full throughput after",
            "429" in over["errors"] and not over_bad and after["tokens_per_s"] >= 0.9 * full["tokens_per_s"],
            f"errors {over['errors'] or 'none'}; "
            f"after {after['tokens_per_s']:.0f} vs {full['tokens_per_s']:.0f} tokens/s",
        ),
    ]
    results = loadtest.summary_results(client, texts, levels, f"python {' '.join(sys.argv)}")
    results["offline"] = {
        "tokens_per_s": round(offline_tps, 1),
        "direct_p50_ms": round(direct_p50, 2),
        "served_p50_ms_interleaved": round(served_p50, 2),
    }
    results["rss_mb"] = samples
    results["targets"] = targets
    files = loadtest.write_outputs(results, args.out, "serve-bench")
    print(loadtest.markdown(results))
    print("wrote " + ", ".join(map(str, files)))


if __name__ == "__main__":
    main()
