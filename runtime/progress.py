"""A progress line on stderr: '[#####     ] 1200/5000 inputs, 85/s', redrawn in place (no dependency).

Used by `mbedge run` (runtime/stream.py) and by `Model.embed(..., show_progress=True)` / `embed_iter`.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts inputs done; when enabled, redraws one line on stderr after each update."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.done, self.start = total, enabled, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        if self.total:
            filled = int(30 * min(self.done, self.total) / self.total)
            bar = f"[{'#' * filled}{' ' * (30 - filled)}] {self.done}/{self.total}"
        else:
            bar = f"{self.done}"
        sys.stderr.write(f"\r{bar} inputs, {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
