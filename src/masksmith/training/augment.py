"""Named augmentation pipelines (albumentations) that keep image and mask aligned."""

from __future__ import annotations

import inspect
import random
from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np

from masksmith.bundle import FLIP_AXES, FlipAxis
from masksmith.core.registry import Registry
from masksmith.data.encoding import ignore_value_problem
from masksmith.errors import ConfigError

# A preset builder takes (ignore_index=, channels=) and returns the transforms of its pipeline.
PresetBuilder = Callable[..., list]
AUGMENTATIONS: Registry[PresetBuilder] = Registry("augmentation")

# Nearest-neighbour flags a mask may be warped with; anything else blends class indices into new ones.
_NEAREST = (cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT)


@AUGMENTATIONS.register("none")
def _none(*, ignore_index: int, channels: int) -> list:
    """No augmentation."""
    return []


@AUGMENTATIONS.register("light")
def _light(*, ignore_index: int, channels: int) -> list:
    """Flips and 90° rotations: exact for image and mask, no interpolation at all."""
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


@AUGMENTATIONS.register("default")
def _default(*, ignore_index: int, channels: int) -> list:
    """Flips, 90° rotations, a small rotation/scale, and mild photometric changes."""
    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    return flips + _oriented(ignore_index=ignore_index, channels=channels)


@AUGMENTATIONS.register("oriented")
def _oriented(*, ignore_index: int, channels: int) -> list:
    """`default` without flips or 90° turns: a small rotation/scale and mild photometric changes.

    For data whose orientation carries information a flip would scramble, such as labels drawn with a
    consistent offset: the ISBI membranes' labels sit about 0.6 pixel above the membranes they trace
    (benchmarks/membrane_offset.py). Trained with this preset a model follows that offset, which flips
    reverse; there, though, losing the flips costs as much as the offset gains
    (docs/results.md#membranes-label-offset).
    """
    transforms = [
        # Corners uncovered by the rotation become ignore, so padding never trains as background.
        A.Affine(
            rotate=(-15, 15), scale=(0.9, 1.1), interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
            fill=0, fill_mask=ignore_index, p=0.5,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
    ]
    if channels == 3:  # hue and saturation do not exist for a single channel
        transforms.append(A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=15, val_shift_limit=10, p=0.3))
    return transforms


