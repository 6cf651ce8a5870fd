"""Measure `mbedge serve` under abuse (issue 24), on tiny models, against 127.0.0.1 only.

    python scripts/serve_abuse.py --slow 2000 --out serve-abuse.json

Starts a server with the default limits (fill-mask, question-answering and feature-extraction tiny
models), then measures: the server's RSS around the issue's 4 KB /answer request and 28 KB
/fill_mask request (and the largest /answer the limits allow); /health and /embed latency from a
second client while one client holds 2 × SLOW connections that never finish their headers; how long
an idle keep-alive connection and a stalled 2 MB upload stay open; how long SIGTERM takes with a
half-sent body pending. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil


def _folders(root: Path) -> dict[str, Path]:
    from modernbert_edge.bench.checkpoints import make_checkpoint
    from modernbert_edge.export.exporter import export

    out = {}
    for name, task in (("emb", "feature-extraction"), ("mask", "fill-mask"), ("qa", "question-answering")):
        export(str(make_checkpoint(root / f"ckpt-{name}", task)), root / name, log=lambda _m: None)
        out[name] = root / name
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(folders: dict[str, Path], *args: str) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    cmd = [sys.executable, "-m", "modernbert_edge.cli", "serve", *(f"{n}={f}" for n, f in folders.items()),
           "--port", str(port), "--threads", "1", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not start:\n" + log.read_text())


def _peak_rss(pid: int, call) -> tuple[object, float, float]:  # noqa: ANN001
    """(call(), RSS before, peak RSS during) in MB, sampled every 10 ms."""
    p = psutil.Process(pid)
    before = p.memory_info().rss / 2**20
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], p.memory_info().rss / 2**20)
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        result = call()
    finally:
        done.set()
        t.join()
    return result, round(before, 1), round(peak[0], 1)


def _timed(call) -> tuple[object, float]:  # noqa: ANN001
    t0 = time.perf_counter()
    result = call()
    return result, round(time.perf_counter() - t0, 3)


def _closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes `sock` (None: still open after `limit`)."""
    sock.settimeout(limit)
    t0 = time.perf_counter()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return round(time.perf_counter() - t0, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", type=int, default=2000, help="slow connections per wave (two waves)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = _folders(Path(tmp))
        proc, url, log = _start(folders)
        post = lambda path, body: httpx.post(url + path, json=body, timeout=120)  # noqa: E731
        issue_answer = {"question": "who", "context": "word " * 700, "max_answer_len": 10**9, "top_k": 10**9}
        largest = {**issue_answer, "top_k": 100, "max_answer_len": 512, "truncate": True}
        probes = (("answer_issue", "/answer", issue_answer), ("answer_largest", "/answer", largest),
                  ("fill_mask_issue", "/fill_mask", {"inputs": "[MASK] " * 4000}),
                  ("fill_mask_16_masks", "/fill_mask", {"inputs": "[MASK] " * 16, "top_k": 100}))  # fmt: skip
        for name, path, body in probes:
            r, before, peak = _peak_rss(proc.pid, lambda p=path, b=body: post(p, b))
            report[name] = {"status": r.status_code, "answer_bytes": len(r.content), "rss_mb_before": before,
                            "rss_mb_peak": peak}  # fmt: skip

        # 2 × SLOW connections that never finish their head, from this one client
        slow: list[socket.socket] = []
        waves = []
        for _ in range(2):
            for _ in range(a.slow):
                try:
                    c = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
                    c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    slow.append(c)
                except OSError:
                    pass
            health, t_health = _timed(lambda: httpx.get(url + "/health", timeout=30).status_code)
            embed, t_embed = _timed(lambda: post("/embed", {"inputs": "alice works at acme"}).status_code)
            waves.append({"slow_connections_opened": len(slow), "health": health, "health_s": t_health,
                          "embed": embed, "embed_s": t_embed})  # fmt: skip
        open_after = sum(1 for c in slow if _closed_after(c, 0.001) is None)
        for c in slow:
            c.close()
        report["slow_connections"] = {"waves": waves, "still_open_of_ours": open_after}

        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            idle.recv(65536)
            report["idle_keep_alive_closed_after_s"] = _closed_after(idle, 60)
        with socket.create_connection(("127.0.0.1", port)) as nothing:
            report["silent_connection_closed_after_s"] = _closed_after(nothing, 60)
        with socket.create_connection(("127.0.0.1", port)) as up:
            up.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n" + b" " * 65536)
            report["stalled_2mb_upload_closed_after_s"] = _closed_after(up, 120)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        report["rss_mb_end"] = round(rss, 1)

        with socket.create_connection(("127.0.0.1", port)) as half:
            half.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n" + b" " * 1000)
            time.sleep(0.3)
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
            report["sigterm_half_sent_body"] = {"exit": code, "seconds": round(time.perf_counter() - t0, 3)}
        text = log.read_text()
        report["log"] = {"bytes": len(text), "tracebacks": text.count("Traceback"),
                         "too_many_open_files": text.count("Too many open files")}  # fmt: skip
    line = json.dumps(report, indent=2)
    print(line)
    if a.out:
        a.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
