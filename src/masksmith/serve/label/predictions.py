"""The model's help: every image predicted once in the background, the "label next" order, and a cache.

Each image's class-index mask is kept zlib-compressed (a prediction is mostly flat regions: tens of KB
instead of width x height bytes) in a cache bounded in bytes, least recently used out first; an evicted
one is predicted again when asked for. Only the two uncertainty numbers of `annotations.ranking`
outlive it, so the order of the whole dataset costs a few bytes an image.
"""

from __future__ import annotations

import collections
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from masksmith.annotations.ranking import image_uncertainty
from masksmith.data.images import read_image
from masksmith.errors import MasksmithError
from masksmith.serve.label.layout import Entry
from masksmith.serve.model import ServedModel

CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Prediction:
    """One image's predicted mask (compressed) and how unsure the model was of it."""

    height: int
    width: int
    packed: bytes  # zlib of the HxW uint8 class indices
    entropy: float  # mean normalized entropy (annotations.ranking)
    uncertain: float  # share of pixels whose two best classes are close

    def mask(self) -> np.ndarray:
        """The HxW uint8 class-index mask."""
        return np.frombuffer(zlib.decompress(self.packed), np.uint8).reshape(self.height, self.width)


def predict_entry(model: ServedModel, entry: Entry) -> Prediction:
    """Predict one image with `predict`'s own code (tiling included) and score its uncertainty."""
    predictor = model.predictor
    array = read_image(entry.image, channels=predictor.meta.in_channels)
    probabilities = predictor.probabilities([array])[0]
    mask = predictor.decide(probabilities)
    entropy, uncertain = image_uncertainty(probabilities)
    return Prediction(mask.shape[0], mask.shape[1], zlib.compress(np.ascontiguousarray(mask).tobytes(), 1),
                      entropy, uncertain)


class Predictions:
    """Predictions of one model for the images of a store, made in a background thread and on demand."""

    def __init__(self, model: ServedModel, entries: list[Entry], order: Callable[[], list[str]],
                 cache_bytes: int = CACHE_BYTES):
        self.model = model
        self.entries = {entry.id: entry for entry in entries}
        self.order = order  # ids in the order to predict them (the queue's, unlabelled first)
        self.cache_bytes = cache_bytes
        self.scores: dict[str, tuple[float, float]] = {}
        self.failed: dict[str, str] = {}
        self._cache: collections.OrderedDict[str, Prediction] = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()  # the cache and the scores
        self._model_lock = threading.Lock()  # one forward pass at a time: the threads share the model's
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        """Predict every image not yet predicted, in a daemon thread."""
        self._worker = threading.Thread(target=self._run, name="masksmith-label-predict", daemon=True)
        self._worker.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background thread after the image it is on."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout)

    def _run(self) -> None:
        for image_id in self.order():
            if self._stop.is_set():
                return
            if image_id not in self.scores and image_id not in self.failed:
                try:
                    self.get(image_id)
                except MasksmithError:
                    pass  # recorded in self.failed; the page shows it when the image is opened

    def _keep(self, image_id: str, prediction: Prediction) -> None:
        with self._lock:
            self.scores[image_id] = (prediction.entropy, prediction.uncertain)
            if image_id in self._cache:
                self._cached_bytes -= len(self._cache.pop(image_id).packed)
            self._cache[image_id] = prediction
            self._cached_bytes += len(prediction.packed)
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= len(evicted.packed)

    def cached(self, image_id: str) -> Prediction | None:
        """The prediction of an image if it is in the cache (then it counts as just used)."""
        with self._lock:
            prediction = self._cache.get(image_id)
            if prediction is not None:
                self._cache.move_to_end(image_id)
            return prediction

    def get(self, image_id: str) -> Prediction:
        """The prediction of an image, made now when it is not cached; MasksmithError for an unreadable image."""
        prediction = self.cached(image_id)
        if prediction is not None:
            return prediction
        with self._model_lock:
            prediction = self.cached(image_id)  # made by the other thread while this one waited
            if prediction is not None:
                return prediction
            try:
                prediction = predict_entry(self.model, self.entries[image_id])
            except MasksmithError as error:
                self.failed[image_id] = str(error)
                raise
        self._keep(image_id, prediction)
        return prediction

    def progress(self) -> dict[str, Any]:
        """How many images are predicted (and failed) of how many."""
        return {"done": len(self.scores), "failed": len(self.failed), "total": len(self.entries)}
