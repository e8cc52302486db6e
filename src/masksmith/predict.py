"""Predictor: a loaded bundle that turns images into masks at their original size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from masksmith.bundle import BundleMeta, load_bundle
from masksmith.data.dataset import preprocess_image
from masksmith.data.discover import list_images
from masksmith.data.masks import MaskEncoding, read_image, write_mask
from masksmith.errors import BundleError, MasksmithError
from masksmith.models import build_model, logits_to_probabilities
from masksmith.visualize import overlay, save_image, save_mask_png

ImageInput = np.ndarray | Image.Image | str | Path


class Predictor:
    """A model ready for inference; everything it needs comes from the bundle."""

    def __init__(self, network: torch.nn.Module, meta: BundleMeta, device: str = "cpu"):
        self.meta = meta
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.colors = np.array(meta.colors, dtype=np.uint8)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Predictor":
        """Build the network from a bundle and load its weights."""
        meta, weights = load_bundle(path)
        network = build_model(meta.model, meta.in_channels, meta.out_channels, **meta.model_options)
        try:
            network.load_state_dict(weights)
        except RuntimeError as error:
            raise BundleError(f"{path}: weights do not fit the {meta.model} architecture "
                              f"({str(error).splitlines()[0]})") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(network, meta, device)

    @property
    def class_names(self) -> list[str]:
        """Class names, index order."""
        return self.meta.class_names

    def _input_size(self) -> tuple[int, int] | None:
        # Models trained on crops are fully convolutional: they see the whole image at prediction.
        return (self.meta.size, self.meta.size) if self.meta.resize == "resize" else None

    def to_array(self, image: ImageInput) -> np.ndarray:
        """Any accepted input as an HxWxC uint8 array with the model's channel count."""
        if isinstance(image, (str, Path)):
            return read_image(image, channels=self.meta.in_channels)
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("L" if self.meta.in_channels == 1 else "RGB"))
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise MasksmithError(f"expected an HxW or HxWxC image array, got shape {array.shape}")
        if array.shape[2] != self.meta.in_channels:
            if self.meta.in_channels == 1:
                array = np.asarray(Image.fromarray(array[:, :, :3]).convert("L"))[:, :, None]
            elif array.shape[2] == 1:
                array = np.repeat(array, 3, axis=2)
            else:
                array = array[:, :, :3]
        return np.ascontiguousarray(array.astype(np.uint8))

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Class probabilities (K x H x W) for each image, at the image's own size."""
        size = self._input_size()
        results: list[torch.Tensor] = []
        # Images of the same input shape go through the network together.
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            shape = size if size is not None else image.shape[:2]
            groups.setdefault(tuple(shape), []).append(index)
        by_index: dict[int, torch.Tensor] = {}
        for indices in groups.values():
            batch = torch.cat([preprocess_image(images[i], size, self.meta.mean, self.meta.std) for i in indices])
            logits = self.network(batch.to(self.device)).float()
            for row, i in enumerate(indices):
                height, width = images[i].shape[:2]
                # Upsample logits (not labels) to the original size, then decide: smooth boundaries.
                resized = F.interpolate(logits[row:row + 1], size=(height, width), mode="bilinear",
                                        align_corners=False) if logits.shape[2:] != (height, width) else logits[row:row + 1]
                by_index[i] = logits_to_probabilities(resized)[0].cpu()
        for index in range(len(images)):
            results.append(by_index[index])
        return results

    def decide(self, probabilities: torch.Tensor, threshold: float | None = None) -> np.ndarray:
        """Class-index mask from probabilities: threshold for binary, argmax otherwise."""
        if self.meta.num_classes == 2:
            cut = self.meta.threshold if threshold is None else threshold
            return (probabilities[1] > cut).numpy().astype(np.uint8)
        return probabilities.argmax(0).numpy().astype(np.uint8)

    def predict(self, image: ImageInput, threshold: float | None = None) -> np.ndarray:
        """Predict one image (array, PIL image or path): an HxW uint8 class-index mask at its original size."""
        return self.predict_batch([image], threshold)[0]

    def predict_batch(self, images: Sequence[ImageInput], threshold: float | None = None) -> list[np.ndarray]:
        """Predict several images in one forward pass per input shape."""
        arrays = [self.to_array(image) for image in images]
        return [self.decide(p, threshold) for p in self.probabilities(arrays)]


@dataclass
class PredictReport:
    """What a folder/glob prediction wrote and what it could not read."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _batches(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(predictor: Predictor, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  overlay_images: bool = False, threshold: float | None = None, batch_size: int = 4,
                  mask_format: str = "palette", progress: bool = True) -> PredictReport:
    """Predict files, folders or globs into OUT/<stem>.png masks (and OUT/overlays/<stem>.jpg).

    mask_format "palette": P-mode PNGs whose pixel values are class indices; "dataset": the training
    masks' own encoding (0/255 binary, RGB colors, or indices), as recorded in the bundle.
    """
    if mask_format not in ("palette", "dataset"):
        raise MasksmithError(f"mask format must be 'palette' or 'dataset', got {mask_format!r}")
    out_dir = Path(out_dir)
    paths = list_images(list(inputs))
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems and stems[path.stem] != path:
            # Both would be written to OUT/<stem>.png; refuse rather than overwrite one with the other.
            raise MasksmithError(f"{path} and {stems[path.stem]} would both be written as {path.stem}.png; "
                                 "predict them into separate --out folders")
        stems[path.stem] = path
    report = PredictReport()
    with tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress) as bar:
        for batch in _batches(paths, batch_size):
            arrays, readable = [], []
            for path in batch:
                try:
                    arrays.append(predictor.to_array(path))
                    readable.append(path)
                except MasksmithError as error:
                    report.failed.append((path, str(error)))
            if arrays:
                for path, array, probabilities in zip(readable, arrays, predictor.probabilities(arrays)):
                    mask = predictor.decide(probabilities, threshold)
                    target = out_dir / f"{path.stem}.png"
                    if mask_format == "dataset":
                        write_mask(target, mask, MaskEncoding.from_dict(predictor.meta.mask_encoding),
                                   predictor.meta.ignore_index)
                    else:
                        save_mask_png(mask, target, predictor.colors, predictor.meta.ignore_index)
                    report.written.append(target)
                    if overlay_images:
                        save_image(overlay(array, mask, predictor.colors), out_dir / "overlays" / f"{path.stem}.jpg")
            bar.update(len(batch))
    return report
