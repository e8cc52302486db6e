"""Predictor: a loaded model (PyTorch bundle or ONNX) that turns images into masks at their original size.

One Predictor holds the pre- and post-processing, tiling and TTA; a *backend* (masksmith.inference.backends)
only maps a normalized N x C x H x W float batch to logits of the same height and width. Large
images of crop-trained models are predicted tile by tile, tiles aligned to the backend's input multiple.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from masksmith.bundle import FLIP_AXES, BundleMeta
from masksmith.core.fileio import refuse_overwrite
from masksmith.data.images import array_image, image_to_array, read_image
from masksmith.data.transforms import preprocess_image
from masksmith.errors import ConfigError, MasksmithError
from masksmith.inference.backend_choice import open_model
from masksmith.inference.backends import Backend, TorchBackend
from masksmith.inference.files import (
    PREDICT_BATCH_SIZE,
    PredictionPlan,
    check_mask_format,
    plan_predictions,
    read_batch,
    write_failures,
    write_prediction,
)
from masksmith.inference.inputs import InputImage
from masksmith.inference.pipeline import Prefetch, Writer, pipeline_depth
from masksmith.inference.tiling import (
    AUTO_TILE_FACTOR,
    TILE_BATCH,
    auto_tile,
    default_overlap,
    network_input_size,
    tiling,
)
from masksmith.inference.work_budget import WorkBudget, check_file
from masksmith.models import best_class, logits_to_probabilities
from masksmith.models.base import input_multiple, pad_to_multiple

if TYPE_CHECKING:
    from masksmith.annotations import PredictionSink

ImageInput = np.ndarray | Image.Image | str | Path
T = TypeVar("T")
Blend = Literal["gaussian", "linear"]
BLENDS = ("gaussian", "linear")


def check_threshold(threshold: float | None) -> float | None:
    """A binary model's foreground threshold, strictly between 0 and 1 (NaN refused too); None: the model's own."""
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    return threshold


def _blend_weights(size: int, overlap: int, blend: str, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D tile weights: low near tile edges shared with a neighbour tile, so seams fade out."""
    position = torch.arange(size, dtype=torch.float64) + 0.5
    if blend == "gaussian":
        # nnU-Net's choice: sigma of 1/8 of the tile puts almost all weight on the tile centre.
        sigma = size / 8.0
        weight = torch.exp(-((position - size / 2.0) ** 2) / (2 * sigma**2))
        if at_start:
            weight[: size // 2] = 1.0
        if at_end:
            weight[size // 2:] = 1.0
        weight = weight / weight.max()
    else:
        # A trapezoid that is zero on the outer quarter of the overlap and reaches one at three quarters:
        # pixels that close to a tile edge saw zero padding instead of image, so the neighbour tile,
        # which sees them well inside, decides them alone. Exact for receptive fields < overlap / 2.
        margin, ramp = overlap / 4.0, max(overlap / 2.0, 1.0)
        ones = torch.ones(size, dtype=torch.float64)
        rising = ones if at_start else torch.clamp((position - margin) / ramp, 0.0, 1.0)
        falling = ones if at_end else torch.clamp((size - position - margin) / ramp, 0.0, 1.0)
        weight = torch.minimum(rising, falling)
    # Every pixel keeps a sliver of weight so no pixel divides by zero, whatever the tile layout.
    return torch.clamp(weight, min=1e-6).float()


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile`, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Where tiled_logits puts its tiles on an image: the padded size, the tile size and the tiles' corners."""

    height: int  # the image padded to the network's multiple
    width: int
    tile_height: int
    tile_width: int
    ys: list[int]
    xs: list[int]

    @property
    def count(self) -> int:
        """Tiles the network runs over (each one forward pass, or one per TTA view)."""
        return len(self.ys) * len(self.xs)


def tile_grid(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TileGrid:
    """The tile layout of an HxW image: tile and stride rounded to `multiple`, the image padded to it."""
    multiple = max(1, multiple)
    tile = max(multiple, tile // multiple * multiple)
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    # As pad_to_multiple pads the image tensor: at the bottom and right, up to the next multiple.
    full_h, full_w = height + (-height) % multiple, width + (-width) % multiple
    tile_h, tile_w = min(tile, full_h), min(tile, full_w)
    return TileGrid(full_h, full_w, tile_h, tile_w, _tile_starts(full_h, tile_h, stride),
                    _tile_starts(full_w, tile_w, stride))


def tiled_logits(backend: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, *, tile: int, overlap: int,
                 multiple: int = 1, blend: Blend = "gaussian", batch: int = TILE_BATCH,
                 checkpoint: Callable[[], None] | None = None) -> torch.Tensor:
    """Sliding-window logits (1 x K x H x W) for a normalized 1 x C x H x W image, tiles blended by weight.

    The image is first padded to `multiple` (as the network itself would) and every tile starts at a
    multiple of it, so each tile's pooling grid lines up with whole-image inference and tiles differ
    from it only near their edges, where the blend weights are small. `checkpoint` is called before
    every chunk of tiles; it may raise to stop the work (a server's request that gave up).
    """
    if blend not in BLENDS:
        raise MasksmithError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    if tile < 1 or not 0 <= overlap < tile:
        raise MasksmithError(f"tiling needs tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")

    height, width = image.shape[-2:]
    grid = tile_grid(height, width, tile, overlap, multiple)
    padded = pad_to_multiple(image, max(1, multiple))
    full_h, full_w, tile_h, tile_w = grid.height, grid.width, grid.tile_height, grid.tile_width
    boxes = [(y, x) for y in grid.ys for x in grid.xs]
    total: torch.Tensor | None = None
    weights = torch.zeros(1, 1, full_h, full_w)
    for first in range(0, len(boxes), max(1, batch)):
        if checkpoint is not None:
            checkpoint()
        chunk = boxes[first:first + max(1, batch)]
        logits = backend(torch.cat([padded[:, :, y:y + tile_h, x:x + tile_w] for y, x in chunk]))
        if total is None:
            total = torch.zeros(1, logits.shape[1], full_h, full_w)
        for row, (y, x) in enumerate(chunk):
            weight = (_blend_weights(tile_h, overlap, blend, y == 0, y + tile_h >= full_h)[:, None]
                      * _blend_weights(tile_w, overlap, blend, x == 0, x + tile_w >= full_w)[None, :])
            total[:, :, y:y + tile_h, x:x + tile_w] += logits[row:row + 1].float() * weight
            weights[:, :, y:y + tile_h, x:x + tile_w] += weight
    assert total is not None
    return (total / weights)[:, :, :height, :width]


FLIP_DIMS = {"horizontal": 3, "vertical": 2}  # NCHW: width, height


def tta_views(flips: Sequence[str]) -> list[tuple[int, ...]]:
    """The flipped views TTA averages: every combination of the given flips, the identity first."""
    dims = [FLIP_DIMS[axis] for axis in flips]
    return [tuple(sorted(d for i, d in enumerate(dims) if mask >> i & 1)) for mask in range(2 ** len(dims))]


def flip_tta(backend: Callable[[torch.Tensor], torch.Tensor],
             flips: Sequence[str] = FLIP_AXES) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a backend so it averages logits over the views of `flips` (both: identity, horizontal, vertical,
    both flips)."""
    views = tta_views(flips)

    def run(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in views:
            flipped = batch.flip(dims) if dims else batch
            logits = backend(flipped)
            logits = logits.flip(dims) if dims else logits
            total = logits if total is None else total + logits
        return total / len(views)

    return run


class Predictor:
    """A model ready for inference; everything it needs comes from the bundle (or the ONNX metadata)."""

    def __init__(self, network: nn.Module | Backend, meta: BundleMeta, device: str = "cpu", *,
                 optimize: bool = True, tile: int | None = None, overlap: int | None = None,
                 blend: Blend = "gaussian", tile_batch: int = TILE_BATCH, tta: bool = False,
                 auto_tile_factor: float | None = AUTO_TILE_FACTOR, multiple: int | None = None):
        self.meta = meta
        if isinstance(network, nn.Module):
            network = TorchBackend(network, device, optimize=optimize)
        self.backend: Backend = network
        self.device = getattr(network, "device", torch.device(device))
        # The PyTorch network when there is one (export verification and training tests read it).
        self.network: nn.Module | None = getattr(network, "network", None)
        # The backend's multiple is its network's (or the ONNX header's): tiles line up with its padding.
        self.multiple = multiple or input_multiple(network)
        self.colors = np.array(meta.colors, dtype=np.uint8)
        if blend not in BLENDS:
            raise MasksmithError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        if tile is not None and tile < 1:
            raise MasksmithError(f"tile must be a positive number of pixels, got {tile}")
        if overlap is not None and overlap < 0:
            raise MasksmithError(f"overlap must be >= 0 pixels, got {overlap}")
        self.tile = tile
        self.overlap = overlap
        self.blend: Blend = blend
        self.tile_batch = tile_batch
        self.tta = tta
        if tta and not meta.tta_flips:
            warnings.warn("--tta: this model was trained without flips (its augmentation had none), so flipped "
                          "views would be images it never saw; it predicts without them", stacklevel=2)
        self.auto_tile_factor = auto_tile_factor

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", *, backend: str | None = None,
             optimize: bool = True, threads: int | None = None, **options) -> "Predictor":
        """Load a model: `.onnx` runs on onnxruntime, anything else is a masksmith bundle.

        A bundle runs on the `backend` that masksmith.inference.backend_choice picks: "auto" (the commands'
        default: ONNX Runtime from the ONNX cache on the CPU, else PyTorch), "torch", "onnx", or None
        (PyTorch). Other options go to the constructor.
        """
        opened = open_model(path, backend, device, optimize=optimize, threads=threads)
        assert opened.meta is not None  # opened from a file: the bundle's (or ONNX header's) metadata
        return cls(opened, opened.meta, **options)

    @property
    def class_names(self) -> list[str]:
        """Class names, index order."""
        return self.meta.class_names

    @property
    def backend_name(self) -> str:
        """'torch' or 'onnx'."""
        return self.backend.name

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The (height, width) every image is resized to before the network, or None for the image's own size."""
        return network_input_size(self.meta)

    def tiling_for(self, shape: Sequence[int]) -> tuple[int, int] | None:
        """(tile, overlap) when an image of this HxW shape is predicted in tiles, else None (inference.tiling)."""
        return tiling(self.meta, shape, tile=self.tile, overlap=self.overlap, factor=self.auto_tile_factor)

    def tile_grid_for(self, shape: Sequence[int]) -> TileGrid | None:
        """The tiles an image of this HxW shape is predicted in (None: it goes through the network whole)."""
        tiling = self.tiling_for(shape)
        return None if tiling is None else tile_grid(shape[0], shape[1], tiling[0], tiling[1], self.multiple)

    def _runner(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return flip_tta(self.backend, self.meta.tta_flips) if self.tta else self.backend

    @property
    def tta_passes(self) -> int:
        """Forward passes per image: 1, or with TTA one per view of the flips the model was trained with."""
        return len(tta_views(self.meta.tta_flips)) if self.tta else 1

    def logits(self, image: np.ndarray, checkpoint: Callable[[], None] | None = None) -> torch.Tensor:
        """Raw logits (1 x K x h x w) of one HxWxC uint8 image at the network's input size (tiled when due)."""
        tiling = self.tiling_for(image.shape)
        batch = preprocess_image(image, self.input_size, self.meta.mean, self.meta.std)
        if tiling is None:
            return self._runner()(batch)
        return tiled_logits(self._runner(), batch, tile=tiling[0], overlap=tiling[1], multiple=self.multiple,
                            blend=self.blend, batch=self.tile_batch, checkpoint=checkpoint)

    def _to_probabilities(self, logits: torch.Tensor, height: int, width: int,
                          checkpoint: Callable[[], None] | None = None) -> torch.Tensor:
        if checkpoint is not None:
            checkpoint()  # the full-size stage below is the costly one for a large image
        # Upsample logits (not labels) to the original size, then decide: smooth boundaries.
        if logits.shape[2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits_to_probabilities(logits)[0].cpu()

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray],
                      checkpoint: Callable[[], None] | None = None) -> list[torch.Tensor]:
        """Class probabilities (K x H x W) for each image, at the image's own size.

        `checkpoint` is called between the steps of the work (tile chunks, network calls, full-size
        stages); it may raise to stop it, e.g. when the request it serves has given up.
        """
        size = self.input_size
        by_index: dict[int, torch.Tensor] = {}
        # Images of the same input shape go through the network together; tiled ones one by one.
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if self.tiling_for(image.shape) is not None:
                by_index[index] = self._to_probabilities(self.logits(image, checkpoint), *image.shape[:2], checkpoint)
                continue
            shape = size if size is not None else image.shape[:2]
            groups.setdefault(tuple(shape), []).append(index)
        runner = self._runner()
        for indices in groups.values():
            if checkpoint is not None:
                checkpoint()
            batch = torch.cat([preprocess_image(images[i], size, self.meta.mean, self.meta.std) for i in indices])
            logits = runner(batch)
            for row, i in enumerate(indices):
                by_index[i] = self._to_probabilities(logits[row:row + 1], *images[i].shape[:2], checkpoint)
        return [by_index[index] for index in range(len(images))]

    def to_array(self, image: ImageInput) -> np.ndarray:
        """Any accepted input as an HxWxC uint8 array with the model's channel count, by data.images' rules:
        a path, a PIL image and an array of the same pixels give the same array (16-bit ones included)."""
        channels = self.meta.in_channels
        if isinstance(image, (str, Path)):
            return read_image(image, channels=channels)
        if not isinstance(image, Image.Image):
            image = array_image(np.asarray(image), "image array")
        return image_to_array(image, channels)

    def decide(self, probabilities: torch.Tensor, threshold: float | None = None) -> np.ndarray:
        """Class-index mask from probabilities: threshold for binary, argmax otherwise."""
        if self.meta.num_classes == 2:
            cut = self.meta.threshold if threshold is None else threshold
            return (probabilities[1] > cut).numpy().astype(np.uint8)
        return best_class(probabilities, dim=0).numpy().astype(np.uint8)

    def predict(self, image: ImageInput, threshold: float | None = None) -> np.ndarray:
        """Predict one image (array, PIL image or path): an HxW uint8 class-index mask at its original size."""
        return self.predict_batch([image], threshold)[0]

    def predict_batch(self, images: Sequence[ImageInput], threshold: float | None = None) -> list[np.ndarray]:
        """Predict several images in one forward pass per input shape."""
        arrays = [self.to_array(image) for image in images]
        return [self.decide(p, threshold) for p in self.probabilities(arrays)]

    @torch.inference_mode()
    def predict_tiled(self, image: ImageInput, tile: int | None = None, overlap: int | None = None,
                      blend: Blend | None = None, batch: int | None = None,
                      threshold: float | None = None) -> np.ndarray:
        """Predict one image by sliding-window tiles (whatever its size); returns the HxW class-index mask."""
        array = self.to_array(image)
        tile = tile or self.tile or auto_tile(self.meta)
        overlap = overlap if overlap is not None else (self.overlap if self.overlap is not None else
                                                       default_overlap(tile))
        batch_tensor = preprocess_image(array, None, self.meta.mean, self.meta.std)
        logits = tiled_logits(self._runner(), batch_tensor, tile=tile, overlap=overlap, multiple=self.multiple,
                              blend=blend or self.blend, batch=batch or self.tile_batch)
        return self.decide(self._to_probabilities(logits, *array.shape[:2]), threshold)


@dataclass
class PredictReport:
    """What a folder/glob prediction wrote and what it could not read."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list[Path] = field(default_factory=list)  # outputs already there (resume)

    def summary(self, out: str | Path, *, tta: bool = False, tta_passes: int | None = None) -> str:
        """What `masksmith predict` prints: the masks written (and skipped); with TTA, its cost per image
        (`tta_passes`: the forward passes per image, when known)."""
        lines = [f"wrote {len(self.written)} masks to {out}" + (f" ({len(self.skipped)} already there)"
                                                               if self.skipped else "")]
        if tta and self.written:
            per_image = 1000 * self.seconds / len(self.written)
            cost = f"{tta_passes} forward passes per image, ~{tta_passes}x the inference time, " if tta_passes else ""
            lines.append(f"tta: {cost}{per_image:.0f} ms per image with TTA")
        return "\n".join(lines)


def _array_bytes(read: tuple[list[np.ndarray], list, list]) -> int:
    return sum(array.nbytes for array in read[0])


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(predictor: Predictor, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  overlay_images: bool = False, threshold: float | None = None, batch_size: int = PREDICT_BATCH_SIZE,
                  mask_format: str = "palette", progress: bool = True, resume: bool = False,
                  sinks: Sequence[PredictionSink] = (), plan: PredictionPlan | None = None,
                  depth: int | None = None) -> PredictReport:
    """Predict files, folders, globs or manifests into OUT/<relative path>.png masks (and OUT/overlays/).

    A folder's subfolders are kept under OUT (a flat folder gives OUT/<stem>.png); `resume` skips images
    whose outputs exist; unreadable ones are listed in OUT/failures.csv (masksmith.inference.files).
    mask_format "palette": P-mode PNGs whose pixel values are class indices; "dataset": the training
    masks' own encoding (0/255 binary, RGB colors, or indices), as recorded in the bundle.
    `sinks` (masksmith.annotations: Labelme/COCO writers, the ranking) get every predicted image too.
    `plan`: these inputs' plan_predictions, when the caller made it already (predict checks it before it
    claims OUT). `depth`: batches decoded ahead and results waiting to be written (0: one step after the
    other; default $MASKSMITH_PIPELINE_DEPTH or masksmith.inference.pipeline.DEFAULT_DEPTH). A failed write
    stops the run with its OSError, as in sequential order; the masks before it are written.
    """
    check_mask_format(mask_format)
    out_dir = Path(out_dir)
    if plan is None:
        plan = plan_predictions(inputs, out_dir, overlay_images=overlay_images, resume=resume)
    planned = [(item.path, item.relative) for item in plan.items]
    refuse_overwrite([path for path, _ in planned], [target for sink in sinks for target in sink.plan(planned)])
    report = PredictReport(failed=list(plan.failed), skipped=plan.skipped)
    budget = WorkBudget.offline()
    answer = "overlay" if overlay_images else "mask"

    def admit(path: Path) -> None:
        check_file(predictor, path, budget, answer)

    inference = 0.0
    depth = pipeline_depth() if depth is None else depth
    meta, keep_probabilities = predictor.meta, bool(sinks)

    def read(batch: list[InputImage]) -> tuple[list[np.ndarray], list[InputImage], list[tuple[Path, str]]]:
        return read_batch(batch, meta.in_channels, admit)

    def write(item: InputImage, array: np.ndarray, mask: np.ndarray, probs: torch.Tensor | None) -> None:
        report.written.append(write_prediction(meta, mask, array, out_dir, item.relative, mask_format=mask_format,
                                               overlay_images=overlay_images))
        for sink in sinks:
            sink.add(item.path, item.relative, probs, mask)

    # Decoding the next batches and writing the last ones overlap with the model (masksmith.inference.pipeline).
    with (tqdm(total=len(plan.items), desc="predicting", unit="img", disable=not progress) as bar,
          Prefetch(_batches(plan.items, batch_size), read, depth=depth, size=_array_bytes) as reads,
          Writer(depth=depth * batch_size) as writer):  # masks: `depth` batches of them
        for batch, (arrays, readable, failed) in reads:
            report.failed.extend(failed)
            if arrays:
                started = time.perf_counter()
                probabilities = predictor.probabilities(arrays)
                inference += time.perf_counter() - started
                for item, array, probs in zip(readable, arrays, probabilities):
                    mask = predictor.decide(probs, threshold)
                    kept = probs if keep_probabilities else None  # else freed here: K floats a pixel
                    writer.submit(functools.partial(write, item, array, mask, kept),
                                  array.nbytes + mask.nbytes + (probs.nbytes if kept is not None else 0))
            bar.update(len(batch))
    report.seconds = inference
    for sink in sinks:
        sink.finish()
    write_failures(out_dir, report.failed)
    return report
