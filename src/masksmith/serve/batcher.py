"""Micro-batching: requests that arrive together and share a network input shape run as one batch.

One worker thread owns the model. It takes the oldest waiting job and, while more jobs are on their
way (announced: requests received but still being read or decoded), waits up to `max_wait_s`
(counted from that job's arrival) for jobs of the same key until `max_batch` are there; then it runs
them in one call. A lone request is never held back. While a batch runs, new jobs queue up, so under
load batches fill without any waiting. The queue is bounded: `submit` raises QueueFull instead of
letting memory and latency grow without end. The batcher keeps the recent time per job, so a server
can tell when its queue is longer than its clients will wait (`expected_wait_s`, `busy_s`).
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Sequence, TypeVar

Item = TypeVar("Item")


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs."""


@dataclass
class Done:
    """A job's result and where its time went."""

    value: Any
    queue_s: float  # from submit to the start of its batch
    inference_s: float  # the whole batch's run
    batch_size: int


@dataclass
class _Job(Generic[Item]):
    item: Item
    key: Hashable
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[Item]):
    """Runs `run_batch(items) -> results` on a worker thread over batches of jobs with equal `key(item)`."""

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Any]], key: Callable[[Item], Hashable], *,
                 max_batch: int = 8, max_wait_s: float = 0.005, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        self._run_batch = run_batch
        self._key = key
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue = max(1, max_queue)
        self._on_batch = on_batch
        self._arriving = 0  # jobs announced but not yet submitted
        self._jobs: collections.deque[_Job[Item]] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._running = 0  # jobs in the batch being run now
        self._batch_started: float | None = None
        self._seconds_per_job = 0.0  # recent model time per job (a moving average)
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch (not counting the batch that runs now)."""
        return len(self._jobs)

    @property
    def running(self) -> int:
        """Jobs in the batch that runs now."""
        return self._running

    @property
    def busy_s(self) -> float:
        """How long the batch that runs now has been running (0 when idle)."""
        started = self._batch_started
        return 0.0 if started is None else time.perf_counter() - started

    def expected_wait_s(self) -> float:
        """About how long a job submitted now would wait for its batch: the jobs ahead at the recent time per job."""
        with self._changed:
            return (len(self._jobs) + self._running) * self._seconds_per_job

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is queued or running (True), or `timeout` seconds pass (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._jobs and not self._running, timeout)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._work, name="masksmith-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every job already queued, then end the worker thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def announce(self) -> None:
        """Say that a job is on its way (its request is being read or decoded): batches wait for it."""
        with self._changed:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced job will not come after all (its request failed before `submit`)."""
        with self._changed:
            self._arriving = max(0, self._arriving - 1)
            self._changed.notify_all()

    def submit(self, item: Item, announced: bool = False) -> Future:
        """Queue one item; its Future gets a `Done`. Raises QueueFull when max_queue jobs are waiting.

        `announced`: this is the job an `announce()` promised (it is no longer on its way, either way).
        """
        job: _Job[Item] = _Job(item, self._key(item))
        with self._changed:
            if announced:
                self._arriving = max(0, self._arriving - 1)
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"{len(self._jobs)} requests are waiting, the queue limit")
            self._jobs.append(job)
            self._changed.notify_all()
        return job.future

    def _same_key(self, key: Hashable) -> int:
        return sum(1 for job in self._jobs if job.key == key)

    def _next_batch(self) -> list[_Job[Item]] | None:
        with self._changed:
            while not self._jobs:
                if self._stopping:
                    return None
                self._changed.wait()
            first = self._jobs[0]
            deadline = first.enqueued + self.max_wait_s
            # Wait for company only while more is coming; on shutdown run what is there at once.
            while not self._stopping and self._same_key(first.key) < self.max_batch and self._arriving > 0:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._changed.wait(left)
            batch, rest = [], collections.deque()
            for job in self._jobs:
                (batch if job.key == first.key and len(batch) < self.max_batch else rest).append(job)
            self._jobs = rest
            self._running = len(batch)
            self._batch_started = time.perf_counter()
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A job whose request gave up (timeout, disconnect) while queued is dropped, not computed.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                started = time.perf_counter()
                try:
                    results = list(self._run_batch([job.item for job in live]))
                    if len(results) != len(live):
                        raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
                except BaseException as error:  # every waiting request gets the error, the worker lives on
                    for job in live:
                        job.future.set_exception(error)
                else:
                    seconds = time.perf_counter() - started
                    per_job = seconds / len(live)
                    previous = self._seconds_per_job or per_job
                    self._seconds_per_job = 0.7 * previous + 0.3 * per_job
                    # Counted before the requests are released: a client that reads /metrics right after
                    # its answer sees its batch (counted after, the two would race).
                    if self._on_batch is not None:
                        self._on_batch(len(live), seconds)
                    for job, result in zip(live, results):
                        job.future.set_result(Done(result, started - job.enqueued, seconds, len(live)))
            with self._changed:
                self._running = 0
                self._batch_started = None
                self._changed.notify_all()
