"""Keeping the model busy: decoding the next images and writing the last results run beside it.

Folder prediction (both engines) and evaluation read and decode images, run the model, then encode and
write (or score) each result. `Prefetch` decodes ahead in one background thread and `Writer` writes behind
in another, so the model's thread only runs the model. Both keep their items in order (one thread each)
and hold at most `depth` items, and never more than `max_bytes` of them beyond the first; the callers
count `depth` in batches on both sides (the writer's items are single masks), so at most 2 x depth + 3
batches are alive at once (depth queued and one being made on each side, one in the model).
Pillow's decoders and encoders, zlib and numpy's copies run without the GIL, as the model's kernels do,
so threads overlap them without copying images between processes. The overlap fills the cores the
model leaves idle; where its threads already keep every core busy, there is little left to gain.

Depth 0 runs everything in the caller's thread, one step after the other: the sequential order, with the
same outputs ($MASKSMITH_PIPELINE_DEPTH=0; tests compare against it).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from masksmith.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

DEPTH_ENV_VAR = "MASKSMITH_PIPELINE_DEPTH"
# Two batches ahead are enough to hide a decode behind a batch of the model; more only costs memory.
DEFAULT_DEPTH = 2
MAX_DEPTH = 64
# Large images (a 25 MP photo decodes to 75 MB) are not piled up: past this, one item at a time each side.
DEFAULT_MAX_BYTES = 256 * 2**20


def pipeline_depth() -> int:
    """Items each side holds: $MASKSMITH_PIPELINE_DEPTH (0: sequential), else DEFAULT_DEPTH."""
    text = os.environ.get(DEPTH_ENV_VAR, "").strip()
    if not text:
        return DEFAULT_DEPTH
    if not text.isdigit() or int(text) > MAX_DEPTH:
        raise ConfigError(f"{DEPTH_ENV_VAR}: expected a whole number from 0 (sequential) to {MAX_DEPTH}, got {text!r}")
    return int(text)


class _Bounded(Generic[T]):
    """A FIFO between two threads that holds at most `depth` items and, beyond its first, `max_bytes`."""

    def __init__(self, depth: int, max_bytes: int):
        self.depth, self.max_bytes = max(1, depth), max_bytes
        self.items: deque[tuple[T, int]] = deque()
        self.bytes = 0
        self.closed = False  # the consumer is gone: the producer stops
        self.changed = threading.Condition()

    def put(self, item: T, size: int) -> bool:
        """Wait for room and append; False when the other side has closed."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or not self.items or (
                len(self.items) < self.depth and self.bytes + size <= self.max_bytes))
            if self.closed:
                return False
            self.items.append((item, size))
            self.bytes += size
            self.changed.notify_all()
            return True

    def get(self, closed: T) -> T:
        """The first item, waiting for one; `closed` once the queue is closed."""
        with self.changed:
            self.changed.wait_for(lambda: self.closed or bool(self.items))
            if self.closed:
                return closed
            item, size = self.items.popleft()
            self.bytes -= size
            self.changed.notify_all()
            return item

    def close(self) -> None:
        """Drop what is queued and release a waiting producer."""
        with self.changed:
            self.closed = True
            self.items.clear()
            self.bytes = 0
            self.changed.notify_all()


_END = object()


class Prefetch(Generic[T, R]):
    """`load(item)` for each item, run `depth` items ahead in a background thread; iterate for (item, result).

    An exception `load` raises is raised by the iteration at that item, after the results before it. Use
    as a context manager: leaving it (an error, Ctrl-C) stops the thread after the item it is loading.
    """

    def __init__(self, items: Iterable[T], load: Callable[[T], R], *, depth: int,
                 size: Callable[[R], int] = lambda _: 0, max_bytes: int = DEFAULT_MAX_BYTES):
        self._items, self._load, self._size, self.depth = items, load, size, depth
        self._queue: _Bounded[tuple[object, object, BaseException | None]] = _Bounded(depth, max_bytes)
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="masksmith-prefetch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                result = self._load(item)
                if not self._queue.put((item, result, None), self._size(result)):
                    return
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, which raises it in its own thread)
            self._queue.put((_END, None, error), 0)
            return
        self._queue.put((_END, None, None), 0)

    def __iter__(self) -> Iterator[tuple[T, R]]:
        if self._thread is None:
            for item in self._items:
                yield item, self._load(item)
            return
        while True:
            item, result, error = self._queue.get((_END, None, None))
            if error is not None:
                raise error
            if item is _END:
                return
            yield item, result  # type: ignore[misc]

    def close(self) -> None:
        """Stop the thread (it finishes the item it is loading) and drop what it loaded ahead."""
        self._queue.close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Prefetch[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Writer:
    """Runs submitted jobs in order in one background thread, at most `depth` waiting.

    The first exception a job raises stops the jobs after it; `submit` and `close` raise it in the
    caller's thread. Leaving the context manager on the caller's own error still runs the waiting jobs;
    on Ctrl-C it drops them and waits for the running one, so no write is cut in half by this process.
    """

    def __init__(self, *, depth: int, max_bytes: int = DEFAULT_MAX_BYTES):
        self.depth = depth
        self._queue: _Bounded[Callable[[], None] | None] = _Bounded(depth, max_bytes)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="masksmith-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get(None)
            if job is None:
                return
            try:
                job()
            except BaseException as error:  # noqa: BLE001  (raised in the caller's thread)
                self._error = error
                self._queue.close()
                return

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], None], size: int = 0) -> None:
        """Queue `job` (its results weigh `size` bytes), waiting while the queue is full; depth 0 runs it here."""
        if self._thread is None:
            job()
            return
        self._raise()
        if not self._queue.put(job, size):
            self._raise()

    def close(self) -> None:
        """Wait for every job; raise the first error one raised."""
        if self._thread is not None:
            self._queue.put(None, 0)
            self._thread.join()
            self._thread = None
        self._raise()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
            return
        if issubclass(kind, Exception):
            # The caller failed (a model error): what it handed over is still written, as in sequential
            # order, and its error is the one raised.
            self._queue.put(None, 0)
        else:
            self._queue.close()  # Ctrl-C: the waiting jobs are dropped, the running one finishes
        if self._thread is not None:
            self._thread.join()
            self._thread = None