class SmoothElastic(A.DualTransform):
    """Elastic deformation as the U-Net paper made it for EM slices: random displacements on a coarse grid.

    Each of the grid's points moves by a Gaussian vector (per axis, `std` times the image's shorter side: the
    same stretch at every image size), bicubic interpolation spreads that to every pixel, and image (bilinear)
    and mask (nearest) are resampled along it, mirrored at the borders. Not albumentations' ElasticTransform:
    it blurs per-pixel noise with replicated borders, so its displacements near the edges come out several
    times larger than inside (32 px at the 99th percentile of a 256 crop against a median of 4, measured
    with alpha 1000, sigma 25).
    """

    def __init__(self, grid: int = 3, std: float = 0.025, p: float = 0.5):
        super().__init__(p=p)
        self.grid, self.std = grid, std

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        spread = self.std * min(height, width)
        coarse = self.random_generator.normal(0.0, spread, (self.grid, self.grid, 2)).astype(np.float32)
        dense = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        return {"map_x": cols + dense[..., 0], "map_y": rows + dense[..., 1]}

    def apply(self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
        return _remap(img, map_x, map_y, cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
        return _remap(mask, map_x, map_y, cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("grid", "std")


def _remap(array: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation: int) -> np.ndarray:
    """`array` resampled at (map_x, map_y), mirrored borders, with the channel axis it came with."""
    out = cv2.remap(array, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT_101)
    return out.reshape(array.shape)  # cv2 drops a trailing axis of length 1


@AUGMENTATIONS.register("elastic")
def _elastic(*, ignore_index: int, channels: int) -> list:
    """`default` plus smooth elastic deformations (SmoothElastic): the U-Net paper's augmentation for cells and
    EM tissue: a 3x3 grid of displacements, 2.5% of the shorter side each (6.4 px on a 256 crop; the paper
    moved its 512x512 slices by 10 px, 2%)."""
    return _default(ignore_index=ignore_index, channels=channels) + [SmoothElastic(grid=3, std=0.025, p=0.5)]


@AUGMENTATIONS.register("upright")
def _upright(*, ignore_index: int, channels: int) -> list:
    """For photos where up is up (people, streets): left-right flips, small rotation/scale/shift, color.

    No vertical flips or 90° turns: an upside-down person is not a training example, it is noise. Also for labels
    drawn with a vertical offset (the ISBI membranes' sit 0.6 px high): the offset is never reversed, and with
    `--tta` the model averages only the image and its mirror (docs/results.md#membranes-best-recipe).
    """
    transforms = [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            rotate=(-10, 10), scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
            fill=0, fill_mask=ignore_index, p=0.6,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
    ]
    if channels == 3:
        transforms.append(A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=15, val_shift_limit=10, p=0.3))
    return transforms


def _one_line(exc: Exception) -> str:
    """An exception message on one line, without pydantic's 'further information' links."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    return " ".join(lines) or type(exc).__name__


def _build_transform(item: Any, where: str, ignore_index: int, channels: int) -> Any:
    """One albumentations transform from {"name": ..., **params}; masks forced to nearest, fill = ignore."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ConfigError(f"{where}: each augmentation must be a mapping with a 'name', got {item!r}")
    params = dict(item)
    name = params.pop("name")
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        raise ConfigError(
            f"{where}: unknown albumentations transform {name!r} (names are case-sensitive, e.g. HorizontalFlip)"
        )

    if isinstance(params.get("transforms"), list):  # OneOf, SomeOf, Sequential hold their own list
        params["transforms"] = [
            _build_transform(sub, f"{where}.{name}[{j}]", ignore_index, channels)
            for j, sub in enumerate(params["transforms"])
        ]
    signature = inspect.signature(cls.__init__)
    accepted = {n for n, p in signature.parameters.items() if n != "self"}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(params) - accepted)
    if unknown and not takes_any:
        raise ConfigError(
            f"{where}: {name} has no parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(accepted))}"
        )
    if "mask_interpolation" in accepted:
        value = params.setdefault("mask_interpolation", cv2.INTER_NEAREST)
        if value not in _NEAREST:
            raise ConfigError(f"{where}: {name} mask_interpolation must be nearest (0), masks are never blended")
    if "fill_mask" in accepted:
        params.setdefault("fill_mask", ignore_index)
    try:
        return cls(**params)
    except Exception as exc:  # pydantic ValidationError is a ValueError; wrong types give TypeError
        raise ConfigError(f"{where}: bad parameters for {name}: {_one_line(exc)}") from None


def build_augmentation(
    spec: str | list[dict] | None, *, ignore_index: int, channels: int = 3
) -> A.Compose | None:
    """A Compose from a preset name or a list of {"name": Transform, **params}; None for no augmentation."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    problem = ignore_value_problem(ignore_index)  # the classes are not known here, only the mask's range
    if problem is not None:
        raise ConfigError(problem)
    if spec is None:
        return None
    if isinstance(spec, str):
        transforms = AUGMENTATIONS.get(spec)(ignore_index=ignore_index, channels=channels)
    elif isinstance(spec, list):
        transforms = [
            _build_transform(item, f"augmentation[{i}]", ignore_index, channels) for i, item in enumerate(spec)
        ]
    else:
        raise ConfigError(f"augmentation must be a preset name or a list of transforms, got {type(spec).__name__}")
    if not transforms:
        return None
    return A.Compose(transforms)


def trained_flips(pipeline: A.Compose | None) -> list[FlipAxis]:
    """The flips a pipeline makes (in FLIP_AXES order): what test-time augmentation may average over.

    HorizontalFlip and VerticalFlip give their axis; Transpose, D4 and SquareSymmetry give both (their group
    holds both flips), and so does RandomRotate90 beside either flip (a 90° turn and one flip make the other).
    RandomRotate90 alone holds no single flip. Nested OneOf/SomeOf/Sequential are searched.
    """
    found: set[str] = set()
    rotates = False

    def visit(transforms: Any) -> None:
        nonlocal rotates
        for transform in transforms:
            if isinstance(transform, A.HorizontalFlip):
                found.add("horizontal")
            elif isinstance(transform, A.VerticalFlip):
                found.add("vertical")
            elif isinstance(transform, (A.Transpose, A.D4, A.SquareSymmetry)):
                found.update(FLIP_AXES)
            elif isinstance(transform, A.RandomRotate90):
                rotates = True
            visit(getattr(transform, "transforms", ()))

    visit(pipeline.transforms if pipeline is not None else ())
    if rotates and found:
        found.update(FLIP_AXES)
    return [axis for axis in FLIP_AXES if axis in found]


def seed_augmentation(pipeline: A.Compose, seed: int) -> None:
    """Make a pipeline repeatable from `seed`, its transforms drawing from one shared generator.

    Not Compose(seed=...) / set_random_seed: albumentations 2.0 then gives every transform its own
    generator with the same seed, so e.g. a horizontal and a vertical flip always fire together.
    """
    seed = int(seed) % 2**32
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
