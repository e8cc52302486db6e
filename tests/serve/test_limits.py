"""`masksmith serve` under costly uploads: the work budget refuses them from the header (413), a timed-out
request's tiled work stops, a large image never holds small ones hostage, and /readyz says not ready while
a request sent now could not be answered in time. Live servers on 127.0.0.1, slowed models, bounded counts."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (test extra)")
from fastapi.testclient import TestClient  # noqa: E402

from masksmith.serve.app import create_app  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from masksmith.serve.options import ServeOptions  # noqa: E402
from tests.serve_helpers import binary_crop_bundle, bomb_png, live_server, png_bytes, train_tiny  # noqa: E402

SMALL = png_bytes(np.full((40, 56, 3), 120, np.uint8))
LARGE = png_bytes(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))  # 289 tiles of 32


@pytest.fixture(scope="module")
def crop_bundle(tmp_path_factory):
    """A binary crop-trained model of 32 px: a 40x56 image goes through whole, a 400x400 one in 289 tiles."""
    return binary_crop_bundle(tmp_path_factory.mktemp("serve-limits") / "binary.msb")


@pytest.fixture(scope="module")
def resize_bundle(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("serve-limits-resize"))[1]


class SlowTiles:
    """A backend that takes `seconds` per chunk of 32x32 tiles (and counts them); whole images run at full speed."""

    def __init__(self, backend, seconds: float):
        self.backend = backend
        self.seconds = seconds
        self.tile_chunks = 0
        self.started = threading.Event()

    def __call__(self, batch):
        if tuple(batch.shape[-2:]) == (32, 32):
            self.tile_chunks += 1
            self.started.set()
            time.sleep(self.seconds)
        return self.backend(batch)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def _slowed(bundle, seconds: float, **options):
    model = ServedModel.load(bundle)
    slow = SlowTiles(model.predictor.backend, seconds)
    model.predictor.backend = slow  # type: ignore[assignment]
    return slow, create_app(model, ServeOptions(max_batch=1, **options))


def _post(url: str, body: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}v1/segment", content=body, headers={"content-type": "image/png"}, timeout=timeout)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_the_audits_uploads_are_refused_from_their_header(crop_bundle, resize_bundle):
    # 1 x 24,000,000 pixels is under --max-pixels; the header-only PNG would be a 422 if anything decoded it.
    strip = bomb_png(24_000_000, 1)
    for bundle in (crop_bundle, resize_bundle):
        with TestClient(create_app(ServedModel.load(bundle), ServeOptions())) as client:
            response = client.post("/v1/segment", content=strip, headers={"content-type": "image/png"})
            assert response.status_code == 413, response.text
            assert response.json()["error"] == ("body: 24000000x1 image refused before decoding: its aspect ratio "
                                                "24,000,000:1 is over the limit of 100:1 (raise it with --max-aspect)")
    with TestClient(create_app(ServedModel.load(crop_bundle), ServeOptions(max_aspect=1e9))) as client:
        response = client.post("/v1/segment", content=strip, headers={"content-type": "image/png"})
        assert response.status_code == 413 and "(raise it with --max-work-mb)" in response.json()["error"]
        assert client.post("/v1/segment", content=SMALL, headers={"content-type": "image/png"}).status_code == 200
    # The same image costs more as an overlay than as a mask: the answer is part of the work.
    photo = png_bytes(np.zeros((300, 400, 3), np.uint8))
    with TestClient(create_app(ServedModel.load(resize_bundle), ServeOptions(max_work_bytes=4 * 2**20))) as client:
        assert client.post("/v1/segment", content=photo, headers={"content-type": "image/png"}).status_code == 200
        overlay = client.post("/v1/segment?format=overlay", content=photo, headers={"content-type": "image/png"})
        assert overlay.status_code == 413 and "over the work limit of 4 MB" in overlay.json()["error"]


@pytest.mark.slow
def test_a_timed_out_request_stops_its_tiled_work(crop_bundle):
    slow, app = _slowed(crop_bundle, 0.1, timeout_s=1.0)  # 73 chunks of 4 tiles: over 7 s
    with live_server(app) as (url, _):
        response = _post(url, LARGE)
        assert response.status_code == 408
        _wait_for(lambda: _metric(url, "masksmith_inflight_images") == 0, "the model to be idle")
        assert slow.tile_chunks < 73 // 2  # it stopped at a chunk boundary soon after the 408
        assert _post(url, SMALL).status_code == 200


@pytest.mark.slow
def test_a_large_image_does_not_hold_small_ones_hostage(crop_bundle):
    slow, app = _slowed(crop_bundle, 0.1)
    with live_server(app) as (url, _), ThreadPoolExecutor(1) as pool:
        large = pool.submit(_post, url, LARGE)
        assert slow.started.wait(60)
        for _ in range(3):
            response = _post(url, SMALL)
            assert response.status_code == 200 and response.headers["x-batch-size"] == "1"
        assert not large.done()  # the small ones went first: the large one still has most of its 7 s of tiles to run
        assert large.result(120).status_code == 200


def test_readyz_says_not_ready_while_the_model_is_busy_past_the_request_limit(resize_bundle):
    model = ServedModel.load(resize_bundle)
    model.warm_up()
    release, entered = threading.Event(), threading.Event()
    run = model.run_batch

    def held(jobs, *args, **kwargs):
        entered.set()
        assert release.wait(60)
        return run(jobs, *args, **kwargs)

    model.run_batch = held  # type: ignore[method-assign]
    model.warm_up = lambda: None  # type: ignore[method-assign]
    app = create_app(model, ServeOptions(max_batch=1, timeout_s=1.0))
    with live_server(app) as (url, _), ThreadPoolExecutor(1) as pool:
        assert httpx.get(f"{url}readyz").json() == {"ready": True}
        stuck = pool.submit(_post, url, SMALL)
        assert entered.wait(60)

        def unready() -> bool:
            return httpx.get(f"{url}readyz", timeout=10).status_code == 503

        _wait_for(unready, "/readyz to say not ready")
        answer = httpx.get(f"{url}readyz").json()
        assert answer["ready"] is False and "over the request limit of 1 s" in answer["reason"]
        assert _metric(url, "masksmith_ready") == 0
        release.set()
        assert stuck.result(60).status_code == 408
        _wait_for(lambda: httpx.get(f"{url}readyz", timeout=10).status_code == 200, "readiness to come back")
