"""The measuring instruments every benchmark in the project shares (numpy only; no torch).

    interleave(names, repeats, run)   `repeats` rounds, every name once per round, the order rotated
    time_calls(calls, repeats)        one warm-up call each, then interleave() with a clock around each call
    summarize(times_s)                median and p90 in ms
    peak_rss_mb()                     this process's peak resident set size
    mixed_lengths(n, lo, hi, seed)    the mixed-length batch: n lengths drawn uniformly from [lo, hi]
    cosines(a, b)                     row-wise cosine of two (..., D) arrays
    sample_text(n, seed)              deterministic pseudo-English lines (load tests, small tokenizers)
    machine(threads)                  the CPU, cores, load and package versions a measurement ran with

Benchmarks (bench/), the quantizer's speed line, the demo, `mbedge loadtest` and the Ray projection
all time with these; the module sits below all of them (numpy only).

Interleaving (a round runs every system once) makes a noisy shared machine hit every system alike;
rotating the first system each round spreads what the first call of a round pays.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np


def interleave(
    names: Sequence[str],
    repeats: int,
    run: Callable[[str], float | None],
    on_round: Callable[[int], None] = lambda _r: None,
) -> dict[str, list[float]]:
    """Seconds per run of each name: round r runs names[r % n:] + names[:r % n]. run(name) returns
    the seconds one run took, or None to drop that name from the remaining rounds (it failed)."""
    times: dict[str, list[float]] = {n: [] for n in names}
    dropped: set[str] = set()
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in [*names[k:], *names[:k]]:
            if name in dropped:
                continue
            seconds = run(name)
            if seconds is None:
                dropped.add(name)
            else:
                times[name].append(seconds)
        on_round(r)
    return times


def clock(fn: Callable[[], object]) -> float:
    """Seconds one fn() call takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(calls: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """One warm-up call of each, then `repeats` interleaved rounds; seconds per timed call."""
    for fn in calls.values():
        fn()
    return interleave(list(calls), repeats, lambda name: clock(calls[name]))


def summarize(times_s: Sequence[float]) -> dict[str, float]:
    """{"median_ms", "p90_ms"} of a list of seconds."""
    return {
        "median_ms": 1e3 * float(np.median(times_s)),
        "p90_ms": 1e3 * float(np.percentile(times_s, 90)),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def mixed_lengths(n: int, low: int, high: int, seed: int) -> list[int]:
    """n lengths in tokens, uniform over [low, high], the same for a given seed."""
    return np.random.default_rng(seed).integers(low, high + 1, size=n).tolist()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (..., D) arrays, in float64 -> (N,) with N the product of the leading dims."""
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(den, 1e-30)


_WORDS = (
    "the quick brown fox jumps over a lazy dog while the model reads long documents about paris france "
    "london music science python code function return value error data table query answer question context "
    "alice bob works at acme corp in berlin and new york city since march of last year"
).split()


def sample_text(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English lines (4-16 words each)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) + "." for _ in range(n_sentences)]


PACKAGES = (
    "modernbert-edge", "onnxruntime", "openvino", "tokenizers", "numpy",
    "onnx", "onnxscript", "torch", "transformers", "optimum",
)  # fmt: skip


def machine(threads: int | None) -> dict:
    """The CPU as the int8 kernels see it (modernbert_edge.cpu), cores, threads, load average, package versions."""
    from modernbert_edge.cpu import cpu_info
    from modernbert_edge.folders import package_versions

    info = cpu_info()
    return {
        "cpu": info.name,
        "cpu_info": info.to_dict(),
        "cpu_line": info.line(),
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": package_versions(PACKAGES),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
