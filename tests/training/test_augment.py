"""Augmentation presets and custom pipelines: image and mask stay aligned, masks are never blended."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from masksmith.errors import ConfigError
from masksmith.training.augment import (
    AUGMENTATIONS,
    SmoothElastic,
    build_augmentation,
    seed_augmentation,
    trained_flips,
)

IGNORE = 255
LEVELS = np.array([40, 100, 160, 220])  # gray level of class k: far apart, and apart after brightness/contrast
SEEDS = range(40)


def _blocky_pair(channels: int, seed: int, size: int = 96, block: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A random class map made of blocks, and an image painting class k with gray level LEVELS[k]."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(LEVELS), (size // block, size // block)).astype(np.uint8)
    mask = np.kron(classes, np.ones((block, block), np.uint8))
    image = np.repeat(LEVELS[mask][:, :, None], channels, axis=2).astype(np.uint8)
    return image, mask


def _interior(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose whole (2r+1)² neighbourhood has their class: away from class and padding edges."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    inside = np.zeros(mask.shape, bool)
    for k in range(len(LEVELS)):
        # Border pixels count as outside, so edge effects of the warp at the frame are excluded too.
        eroded = cv2.erode((mask == k).astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        inside |= eroded.astype(bool)
    return inside


def _classify_back(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Class of each pixel from the augmented image alone.

    Photometric transforms move the gray levels but keep their order, so the K most common
    pixel colours, sorted by brightness, are the K classes in order.
    """
    pixels = image.reshape(-1, image.shape[2])[valid.ravel()]
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    top = colours[np.argsort(counts)[::-1][: len(LEVELS)]].astype(np.float64).mean(axis=1)
    assert len(np.unique(top)) == len(LEVELS), "photometric change merged two class levels"
    modes = np.sort(top)
    brightness = image.astype(np.float64).mean(axis=2)
    return np.abs(brightness[:, :, None] - modes[None, None, :]).argmin(axis=2)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", AUGMENTATIONS.names())
def test_every_preset_keeps_image_and_mask_aligned(preset, channels):
    pipeline = build_augmentation(preset, ignore_index=IGNORE, channels=channels)
    if pipeline is None:
        assert preset == "none"
        return
    changed = 0
    for seed in SEEDS:
        image, mask = _blocky_pair(channels, seed)
        seed_augmentation(pipeline, seed)
        out = pipeline(image=image, mask=mask)
        aug_image, aug_mask = out["image"], out["mask"]
        assert aug_image.shape == image.shape and aug_image.dtype == np.uint8
        assert aug_mask.shape == mask.shape and aug_mask.dtype == np.uint8
        # Nearest only: no value appears that was not a class or the ignore fill.
        assert set(np.unique(aug_mask).tolist()) <= set(np.unique(mask).tolist()) | {IGNORE}
        interior = _interior(aug_mask)
        assert interior.mean() > 0.2, f"seed {seed}: too little of the mask left to compare"
        predicted = _classify_back(aug_image, aug_mask != IGNORE)
        agreement = (predicted[interior] == aug_mask[interior]).mean()
        assert agreement >= 0.97, f"{preset} seed {seed}: image and mask agree on only {agreement:.1%}"
        changed += not (np.array_equal(aug_mask, mask) and np.array_equal(aug_image, image))
    assert changed > len(SEEDS) // 2  # the preset really transforms (geometry, colour or both)


def test_default_preset_rotation_fills_mask_with_ignore():
    pipeline = build_augmentation("default", ignore_index=IGNORE)
    filled = 0
    for seed in SEEDS:
        image, mask = _blocky_pair(3, seed)
        seed_augmentation(pipeline, seed)
        out = pipeline(image=image, mask=mask)
        uncovered = out["mask"] == IGNORE
        filled += uncovered.any()
        assert uncovered.mean() < 0.3
    assert filled > 0  # rotations happened, and their uncovered corners are ignore, not background


def test_upright_preset_never_turns_an_image_upside_down():
    # A top-bright, bottom-dark image stays so under every seed (ignore fill aside): no vertical flip, no 90° turn.
    image = np.zeros((64, 64, 3), np.uint8)
    image[:32] = 200
    mask = (image[:, :, 0] > 0).astype(np.uint8)
    pipeline = build_augmentation("upright", ignore_index=IGNORE)
    for seed in range(40):
        seed_augmentation(pipeline, seed)
        out = pipeline(image=image, mask=mask)
        top, bottom = out["mask"][:20], out["mask"][44:]
        assert (top == 0).mean() < 0.2 and (bottom == 1).mean() < 0.2, f"seed {seed} turned the image"


