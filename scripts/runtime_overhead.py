"""What the runtime's call costs over a plain session on the same model file, per shape and spinning.

    python scripts/runtime_overhead.py MODEL_DIR [--threads 2] [--shapes 1x128,8x128] [--rounds 15]

For each shape (B texts of S tokens each, built from the folder's tokenizer) it times, interleaved
round by round with a short idle gap before each call (bursty use):
  embed  - the runtime's Model.embed(texts): tokenize, plan, run, pool
  run    - the runtime's Model.run(ids): checks and the session call
  plain  - create_session(model file).run on the same ids, the same threads and spinning
for each spinning setting, and prints the median of each with its ratio to `plain` of the same
setting (the runtime's own overhead) and to `plain` with spinning on (ONNX Runtime's default).
The last column is the process CPU time burnt during an idle second after a call (spinning threads
that keep a core busy between calls). Timings on a shared machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from modernbert_edge.runtime import Model, load
from modernbert_edge.runtime.session import create_session

GAP_S = 0.1  # idle time before each timed call (longer than a spinning pool keeps spinning)


def texts_of_length(model: Model, rows: int, tokens: int) -> list[str]:
    """`rows` different texts that each tokenize to exactly `tokens` tokens (special tokens included)."""
    words = ("alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike", "a", "b", "c")

    def length(text: str) -> int:
        return len(model.tokenizer.encode([text])[0].ids)

    texts = []
    for b in range(rows):
        text, i = words[b % len(words)], b
        while length(text) < tokens:
            for word in words[i % len(words) :] + words:  # the next word that does not overshoot
                if length(f"{text} {word}") <= tokens:
                    text = f"{text} {word}"
                    break
            else:
                raise SystemExit(f"could not build a text of exactly {tokens} tokens with this tokenizer")
            i += 1
        texts.append(text)
    return texts


def idle_cpu_s(call: Callable[[], object]) -> float:
    """Process CPU seconds used during one idle second right after `call()`."""
    call()
    start = time.process_time()
    time.sleep(1.0)
    return time.process_time() - start


def measure(folder: str, threads: int, rows: int, tokens: int, rounds: int, spinning: bool | str) -> dict[str, float]:
    """{call: median seconds} for embed, run and plain with one spinning setting, plus idle CPU seconds."""
    model = load(folder, threads=threads, spinning=spinning)
    session = create_session(model.info.model_path, threads, spinning=spinning)
    texts = texts_of_length(model, rows, tokens)
    ids = np.array([e.ids for e in model.tokenizer.encode(texts)], dtype=np.int64)  # (B, S)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    calls = {
        "embed": lambda: model.embed(texts),
        "run": lambda: model.run(ids),
        "plain": lambda: session.run(None, feed),
    }
    for call in calls.values():  # warm-up
        call()
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            time.sleep(GAP_S)
            t0 = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - t0)
    result = {key: statistics.median(t) for key, t in times.items()}
    result["idle_cpu_s"] = idle_cpu_s(calls["plain"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="1x128,8x128", help="BxS,BxS,...")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--spinning", default="off,brief,on", help="settings to compare, comma-separated")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "B,S,spinning" measured in this process
    args = parser.parse_args()
    if args.one:
        rows, tokens, spinning = args.one.split(",")
        spinning = {"off": False, "on": True}.get(spinning, spinning)  # as bools, which every version takes
        result = measure(args.model_dir, args.threads, int(rows), int(tokens), args.rounds, spinning)
        print(json.dumps(result))
        return
    for shape in args.shapes.split(","):
        rows, tokens = (int(x) for x in shape.split("x"))
        medians = {}
        for spinning in args.spinning.split(","):  # one process each: spinning pools must not overlap other calls
            command = [sys.executable, __file__, args.model_dir, "--threads", str(args.threads)]
            command += ["--rounds", str(args.rounds), "--one", f"{rows},{tokens},{spinning}"]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            medians[spinning] = json.loads(out.strip().splitlines()[-1])
        print(f"\n{rows}x{tokens}, {args.threads} threads, median of {args.rounds} interleaved rounds")
        print(f"{'call':<7}{'spinning':<10}{'ms':>9}{'/ plain same':>14}{'/ plain on':>12}{'idle cpu s':>12}")
        for spinning, result in medians.items():
            for kind in ("embed", "run", "plain"):
                value = result[kind]
                idle = f"{result['idle_cpu_s']:.2f}" if kind == "plain" else ""
                print(
                    f"{kind:<7}{spinning:<10}{value * 1e3:>9.1f}{value / result['plain']:>14.2f}"
                    f"{value / medians.get('on', result)['plain']:>12.2f}{idle:>12}"
                )


if __name__ == "__main__":
    main()
