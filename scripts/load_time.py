"""`python scripts/load_time.py FOLDER`: load() with the tokenizer's truncating clones made on first use,
against load() plus making them (what load() did until 0.2.0); alternating, median of 10 each."""

import statistics
import sys
import time

from modernbert_edge import load

folder = sys.argv[1]
lazy, eager = [], []
for _ in range(10):
    t = time.perf_counter()
    load(folder)
    lazy.append(time.perf_counter() - t)
    t = time.perf_counter()
    tokenizer = load(folder).tokenizer
    _clones = (tokenizer._single, tokenizer._pair)  # what load() built before
    eager.append(time.perf_counter() - t)
lazy_ms, eager_ms = statistics.median(lazy) * 1e3, statistics.median(eager) * 1e3
print(f"load(): {lazy_ms:.0f} ms; with the clones made at load: {eager_ms:.0f} ms")