def test_oriented_preset_keeps_an_offset_between_image_and_label_in_its_direction():
    # A label drawn one pixel below the line it traces: after `oriented`, the label is still below the line
    # (small rotations, no flips or turns); `default` flips it above the line in some samples.
    image = np.full((64, 64, 1), 255, np.uint8)
    image[30:32] = 0  # a dark horizontal line, rows 30-31
    mask = np.zeros((64, 64), np.uint8)
    mask[31:33] = 1  # its label, one row lower

    def label_below_line(pipeline, seed):
        seed_augmentation(pipeline, seed)
        out = pipeline(image=image, mask=mask)
        dark_rows = np.nonzero((out["image"][:, 28:36, 0] < 128).mean(axis=1) > 0.5)[0]
        label_rows = np.nonzero((out["mask"][:, 28:36] == 1).mean(axis=1) > 0.5)[0]
        if len(dark_rows) == 0 or len(label_rows) == 0:  # turned to a vertical line by a 90° rotation
            return False
        return label_rows.mean() > dark_rows.mean()

    oriented = build_augmentation("oriented", ignore_index=IGNORE, channels=1)
    default = build_augmentation("default", ignore_index=IGNORE, channels=1)
    assert all(label_below_line(oriented, seed) for seed in range(40))
    assert not all(label_below_line(default, seed) for seed in range(40))
    kinds = {type(t).__name__ for t in oriented}
    assert not kinds & {"HorizontalFlip", "VerticalFlip", "RandomRotate90"} and "Affine" in kinds


