"""Models, images and a live uvicorn server for the `masksmith serve` tests."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import masksmith
from masksmith.bundle import BundleMeta, save_bundle
from masksmith.models import build_model
from tests.helpers import make_shapes_dataset

# Debian's Chromium (no browser can be downloaded here), driven by Playwright.
CHROMIUM = next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if path and Path(path).is_file()), None)
BROWSER_TESTS = [pytest.mark.slow,
                 pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")]


def launch_chromium(driver: Any) -> Any:
    """Headless Chromium from a Playwright driver; --no-sandbox: its sandbox cannot start as root (CI runs as root)."""
    return driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def train_tiny(root: Path) -> tuple[Path, Path]:
    """A 3-class U-Net trained for one epoch on the synthetic shapes: (dataset folder, model.msb)."""
    data = make_shapes_dataset(root / "shapes", count=8, size=(40, 56))
    run = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=4,
                          model_options={"base_channels": 4, "depth": 2}, early_stopping=0,
                          out=str(root / "run"), quiet=True)
    return data, run.bundle


def binary_crop_bundle(path: Path) -> Path:
    """An untrained binary U-Net of a crop-trained model (images are predicted whole or in tiles)."""
    torch.manual_seed(0)
    network = build_model("unet", 3, 2, base_channels=4, depth=2)
    meta = BundleMeta(model="unet", model_options={"base_channels": 4, "depth": 2}, in_channels=3, out_channels=2,
                      class_names=["background", "thing"], colors=[[0, 0, 0], [255, 0, 0]], size=32,
                      resize="random_crop", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], threshold=0.5,
                      mask_encoding={"kind": "index"})
    return save_bundle(path, network.state_dict(), meta)


def png_bytes(array: np.ndarray, **save: Any) -> bytes:
    """An array encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiff_rgba16(height: int = 24, width: int = 30) -> bytes:
    """A 4-channel, 16-bit-per-channel TIFF (OpenCV writes those; PIL reads them as 8-bit RGBA)."""
    import cv2

    rng = np.random.default_rng(3)
    ok, data = cv2.imencode(".tiff", rng.integers(0, 65535, (height, width, 4)).astype(np.uint16))
    assert ok
    return data.tobytes()


@contextlib.contextmanager
def live_server(app: Any, access_log: bool = False) -> Iterator[tuple[str, Any]]:
    """Run `app` under a real uvicorn on 127.0.0.1 (a free port) in a thread, configured as `masksmith serve`
    runs it (its protocol, limits and log filter); yield (base URL, server)."""
    import uvicorn

    from masksmith.serve.server import bind, server_config, url_of

    sock = bind("127.0.0.1", 0)
    from masksmith.serve.options import ServeOptions

    # The label page's app carries LabelOptions: it runs with serve's default limits, as `masksmith label` does.
    options = app.state.options if isinstance(app.state.options, ServeOptions) else ServeOptions()
    config = server_config(app, timeout_s=options.timeout_s, header_timeout_s=options.header_timeout_s,
                           max_connections=options.max_connections, access_log=access_log,
                           log_level="info" if access_log else "warning")
    config.timeout_graceful_shutdown = 30
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield url_of(sock), server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
