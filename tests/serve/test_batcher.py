"""The micro-batcher on its own, then the server under a blocked model: batches, the bounded queue
(503 + Retry-After, then recovery), the per-request timeout, draining on shutdown, and the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (test extra)")

from masksmith.serve.app import create_app  # noqa: E402
from masksmith.serve.batcher import MicroBatcher, QueueFull  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from masksmith.serve.options import ServeOptions  # noqa: E402
from tests.serve_helpers import live_server, png_bytes, train_tiny  # noqa: E402

IMAGE = png_bytes(np.full((40, 56, 3), 120, np.uint8))


class Recorder:
    """A run_batch that records its batches and, while `hold` is set, blocks on the item 'hold'."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if "hold" in items:
            self.started.set()
            assert self.release.wait(30)
        if self.fail_on in items:
            raise ValueError(f"cannot do {self.fail_on}")
        return [item.upper() for item in items]


def _batcher(recorder: Recorder, **options) -> MicroBatcher[str]:
    batcher = MicroBatcher(recorder, key=lambda item: item[0], **options)
    batcher.start()
    return batcher


def test_jobs_of_one_key_run_together_up_to_max_batch_oldest_first():
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch=4, max_wait_s=30.0)
    held = batcher.submit("hold")
    assert recorder.started.wait(30)
    futures = [batcher.submit(item) for item in ["a1", "a2", "b1", "a3", "a4", "a5", "b2"]]
    assert batcher.depth == 7
    recorder.release.set()
    assert held.result(30).value == "HOLD"
    assert [f.result(30).value for f in futures] == ["A1", "A2", "B1", "A3", "A4", "A5", "B2"]
    assert recorder.batches[1:] == [["a1", "a2", "a3", "a4"], ["b1", "b2"], ["a5"]]
    assert futures[0].result().batch_size == 4 and futures[2].result().batch_size == 2
    batcher.stop(30)


def test_a_full_queue_refuses_new_jobs_and_recovers():
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch=1, max_queue=2)
    batcher.submit("hold")
    assert recorder.started.wait(30)
    queued = [batcher.submit("x1"), batcher.submit("x2")]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        batcher.submit("x3")
    recorder.release.set()
    assert [f.result(30).value for f in queued] == ["X1", "X2"]
    assert batcher.submit("x4").result(30).value == "X4"
    batcher.stop(30)


def test_waits_for_company_only_while_requests_are_arriving():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, key=lambda item: "k", max_batch=2, max_wait_s=60.0)
    batcher.start()
    batcher.announce()
    batcher.announce()
    first = batcher.submit("a", announced=True)  # waits: another job is on its way
    second = batcher.submit("b", announced=True)
    assert first.result(30).batch_size == second.result(30).batch_size == 2
    batcher.announce()
    batcher.withdraw()  # that request failed before it could submit: nobody is waited for
    # Nothing else on its way: a lone job runs at once instead of waiting out max_wait_s (60 s).
    assert batcher.submit("c").result(30).batch_size == 1
    assert recorder.batches == [["a", "b"], ["c"]]
    batcher.stop(30)


def test_a_cancelled_job_is_never_computed_and_errors_reach_each_job():
    recorder = Recorder(fail_on="bad")
    batcher = _batcher(recorder, max_batch=8)
    batcher.submit("hold")
    assert recorder.started.wait(30)
    gave_up = batcher.submit("gone")
    assert gave_up.cancel()
    failing = [batcher.submit("bad"), batcher.submit("bystander")]
    recorder.release.set()
    for future in failing:
        with pytest.raises(ValueError, match="cannot do bad"):
            future.result(30)
    assert batcher.submit("after").result(30).value == "AFTER"  # the worker lives on
    assert not any("gone" in batch for batch in recorder.batches)
    batcher.stop(30)


def test_stop_finishes_the_queued_jobs_then_refuses():
    recorder = Recorder()
    batcher = _batcher(recorder, max_batch=1)
    batcher.submit("hold")
    assert recorder.started.wait(30)
    queued = [batcher.submit(f"q{i}") for i in range(3)]
    stopper = threading.Thread(target=batcher.stop, args=(30,))
    stopper.start()
    recorder.release.set()
    stopper.join(30)
    assert [f.result(0).value for f in queued] == ["Q0", "Q1", "Q2"]
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit("late")


# --------------------------------------------------------------------------- the server, model held


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("serve-batching"))[1]


class Gate:
    """Wraps a model's run_batch: counts the images it is given and blocks until released."""

    def __init__(self, model: ServedModel):
        self.run = model.run_batch
        self.images = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, jobs):
        self.images += len(jobs)
        self.entered.set()
        assert self.release.wait(60)
        return self.run(jobs)


