"""The served model: a Predictor loaded once, its identity (checksum), its card, and batch inference."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from masksmith.core.version import __version__
from masksmith.errors import MasksmithError
from masksmith.inference.predictor import Predictor
from masksmith.inference.tiling import describe_tiling


@dataclass
class Job:
    """One image to segment, the binary threshold asked for (None: the bundle's), and whether its request gave up."""

    image: np.ndarray
    threshold: float | None = None
    abandoned: threading.Event = field(default_factory=threading.Event)


class Abandoned(Exception):
    """Every request of a batch gave up (timed out or disconnected), so its work was stopped midway."""


# The longest a batch waits for its turn at one step of its work: a steady stream of small images
# delays a large one, but cannot starve it.
MAX_TURN_WAIT_S = 1.0


def file_checksum(path: Path) -> str:
    """'sha256:<hex>' of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def load_predictor(path: Path, backend: str | None, threads: int | None, device: str = "cpu") -> Predictor:
    """The Predictor `predict` would build (TTA off, automatic tiling), with `threads` compute threads."""
    return Predictor.load(path, device=device, backend=backend, threads=threads)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _training_data_name(run_dir: Path) -> str | None:
    """The dataset folder's name from config.yaml next to the model (the bundle does not record it)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return Path(str(data)).name if data else None


def _validation(run_dir: Path) -> dict[str, Any]:
    """Validation scores: not stored in bundles, so from results.json beside the model, and said so."""
    results = _read_json(run_dir / "results.json")
    if results is None or not isinstance(results.get("best_epoch_metrics"), dict):
        return {"scores": None, "source": None,
                "note": "the bundle holds no validation scores and no results.json lies next to it"}
    scores = {key: value for key, value in results["best_epoch_metrics"].items()
              if key.startswith("val_") and isinstance(value, (int, float))}
    return {"scores": scores, "best_epoch": results.get("best_epoch"), "monitor": results.get("monitor"),
            "source": "results.json next to the model file (the bundle itself holds no scores)"}


@dataclass
class ServedModel:
    """A loaded model with what the API reports about it."""

    path: Path
    predictor: Predictor
    checksum: str
    threads: int
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, backend: str | None = "auto", threads: int | None = None,
             device: str = "cpu") -> "ServedModel":
        """Load an .onnx export (ONNX Runtime, on the CPU) or a .msb bundle, on the backend `serve` defaults to
        (auto: the bundle's cached ONNX export on the CPU; masksmith.inference.backend_choice)."""
        path = Path(path)
        if not path.is_file():
            raise MasksmithError(f"{path}: no such model file (give runs/NAME/model.msb or model.onnx)")
        predictor = load_predictor(path, backend, threads, device)
        model = cls(path, predictor, file_checksum(path), predictor.backend.threads)
        model.card = model._card()
        return model

    @property
    def model_id(self) -> str:
        """Architecture, file name and the start of the checksum: changes whenever the weights do."""
        return f"{self.predictor.meta.model}:{self.path.name}:{self.checksum.split(':')[1][:12]}"

    def _precision(self) -> dict[str, Any]:
        """The card's precision: an int8 model's also says how far its masks agree with PyTorch's."""
        from masksmith.inference.export import int8_note

        header = getattr(self.predictor.backend, "header", None)
        note = int8_note(header) if header is not None else None
        if header is None or note is None:
            return {"precision": "fp32"}
        return {"precision": "int8", "int8": {"validation_agreement": header.validation_agreement,
                                              "validation_images": header.validation_images, "note": note}}

    def _card(self) -> dict[str, Any]:
        meta = self.predictor.meta
        split = dict(meta.split)
        validation_names = split.pop("val", None)
        if isinstance(validation_names, list):
            split["val_images"] = len(validation_names)
        return {
            "id": self.model_id, "checksum": self.checksum, "file": self.path.name,
            "architecture": meta.model, "backend": self.predictor.backend_name, **self._precision(),
            "threads": self.threads,
            "device": str(self.predictor.device),
            "classes": [{"index": i, "name": name, "color": list(meta.colors[i])}
                        for i, name in enumerate(meta.class_names)],
            "input": {"size": meta.size, "resize": meta.resize, "channels": meta.in_channels,
                      "tiling": describe_tiling(meta, self.predictor.auto_tile_factor)},
            "normalization": {"mean": meta.mean, "std": meta.std},
            "threshold": meta.threshold if meta.num_classes == 2 else None,
            "ignore_index": meta.ignore_index,
            "masksmith_version": __version__, "trained_with": meta.masksmith_version,
            "training": {"data": _training_data_name(self.path.parent), "split": split},
            "validation": _validation(self.path.parent),
        }

    def batch_key(self, job: Job) -> Hashable:
        """Jobs with equal keys share one forward pass: the network input shape (tiled images run alone)."""
        image = job.image
        if self.predictor.input_size is not None:
            return "resize"  # every image is resized to the training size
        if self.predictor.tiling_for(image.shape) is not None:
            return ("tiled", id(job))
        return tuple(image.shape)

    def run_batch(self, jobs: list[Job], wait_turn: Callable[[float], bool] | None = None) -> list[np.ndarray]:
        """Class-index masks at each image's own size, by predict's own code (one pass per input shape).

        Between steps of the work (tile chunks, full-size stages) it stops with Abandoned once every
        job's request has given up, and, given `wait_turn(timeout) -> bool`, waits until that says it
        is this batch's turn, at most MAX_TURN_WAIT_S (a large image lets the small ones queued
        meanwhile go first).
        """
        def checkpoint() -> None:
            give_up = time.monotonic() + MAX_TURN_WAIT_S
            while True:
                if all(job.abandoned.is_set() for job in jobs):
                    raise Abandoned(f"the {len(jobs)} request(s) of this batch gave up")
                if wait_turn is None or wait_turn(0.05) or time.monotonic() >= give_up:
                    return

        probabilities = self.predictor.probabilities([job.image for job in jobs], checkpoint)
        return [self.predictor.decide(p, job.threshold) for p, job in zip(probabilities, jobs)]

    def best_batch_size(self, limit: int) -> int:
        """The batch size (1, 2, 4, ... up to `limit`) with the most images/s on blank training-size images.

        Batching pays on some machines and models and costs on others (on a 2-core CPU a U-Net ran
        fastest one image at a time), so it is measured. A larger size must beat the best smaller one
        by 5%, so timing noise does not pick it.
        """
        size, channels = self.predictor.meta.size, self.predictor.meta.in_channels
        sizes = [n for n in (1, 2, 4, 8, 16, 32) if n <= max(1, limit)]
        best_per_image = {n: float("inf") for n in sizes}
        for _ in range(2):  # rounds interleaved, best of two: a burst of load elsewhere hits every size alike
            for n in sizes:
                jobs = [Job(np.zeros((size, size, channels), np.uint8)) for _ in range(n)]
                started = time.perf_counter()
                self.run_batch(jobs)
                best_per_image[n] = min(best_per_image[n], (time.perf_counter() - started) / n)
        chosen = sizes[0]
        for n in sizes[1:]:
            if best_per_image[n] < 0.95 * best_per_image[chosen]:
                chosen = n
        return chosen

    def warm_up(self) -> None:
        """Run one blank image so the first request does not pay for kernel selection and allocation."""
        height, width = self.predictor.meta.input_shape
        self.run_batch([Job(np.zeros((height, width, self.predictor.meta.in_channels), np.uint8))])
