"""Length-sorted, token-budget batching against input order with plain padding, on the same graph.

    python -m modernbert_edge.runtime.measure MODEL_DIR [--texts 64] [--min-tokens 16] [--max-tokens 1000]
        [--batch-size 32] [--batch-tokens 8192] [--threads N]

All modes tokenize the same texts first (not timed), then time only the graph calls:
"padding-free" is the runtime's default plan (sorted, under the token budget, only equal lengths
share a batch), "padded-budget" the same with padding allowed up to the budget (max_padding=None),
"input-order" fixed groups of batch_size texts in input order, each padded to its longest. Each
mode runs in its own subprocess, so its peak memory (ru_maxrss) is its own. `compare_batching`
returns the figures as a dict for the benchmark; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from modernbert_edge.runtime.batching import DEFAULT_BATCH_TOKENS, pad, padded_tokens
from modernbert_edge.runtime.model import Model, load

MODES = ("padded-budget", "padding-free", "input-order")
_WORDS = (
    "the model reads long documents about science music history and code while people ask short questions "
    "on the train to work in the morning and answers come back in under a second from a small device"
).split()


def mixed_length_texts(
    model: Model, n: int = 64, min_tokens: int = 16, max_tokens: int = 1000, seed: int = 0
) -> list[str]:
    """n texts whose lengths in tokens (special tokens included) are spread evenly over [min, max]."""
    rng = random.Random(seed)
    budget = min(max_tokens, model.max_length)
    words = " ".join(rng.choice(_WORDS) for _ in range(2 * budget))
    enc = model.tokenizer.encode([words])[0]
    content = [o for o, special in zip(enc.offsets, enc.special_tokens_mask, strict=True) if not special]
    texts = []
    for _ in range(n):
        length = rng.randint(min_tokens, budget) - model.tokenizer.num_special_tokens()
        texts.append(words[: content[max(length, 1) - 1][1]])
    return texts


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_mode(
    model_dir: str | Path,
    mode: str,
    n: int = 64,
    min_tokens: int = 16,
    max_tokens: int = 1000,
    batch_size: int = 32,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    threads: int | None = None,
) -> dict:
    """Time one mode in this process: graph seconds, padded tokens, largest batch, peak RSS."""
    max_padding = {"padding-free": 0.0, "padded-budget": None}.get(mode)
    model = load(model_dir, threads=threads, batch_tokens=batch_tokens, max_padding=max_padding)
    texts = mixed_length_texts(model, n, min_tokens, max_tokens)
    rows = [e.ids for e in model.tokenizer.encode(texts)]
    lengths = [len(r) for r in rows]
    if mode in ("padded-budget", "padding-free"):
        batches = model.plan(lengths)
    elif mode == "input-order":
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model.run(*pad([rows[0][:8]], model.info.pad_token_id))  # warm-up
    loaded_mb = _rss_mb()
    start = time.perf_counter()
    for batch in batches:
        model.run(*pad([rows[i] for i in batch], model.info.pad_token_id))
    seconds = time.perf_counter() - start
    total, largest = padded_tokens(batches, lengths)
    return {
        "mode": mode,
        "seconds": seconds,
        "batches": len(batches),
        "real_tokens": sum(lengths),
        "padded_tokens": total,
        "largest_batch_tokens": largest,
        "rss_after_load_mb": round(loaded_mb, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def compare_batching(
    model_dir: str | Path,
    n: int = 64,
    min_tokens: int = 16,
    max_tokens: int = 1000,
    batch_size: int = 32,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    threads: int | None = None,
) -> dict:
    """Every mode, each in a fresh subprocess; speedups are input-order seconds / the mode's seconds."""
    results = {}
    for mode in MODES:
        args = [sys.executable, "-m", "modernbert_edge.runtime.measure", str(model_dir), "--mode", mode]
        args += ["--texts", str(n), "--min-tokens", str(min_tokens), "--max-tokens", str(max_tokens)]
        args += ["--batch-size", str(batch_size), "--batch-tokens", str(batch_tokens)]
        args += ["--threads", str(threads)] if threads is not None else []
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"measuring {mode} failed:\n{proc.stderr[-2000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "model_dir": str(model_dir),
        "texts": n,
        "tokens": [min_tokens, max_tokens],
        "batch_size": batch_size,
        "batch_tokens": batch_tokens,
        **results,
        "speedup": {m: results["input-order"]["seconds"] / results[m]["seconds"] for m in MODES[:2]},
    }


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--mode", choices=MODES, help="run one mode in this process (used by compare_batching)")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32, help="input-order group size")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--threads", type=int)
    a = parser.parse_args()
    common = dict(n=a.texts, min_tokens=a.min_tokens, max_tokens=a.max_tokens, batch_size=a.batch_size)
    common.update(batch_tokens=a.batch_tokens, threads=a.threads)
    if a.mode:
        print(json.dumps(run_mode(a.model_dir, a.mode, **common)))
    else:
        print(json.dumps(compare_batching(a.model_dir, **common), indent=2))


if __name__ == "__main__":
    main()
