"""Prometheus text-format metrics, kept by hand: request counts, latency and batch-size histograms."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative-bucket histogram as Prometheus exposes it."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        """The _bucket, _sum and _count sample lines."""
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip((*map(_number, self.buckets), "+Inf"), self.counts):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {_number(self.total)}", f"{name}_count{suffix} {self.count}"]
        return out


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{value:.1f}"


class Metrics:
    """Counters and histograms of one server; `render` gives the /metrics page."""

    def __init__(self, max_batch: int):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_sizes = Histogram(tuple(float(n) for n in range(1, max(1, max_batch) + 1)))
        self.batch_seconds = Histogram(LATENCY_BUCKETS)

    def request(self, route: str, status: int, seconds: float | None) -> None:
        """Count a finished request (latency only for /v1/segment answers)."""
        with self._lock:
            self.requests[(route, status)] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        """Count one model batch."""
        with self._lock:
            self.batch_sizes.observe(float(size))
            self.batch_seconds.observe(seconds)

    def render(self, queue_depth: int, running: int, ready: Callable[[], bool]) -> str:
        """The Prometheus text exposition (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP masksmith_requests_total HTTP requests answered, by route and status.",
                     "# TYPE masksmith_requests_total counter"]
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'masksmith_requests_total{{route="{route}",status="{status}"}} {count}')
            lines += ["# HELP masksmith_request_seconds Latency of segmentation requests (whole request).",
                      "# TYPE masksmith_request_seconds histogram", *self.latency.lines("masksmith_request_seconds"),
                      "# HELP masksmith_batch_size Images per model batch.",
                      "# TYPE masksmith_batch_size histogram", *self.batch_sizes.lines("masksmith_batch_size"),
                      "# HELP masksmith_batch_seconds Model time per batch.",
                      "# TYPE masksmith_batch_seconds histogram", *self.batch_seconds.lines("masksmith_batch_seconds")]
        lines += ["# HELP masksmith_queue_depth Requests waiting for a batch.", "# TYPE masksmith_queue_depth gauge",
                  f"masksmith_queue_depth {queue_depth}",
                  "# HELP masksmith_inflight_images Images in the batch running now.",
                  "# TYPE masksmith_inflight_images gauge", f"masksmith_inflight_images {running}",
                  "# HELP masksmith_ready 1 when the model is loaded, warmed up and able to answer within the request "
                  "limit.", "# TYPE masksmith_ready gauge",
                  f"masksmith_ready {int(ready())}"]
        return "\n".join(lines) + "\n"