@pytest.mark.parametrize("side", [96, 256])
def test_elastic_deformation_is_smooth_and_as_large_inside_as_at_the_borders(side):
    # Warp an image whose two channels are its own x and y coordinates: what comes back is the field.
    preset = build_augmentation("elastic", ignore_index=IGNORE, channels=3)
    elastic = [t for t in preset if isinstance(t, SmoothElastic)]
    assert len(elastic) == 1
    warp = A.Compose([SmoothElastic(grid=elastic[0].grid, std=elastic[0].std, p=1.0)])
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    coordinates = np.stack([xx, yy, np.zeros_like(xx)], axis=2)
    inner, border = slice(side // 4, -side // 4), np.ones((side, side), bool)
    border[8:-8, 8:-8] = False
    for seed in range(10):
        seed_augmentation(warp, seed)
        out = warp(image=coordinates, mask=(xx > side // 2).astype(np.uint8))
        dx, dy = out["image"][..., 0] - xx, out["image"][..., 1] - yy
        moved = np.hypot(dx, dy)
        assert 0.01 * side < np.median(moved) < 0.1 * side, f"seed {seed}: median move {np.median(moved):.2f} px"
        assert dx[inner, inner].std() > 0.3, "not a deformation: every pixel moved alike"
        assert np.abs(np.diff(dx[inner, inner], axis=1)).max() < 0.5, "the field is not smooth: pixels tear apart"
        # Where the mirrored border did not fold coordinates back, the edges move no more than the inside.
        unfolded = border & (out["image"][..., 0] > 0) & (out["image"][..., 0] < side - 1) \
            & (out["image"][..., 1] > 0) & (out["image"][..., 1] < side - 1)
        assert np.percentile(moved[unfolded], 99) < 2.5 * np.percentile(moved, 99) + 1
        assert IGNORE not in out["mask"]  # mirrored borders: nothing uncovered
        # The mask moved with the image: its boundary is where the warped x coordinate crosses side/2.
        assert np.mean((out["mask"] == 1) == (out["image"][..., 0] > side // 2)) > 0.99


def test_smooth_elastic_keeps_one_channel_images_one_channel():
    warp = A.Compose([SmoothElastic(p=1.0)])
    seed_augmentation(warp, 0)
    for image in (np.zeros((40, 50), np.uint8), np.zeros((40, 50, 1), np.uint8)):
        assert warp(image=image, mask=np.zeros((40, 50), np.uint8))["image"].shape == image.shape


def test_default_preset_has_no_hue_shift_for_one_channel():
    names3 = [type(t).__name__ for t in build_augmentation("default", channels=3, ignore_index=IGNORE)]
    names1 = [type(t).__name__ for t in build_augmentation("default", channels=1, ignore_index=IGNORE)]
    assert "HueSaturationValue" in names3 and "HueSaturationValue" not in names1
    assert "Affine" in names1 and "RandomBrightnessContrast" in names1


def test_none_specs_give_no_pipeline():
    assert build_augmentation(None, ignore_index=IGNORE) is None
    assert build_augmentation("none", ignore_index=IGNORE) is None
    assert build_augmentation([], ignore_index=IGNORE) is None


def test_custom_list_spec():
    spec = [{"name": "HorizontalFlip", "p": 1.0}, {"name": "Affine", "rotate": [45, 45], "p": 1.0}]
    pipeline = build_augmentation(spec, ignore_index=IGNORE)
    affine = pipeline.transforms[1]
    assert affine.mask_interpolation == cv2.INTER_NEAREST and affine.fill_mask == IGNORE  # filled in for the user
    image, mask = _blocky_pair(3, 0)
    out = pipeline(image=image, mask=mask)
    assert (out["mask"][:4, :4] == IGNORE).all()  # a 45° turn uncovers the corners: ignore, not background
    flip_only = build_augmentation([{"name": "HorizontalFlip", "p": 1.0}], ignore_index=IGNORE)
    out = flip_only(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    np.testing.assert_array_equal(out["image"], image[:, ::-1])


def test_custom_nested_spec():
    choices = [{"name": "VerticalFlip", "p": 1.0}, {"name": "Transpose", "p": 1.0}]
    spec = [{"name": "OneOf", "p": 1.0, "transforms": choices}]
    pipeline = build_augmentation(spec, ignore_index=IGNORE)
    assert isinstance(pipeline.transforms[0], A.OneOf)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{"name": "FlipHorizontal"}], "unknown albumentations transform 'FlipHorizontal'"),
        ([{"name": "np"}], "unknown albumentations transform 'np'"),
        ([{"name": "Compose"}], "bad parameters for Compose"),
        ([{"name": "HorizontalFlip", "probability": 0.5}], "HorizontalFlip has no parameter.*probability"),
        ([{"name": "Affine", "rotate": "lots"}], "bad parameters for Affine: .*rotate"),
        ([{"name": "Affine", "mask_interpolation": cv2.INTER_LINEAR}], "nearest"),
        ([{"p": 0.5}], "mapping with a 'name'"),
        (["HorizontalFlip"], "mapping with a 'name'"),
        ("heavy", "unknown augmentation 'heavy'; valid names: default, elastic, light, none, oriented, upright"),
        ({"name": "HorizontalFlip"}, "preset name or a list"),
    ],
)
def test_bad_specs_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_augmentation(spec, ignore_index=IGNORE)
    assert "\n" not in str(info.value)


def test_seeding_is_repeatable_and_transforms_stay_independent():
    pipeline = build_augmentation("light", ignore_index=IGNORE)
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)

    def outcomes(seed: int) -> list[bytes]:
        seed_augmentation(pipeline, seed)
        return [pipeline(image=image)["image"].tobytes() for _ in range(64)]

    first = outcomes(5)
    assert first == outcomes(5)
    assert first != outcomes(6)
    # Flip and rotation combinations cover the 8 symmetries of the square only if the transforms
    # draw independently (Compose(seed=...) in albumentations 2.0 makes them fire together).
    assert len(set(first)) == 8


@pytest.mark.parametrize("spec, flips", [
    ("default", ["horizontal", "vertical"]), ("light", ["horizontal", "vertical"]),
    ("elastic", ["horizontal", "vertical"]), ("upright", ["horizontal"]), ("oriented", []), ("none", []),
    ([{"name": "VerticalFlip"}], ["vertical"]),
    ([{"name": "RandomRotate90"}], []),  # 90° turns alone hold no single flip
    ([{"name": "RandomRotate90"}, {"name": "HorizontalFlip"}], ["horizontal", "vertical"]),
    ([{"name": "OneOf", "transforms": [{"name": "Transpose"}, {"name": "Blur"}]}], ["horizontal", "vertical"]),
])
def test_trained_flips_are_the_flips_a_pipeline_makes(spec, flips):
    assert trained_flips(build_augmentation(spec, ignore_index=IGNORE, channels=3)) == flips
