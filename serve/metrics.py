"""The Prometheus metrics of `mbedge serve`, on the app's own registry.

requests   mbedge_requests_total{route, status}, mbedge_request_duration_seconds{route}
batches    mbedge_batch_rows / mbedge_batch_tokens{model, task} (histograms), mbedge_tokens_total{model, task},
           mbedge_tokens_per_second{model} (last batch); every model route's batches, /rerank and /tokenize too
queues     mbedge_queue_tokens / mbedge_queue_requests{model}
process    process_* (CPU seconds, resident memory, open files, start time) and python_info
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from modernbert_edge.serve.batcher import Batcher, BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKENS_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    """The server's metrics; `on_batch` is the batchers' callback, `render` the /metrics answer."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "mbedge_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "mbedge_request_duration_seconds",
            "Request latency by route.",
            ["route"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        per_batch = ["model", "task"]
        self.batch_rows = Histogram(
            "mbedge_batch_rows", "Inputs per batch.", per_batch, registry=r, buckets=ROWS_BUCKETS
        )
        self.batch_tokens = Histogram(
            "mbedge_batch_tokens", "Tokens per batch.", per_batch, registry=r, buckets=TOKENS_BUCKETS
        )
        self.tokens_total = Counter("mbedge_tokens", "Tokens run through the model.", per_batch, registry=r)
        self.tokens_rate = Gauge(
            "mbedge_tokens_per_second", "Tokens per second of the last batch.", ["model"], registry=r
        )
        self.queue_tokens = Gauge("mbedge_queue_tokens", "Tokens waiting in the queue.", ["model"], registry=r)
        self.queue_jobs = Gauge("mbedge_queue_requests", "Requests waiting in the queue.", ["model"], registry=r)

    def on_batch(self, name: str, stats: BatchStats) -> None:
        self.batch_rows.labels(name, stats.task).observe(stats.rows)
        self.batch_tokens.labels(name, stats.task).observe(stats.tokens)
        self.tokens_total.labels(name, stats.task).inc(stats.tokens)
        self.tokens_rate.labels(name).set(stats.tokens / stats.seconds if stats.seconds else 0.0)

    def watch(self, batcher: Batcher) -> None:
        """Queue gauges that read the batcher's queue when scraped."""
        self.queue_tokens.labels(batcher.name).set_function(lambda: batcher.queued_tokens)
        self.queue_jobs.labels(batcher.name).set_function(lambda: len(batcher.queue))

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