def _gated(bundle, **options) -> tuple[ServedModel, Gate, object]:
    model = ServedModel.load(bundle)
    model.warm_up()
    gate = Gate(model)
    model.run_batch = gate  # type: ignore[method-assign]
    model.warm_up = lambda: None  # type: ignore[method-assign]  # warmed above, before the gate
    return model, gate, create_app(model, ServeOptions(**options))


def _post(url: str) -> httpx.Response:
    return httpx.post(f"{url}v1/segment", content=IMAGE, headers={"content-type": "image/png"}, timeout=60)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_overload_answers_503_with_retry_after_then_recovers(bundle):
    model, gate, app = _gated(bundle, max_batch=1, max_queue=2)
    with live_server(app) as (url, _), ThreadPoolExecutor(4) as pool:
        batcher = app.state.batcher
        running = pool.submit(_post, url)
        assert gate.entered.wait(30)
        queued = [pool.submit(_post, url) for _ in range(2)]
        _wait_for(lambda: batcher.depth == 2, "two queued requests")
        refused = _post(url)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "retry" in refused.json()["error"]
        gate.release.set()
        assert [f.result(60).status_code for f in [running, *queued]] == [200, 200, 200]
        assert _post(url).status_code == 200
        assert httpx.get(f"{url}healthz").status_code == 200


@pytest.mark.slow
def test_a_request_over_its_time_limit_is_408_and_its_queued_work_is_dropped(bundle):
    model, gate, app = _gated(bundle, max_batch=1, timeout_s=1.0)
    with live_server(app) as (url, _), ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, url)
        assert gate.entered.wait(30)
        second = pool.submit(_post, url)  # queued behind the held batch
        for future in (first, second):
            response = future.result(60)
            assert response.status_code == 408 and "limit of 1 s" in response.json()["error"]
        gate.release.set()
        assert _post(url).status_code == 200
        assert gate.images == 2  # the first (already running) and the last; the second was never computed


def test_shutdown_drains_requests_in_flight(bundle):
    model, gate, app = _gated(bundle, max_batch=1)
    with live_server(app) as (url, server), ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_post, url)
        assert gate.entered.wait(30)
        server.should_exit = True  # what Ctrl-C does

        def refusing() -> bool:
            try:
                httpx.get(f"{url}healthz", timeout=1)
            except httpx.TransportError:
                return True
            return False

        _wait_for(refusing, "the server to stop accepting connections")
        gate.release.set()
        assert in_flight.result(60).status_code == 200


@pytest.mark.slow
def test_masksmith_serve_prints_where_and_what_and_stops_cleanly_on_ctrl_c(bundle):
    command = [sys.executable, "-m", "masksmith.cli", "serve", str(bundle), "--port", "0", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        header = [process.stdout.readline() for _ in range(5)]
        assert header[0].startswith("masksmith serve: http://127.0.0.1:"), header
        url = header[0].split()[2]
        assert "model" in header[1] and str(bundle) in header[1] and "3 classes" in header[1]
        assert "backend  onnx on cpu" in header[2] and "threads" in header[2]  # the default: ONNX Runtime
        _wait_for(lambda: _ready(url), "readiness")
        assert _post(url).status_code == 200
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0]
        # uvicorn ends by re-raising the signal after a clean shutdown: 130 = 128 + SIGINT (older: 0).
        assert process.returncode in (0, 128 + signal.SIGINT)
        assert "Application shutdown complete" in rest and "Traceback" not in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("seconds_per_batch, expected", [
    ({1: 0.10, 2: 0.21, 4: 0.44, 8: 0.90}, 1),  # batching costs: one image at a time
    ({1: 0.10, 2: 0.12, 4: 0.20, 8: 0.36}, 8),  # each doubling pays (by more than 5%)
    ({1: 0.10, 2: 0.15, 4: 0.29, 8: 0.60}, 2),  # 4 is within 5% of 2: noise does not pick it
])
def test_the_batch_size_measured_at_startup_is_the_one_with_the_most_images_per_second(
        bundle, monkeypatch, seconds_per_batch, expected):
    import masksmith.serve.model as served_model

    clock = [0.0]
    monkeypatch.setattr(served_model.time, "perf_counter", lambda: clock[0])
    model = ServedModel.load(bundle)

    def run_batch(jobs):
        clock[0] += seconds_per_batch[len(jobs)]
        return [None] * len(jobs)

    model.run_batch = run_batch  # type: ignore[method-assign]
    assert model.best_batch_size(8) == expected
    assert model.best_batch_size(1) == 1
