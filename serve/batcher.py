"""The cross-request batcher: one queue per model, a scheduler that forms batches, one model thread.

    handler ─ submit(Job) ─ queue (bounded by tokens: QueueFull → 429)
    scheduler (asyncio task) ─ waits for the oldest job at most max_wait, or until the queue holds
                               batch_tokens ─ takes jobs with the same task and options, oldest
                               first, up to batch_tokens ─ model thread: model.run_encoded(the jobs'
                               encodings joined, errors="return") ─ rows split back to each job's future

A job carries its inputs as the handler encoded and counted them (`Model.encode`): what was counted
for admission is what runs, and nothing is tokenized twice. The model sorts the combined rows by
length and batches them as `Model.plan` does, so a job's rows are what `load(folder)` gives for the
same inputs. Under load the model is busy while jobs
arrive, so the next batch forms at once; a lone job waits at most max_wait. A job whose client
went away is dropped from the queue before it runs (one already running is finished and discarded).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.encoded import Encoded


class QueueFull(Exception):
    """The queue holds too many tokens; retry_after is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request's encoded inputs (a runtime `Encoded`; /tokenize: (text, Encoding) pairs) for one
    task with one set of options; `key` says which jobs may share a batch."""

    task: str
    work: object  # Encoded, or /tokenize's list of (text, Encoding)
    options: dict
    tokens: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    @property
    def key(self) -> tuple:
        return (self.task, tuple(sorted((k, _hashable(v)) for k, v in self.options.items())))


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


@dataclass
class BatchStats:
    """What one batch was: for metrics."""

    task: str
    jobs: int
    rows: int
    tokens: int
    seconds: float


class Batcher:
    """The queue and scheduler of one model (`model`: a loaded runtime Model)."""

    def __init__(
        self,
        model: object,
        name: str,
        batch_tokens: int,
        max_wait_s: float,
        max_queue_tokens: int,
        on_batch: Callable[[str, BatchStats], None] | None = None,
        tasks: dict[str, Callable[..., list]] | None = None,
    ) -> None:
        """tasks: jobs that run without the model ({task: function(all jobs' work, **options) -> rows}),
        queued and counted like the rest (/tokenize's answers)."""
        self.model = model
        self.tasks = tasks or {}
        self.name = name
        self.batch_tokens = batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_tokens = max_queue_tokens
        self.on_batch = on_batch
        self.queue: deque[Job] = deque()
        self.queued_tokens = 0
        self.running = 0  # jobs in the batch now on the model thread
        self.tokens_per_s = 0.0  # of the last batch, for Retry-After
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # ── the handler's side ──────────────────────────────────────────────────────────────────────

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Fail what is still queued, stop the scheduler and the model thread."""
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(UserError("the server is shutting down."))
        self.queue.clear()
        self.queued_tokens = 0
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def submit(self, task: str, work: object, options: dict, tokens: int) -> Job:
        """Queue a job; QueueFull when its tokens do not fit (the caller answers 429)."""
        if self.queued_tokens + tokens > self.max_queue_tokens:
            pending = self.queued_tokens + tokens
            rate = self.tokens_per_s or float(self.batch_tokens)
            raise QueueFull(max(1, math.ceil(pending / rate)))
        job = Job(task, work, options, tokens, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.queued_tokens += tokens
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it has not started."""
        if job.cancelled or job.future.done():
            return
        job.cancelled = True
        try:
            self.queue.remove(job)
            self.queued_tokens -= job.tokens
        except ValueError:
            pass  # already taken into a batch: it finishes and its rows are discarded
        job.future.cancel()

    # ── the scheduler ───────────────────────────────────────────────────────────────────────────

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self.queue[0].arrived + self.max_wait_s
            while self.queue and self.queued_tokens < self.batch_tokens:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            self.running = len(batch)
            try:
                outcome = await loop.run_in_executor(self.executor, self._run, batch)
            finally:
                self.running = 0
            for job, rows in zip(batch, outcome, strict=True):
                if job.future.done():
                    continue
                if isinstance(rows, BaseException):
                    job.future.set_exception(rows)
                else:
                    job.future.set_result(rows)

    def _take(self) -> list[Job]:
        """The oldest job and those after it with the same task and options, up to batch_tokens."""
        if not self.queue:
            return []
        key = self.queue[0].key
        batch, tokens, kept = [], 0, deque()
        while self.queue:
            job = self.queue.popleft()
            if job.key == key and (not batch or tokens + job.tokens <= self.batch_tokens):
                batch.append(job)
                tokens += job.tokens
                self.queued_tokens -= job.tokens
            else:
                kept.append(job)
                if job.key == key:  # the budget is full; keep the rest in order
                    kept.extend(self.queue)
                    self.queue.clear()
        self.queue = kept
        return batch

    def _run(self, batch: Sequence[Job]) -> list:
        """On the model thread: all jobs' encoded inputs in one run, split back per job."""
        start = time.perf_counter()
        try:
            if batch[0].task in self.tasks:  # no model run (/tokenize), queued like the rest
                rows = self.tasks[batch[0].task]([x for job in batch for x in job.work], **batch[0].options)
            else:
                rows = self.model.run_encoded(Encoded.join([job.work for job in batch]), errors="return")
        except Exception as e:  # options every job of the batch shares; each job gets it
            return [e] * len(batch)
        seconds = time.perf_counter() - start
        tokens = sum(job.tokens for job in batch)
        self.tokens_per_s = tokens / seconds if seconds > 0 else self.tokens_per_s
        if self.on_batch is not None:
            self.on_batch(self.name, BatchStats(batch[0].task, len(batch), len(rows), tokens, seconds))
        out, start_row = [], 0
        for job in batch:
            out.append(rows[start_row : start_row + len(job.work)])
            start_row += len(job.work)
        return out
