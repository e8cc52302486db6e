"""Datasets, sessions and mask transfer for the `masksmith label` tests."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from masksmith.serve.label.app import Session, create_app
from masksmith.serve.label.store import LabelOptions, LabelStore
from masksmith.serve.model import ServedModel

LOCAL = "http://127.0.0.1:8001"  # the TestClient's base URL: the page refuses other Host names without a token


def copy_some(source: Path, target: Path, names: list[str], image_dir: str = "images", mask_dir: str = "masks",
              extras: tuple[str, ...] = ()) -> Path:
    """A few images (and their masks) of a read-only dataset, copied into a folder the test may write."""
    (target / image_dir).mkdir(parents=True)
    (target / mask_dir).mkdir()
    for name in names:
        for path in (source / image_dir).glob(f"{name}.*"):
            shutil.copy(path, target / image_dir / path.name)
        for path in (source / mask_dir).glob(f"{name}.*"):
            shutil.copy(path, target / mask_dir / path.name)
    for extra in extras:
        shutil.copy(source / extra, target / extra)
    return target


def open_session(data: Path, options: LabelOptions = LabelOptions(), model: ServedModel | None = None,
                 **session: Any) -> Session:
    """A labelling session over `data` (and a model), as `masksmith label` builds it."""
    store = LabelStore.open(data, options, model.predictor.meta if model is not None else None)
    return Session(store, str(data), options, model, **session)


def make_app(session: Session, token: str | None = None) -> Any:
    return create_app(session, token)


def deflated(mask: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(mask, np.uint8).tobytes())


def inflated(response: Any) -> np.ndarray:
    """The class-index mask of a mask or prediction response."""
    height, width = int(response.headers["x-mask-height"]), int(response.headers["x-mask-width"])
    return np.frombuffer(zlib.decompress(response.content), np.uint8).reshape(height, width)


def save(client: Any, image_id: str, mask: np.ndarray, version: str, start: str = "mask", **headers: str) -> Any:
    """POST a class-index mask the way the page sends it."""
    height, width = mask.shape
    return client.post(f"/api/images/{image_id}/mask?version={version}&start={start}&width={width}&height={height}",
                       content=deflated(mask), headers={"content-type": "application/octet-stream", **headers})


def queue_ids(client: Any) -> dict[str, str]:
    """name -> id of every image in the queue."""
    return {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))
