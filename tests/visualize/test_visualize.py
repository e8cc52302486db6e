"""Tests for masksmith.visualize: palettes, overlays, grids and plots, written the way the user meets them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.visualize import (
    colorize,
    comparison_grid,
    default_colors,
    overlay,
    palette_image,
    plot_confusion,
    plot_curves,
    plot_per_class,
    save_comparison_grid,
    save_image,
    save_mask_png,
)


def _mask(h: int = 12, w: int = 16, k: int = 3) -> np.ndarray:
    """A mask with horizontal bands of every class plus a few ignore pixels."""
    mask = (np.arange(h)[:, None] * k // h).repeat(w, axis=1).astype(np.uint8)
    mask[0, :3] = 255
    return mask


def _image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _open_png(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    assert img.width > 0 and img.height > 0
    return img


# ---------------------------------------------------------------- palettes and masks


def test_default_colors_is_voc_and_unique() -> None:
    colors = default_colors(256)
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    assert colors[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    assert colors[15].tolist() == [192, 128, 128]  # VOC "person"
    assert colors[255].tolist() == [224, 224, 192]  # VOC border color
    assert len({tuple(c) for c in colors.tolist()}) == 256
    # Binary keeps the VOC palette: foreground is dark red, and a prefix of a bigger palette.
    assert default_colors(2).tolist() == [[0, 0, 0], [128, 0, 0]]
    assert np.array_equal(default_colors(59), colors[:59])
    assert default_colors(0).shape == (0, 3)
    with pytest.raises(ValueError):
        default_colors(257)


def test_palette_png_round_trip(tmp_path: Path) -> None:
    colors = default_colors(3)
    mask = _mask()
    path = tmp_path / "out" / "mask.png"
    save_mask_png(mask, path, colors, ignore_index=255)
    img = _open_png(path)
    assert img.mode == "P"
    assert np.array_equal(np.array(img), mask)
    palette = np.array(img.getpalette()[: 256 * 3]).reshape(-1, 3)
    assert np.array_equal(palette[:3], colors)
    assert palette[255].tolist() == [255, 255, 255]  # the ignore color
    assert _no_temp_files(tmp_path)


def test_palette_image_in_memory_and_int64_mask() -> None:
    colors = np.array([[10, 20, 30], [200, 100, 50]], dtype=np.uint8)
    mask = np.array([[0, 1], [1, 0]], dtype=np.int64)
    img = palette_image(mask, colors, ignore_color=(1, 2, 3), ignore_index=255)
    assert img.mode == "P"
    assert np.array_equal(np.array(img), mask)
    assert img.getpalette()[:6] == [10, 20, 30, 200, 100, 50]
    assert img.getpalette()[255 * 3 : 256 * 3] == [1, 2, 3]
    # Converting to RGB shows the colors, not the indices.
    assert np.array(img.convert("RGB"))[0, 1].tolist() == [200, 100, 50]


def test_save_mask_png_refuses_values_over_255(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), dtype=np.int64)
    mask[1, 1] = 300
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="bad.png"):
        save_mask_png(mask, path, default_colors(256), ignore_index=255)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind either


def test_mask_with_class_beyond_colors_is_refused(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [2, 5]], dtype=np.uint8)
    with pytest.raises(ValueError, match="class 5"):
        colorize(mask, default_colors(3), ignore_index=255)
    with pytest.raises(ValueError, match="m.png"):
        save_mask_png(mask, tmp_path / "m.png", default_colors(3), ignore_index=255)
    with pytest.raises(ValueError, match="integer"):
        colorize(mask.astype(np.float32), default_colors(6), ignore_index=255)


def test_colorize_maps_each_class_to_its_color() -> None:
    colors = default_colors(3)
    mask = _mask()
    rgb = colorize(mask, colors, ignore_index=255)
    assert rgb.shape == mask.shape + (3,) and rgb.dtype == np.uint8
    for k in range(3):
        assert (rgb[mask == k] == colors[k]).all()
    assert (rgb[mask == 255] == 255).all()
    rgb2 = colorize(mask, colors, ignore_color=(0, 255, 0), ignore_index=255)
    assert (rgb2[mask == 255] == [0, 255, 0]).all()


# ---------------------------------------------------------------- overlays


def test_overlay_keeps_background_and_tints_foreground() -> None:
    colors = default_colors(3)
    image = np.full((20, 20, 3), 60, dtype=np.uint8)
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[5:15, 5:15] = 1
    mask[0, 0] = 255
    out = overlay(image, mask, colors, alpha=0.5, ignore_index=255)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert np.array_equal(out[0, 0], image[0, 0])  # ignore left as the image
    inner = out[7:13, 7:13].reshape(-1, 3)
    assert (inner == [94, 30, 30]).all()  # halfway between (60,60,60) and (128,0,0)
    # The region's border is drawn in the full class color, so thin parts stay visible.
    assert out[5, 10].tolist() == [128, 0, 0] and out[10, 14].tolist() == [128, 0, 0]
    # Foreground moved toward the color: closer than the original image was.
    dist_before = np.abs(image[mask == 1].astype(int) - colors[1]).sum()
    dist_after = np.abs(out[mask == 1].astype(int) - colors[1]).sum()
    assert dist_after < dist_before


def test_overlay_accepts_gray_images_and_thin_structures() -> None:
    colors = default_colors(2)
    gray = np.full((9, 9), 200, dtype=np.uint8)
    mask = np.zeros((9, 9), dtype=np.uint8)
    mask[:, 4] = 1  # a 1-pixel line
    for image in (gray, gray[:, :, None]):
        out = overlay(image, mask, colors, alpha=0.2, ignore_index=255)
        assert out.shape == (9, 9, 3)
        assert (out[:, 4] == [128, 0, 0]).all()
        assert (out[:, :4] == 200).all()
    no_lines = overlay(gray, mask, colors, alpha=0.2, contours=False, ignore_index=255)
    assert no_lines[0, 4].tolist() == [186, 160, 160]
    with pytest.raises(ValueError, match="mask"):
        overlay(gray, mask[:5], colors, ignore_index=255)


def test_overlay_without_background_tints_everything() -> None:
    colors = default_colors(2)
    image = np.full((4, 4, 3), 255, dtype=np.uint8)
    out = overlay(image, np.zeros((4, 4), dtype=np.uint8), colors, alpha=1.0, background_index=None, ignore_index=255)
    assert (out == 0).all()


def test_save_image_png_and_jpeg(tmp_path: Path) -> None:
    image = _image(10, 14)
    save_image(image, tmp_path / "a.png")
    assert np.array_equal(np.array(Image.open(tmp_path / "a.png")), image)
    save_image(np.dstack([image, np.full((10, 14), 255, np.uint8)]), tmp_path / "b.jpg")
    jpg = Image.open(tmp_path / "b.jpg")
    assert jpg.format == "JPEG" and jpg.size == (14, 10)
    with pytest.raises(ValueError, match="c.gif"):
        save_image(image, tmp_path / "c.gif")
    assert _no_temp_files(tmp_path)


# ---------------------------------------------------------------- comparison grids


def _row(h: int, w: int, seed: int, truth: bool = True, k: int = 3) -> dict:
    mask = _mask(h, w, k)
    pred = np.roll(mask, 1, axis=1)
    return {"image": _image(h, w, seed), "truth": mask if truth else None, "prediction": pred, "caption": f"img{seed}"}


def test_comparison_grid_grows_with_rows_and_columns() -> None:
    colors = default_colors(3)
    names = ["background", "cat", "dog"]
    one = comparison_grid([_row(12, 16, 0)], colors, names, tile_height=64, ignore_index=255)
    two = comparison_grid([_row(12, 16, 0), _row(30, 20, 1)], colors, names, tile_height=64, ignore_index=255)
    no_truth = comparison_grid([_row(12, 16, 0, truth=False), _row(30, 20, 1, truth=False)], colors, names,
                               tile_height=64, ignore_index=255)
    for grid in (one, two, no_truth):
        assert grid.ndim == 3 and grid.shape[2] == 3 and grid.dtype == np.uint8
    assert two.shape[0] >= one.shape[0] + 64  # one more row of tiles
    assert no_truth.shape[1] < two.shape[1]  # the truth column is gone
    assert no_truth.shape[0] == two.shape[0]
    titled = comparison_grid([_row(12, 16, 0)], colors, names, title="epoch 3", tile_height=64, ignore_index=255)
    assert titled.shape[0] > one.shape[0]
    # Mask colors appear in the grid (truth/prediction tiles are drawn nearest-neighbour).
    flat = {tuple(p) for p in two.reshape(-1, 3).tolist()}
    assert {(128, 0, 0), (0, 128, 0)} <= flat


def test_comparison_grid_with_missing_truth_in_one_row(tmp_path: Path) -> None:
    colors = default_colors(3)
    rows = [_row(12, 16, 0), _row(16, 16, 1, truth=False)]
    grid = comparison_grid(rows, colors, tile_height=48, ignore_index=255)
    full = comparison_grid([_row(12, 16, 0), _row(16, 16, 1)], colors, tile_height=48, ignore_index=255)
    assert grid.shape == full.shape  # the column stays; the missing tile is a placeholder
    path = tmp_path / "grid.png"
    save_comparison_grid(rows, path, colors, class_names=["bg", "a", "b"], title="val", ignore_index=255)
    assert _open_png(path).mode == "RGB"
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError):
        comparison_grid([], colors, ignore_index=255)
    with pytest.raises(ValueError, match="row 0"):
        comparison_grid([{"image": _image()}], colors, ignore_index=255)


# ---------------------------------------------------------------- training curves


def _write_metrics_csv(path: Path, epochs: int) -> None:
    """Mimic Lightning's CSVLogger: train, val, epoch and lr rows logged separately, so most cells are empty."""
    header = ["epoch", "lr-Adam", "step", "train_loss_epoch", "train_loss_step", "val_dice", "val_loss", "val_miou"]
    lines = [",".join(header)]
    step = 0
    for e in range(epochs):
        for _ in range(4):
            lines.append(f",{1e-3 * 0.9 ** e},{step},,,,,")  # lr row: no epoch
            lines.append(f"{e},,{step},,{1.0 / (e + 1) + 0.05 * (step % 3)},,,")
            step += 1
        miou = 0.3 + 0.1 * e if e < 3 else 0.55 - 0.02 * e  # peaks at epoch 2
        lines.append(f"{e},,{step - 1},,,{miou + 0.05},{0.8 / (e + 1)},{miou}")
        lines.append(f"{e},,{step - 1},{1.0 / (e + 1)},,,,")
    path.write_text("\n".join(lines) + "\n")


def test_plot_curves_from_sparse_lightning_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    _write_metrics_csv(csv_path, epochs=6)
    out = tmp_path / "plots" / "curves.png"
    plot_curves(csv_path, out)
    img = _open_png(out)
    assert img.width > 400 and img.height > 200
    plot_curves(csv_path, tmp_path / "miou.png", monitor="val_miou")
    _open_png(tmp_path / "miou.png")
    with pytest.raises(ValueError, match="val_nope"):
        plot_curves(csv_path, tmp_path / "nope.png", monitor="val_nope")
    assert not (tmp_path / "nope.png").exists()
    assert _no_temp_files(tmp_path)


def test_plot_curves_one_epoch_and_missing_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    _write_metrics_csv(csv_path, epochs=1)
    plot_curves(csv_path, tmp_path / "one.png")
    _open_png(tmp_path / "one.png")
    # Training without validation: only a loss column.
    train_only = tmp_path / "train_only.csv"
    train_only.write_text("epoch,step,train_loss_step\n0,0,0.9\n0,1,0.8\n1,2,0.7\n")
    plot_curves(train_only, tmp_path / "train_only.png")
    _open_png(tmp_path / "train_only.png")


def test_plot_curves_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="nope.csv"):
        plot_curves(missing, tmp_path / "x.png")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        plot_curves(empty, tmp_path / "x.png")
    header_only = tmp_path / "header.csv"
    header_only.write_text("epoch,step,val_miou\n")
    with pytest.raises(ValueError, match="header.csv"):
        plot_curves(header_only, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    assert _no_temp_files(tmp_path)


# ---------------------------------------------------------------- evaluation plots


def test_plot_confusion_small_and_large(tmp_path: Path) -> None:
    small = np.array([[50, 3, 2], [0, 0, 0], [4, 1, 40]])  # class 1 never in the truth
    plot_confusion(small, ["background", "cat", "dog"], tmp_path / "cm3.png")
    plot_confusion(small, ["background", "cat", "dog"], tmp_path / "cm3_counts.png", normalize=False)
    img3 = _open_png(tmp_path / "cm3.png")

    rng = np.random.default_rng(0)
    k = 59
    big = rng.integers(0, 20, (k, k)) + np.diag(rng.integers(100, 1000, k))
    big[7] = 0
    names = [f"class_name_{i:02d}" for i in range(k)]
    plot_confusion(big, names, tmp_path / "cm59.png")
    img59 = _open_png(tmp_path / "cm59.png")
    assert img59.width > img3.width and img59.height > img3.height  # the figure grows with K
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError):
        plot_confusion(small, ["a", "b"], tmp_path / "bad.png")


def test_plot_per_class(tmp_path: Path) -> None:
    per_class = [
        {"name": "background", "iou": 0.95, "support": 120_000},
        {"name": "cat", "iou": 0.41, "support": 3_000},
        {"name": "dog", "iou": None, "support": 0},
        {"name": "bird", "iou": 0.77, "support": 800},
    ]
    plot_per_class(per_class, tmp_path / "iou.png")
    _open_png(tmp_path / "iou.png")
    plot_per_class([{"name": "x", "dice": None, "support": 0}], tmp_path / "dice.png", metric="dice")
    _open_png(tmp_path / "dice.png")
    with pytest.raises(ValueError, match="recall"):
        plot_per_class(per_class, tmp_path / "r.png", metric="recall")
    assert _no_temp_files(tmp_path)


def test_gallery_tiles_fit_a_bounded_box_whatever_the_aspect():
    from masksmith.visualize import comparison_grid

    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)

    def grid(height: int, width: int) -> np.ndarray:
        row = {"image": np.full((height, width, 3), 200, np.uint8), "prediction": np.ones((height, width), np.uint8),
               "truth": None, "caption": "x"}
        return comparison_grid([row], colors, tile_height=64, max_tile_width=128, ignore_index=255)

    square, wide, tall = grid(64, 64), grid(20, 6000), grid(6000, 20)
    pad = 4  # comparison_grid's padding at tile_height 64
    assert wide.shape[1] == pad + 3 * (128 + pad)  # three columns (no truth), each capped at 128 pixels
    assert wide.shape[0] == square.shape[0] == tall.shape[0]  # rows stay tile_height tall
    assert tall.shape[1] <= square.shape[1]  # a 6000x20 column is scaled to 64 tall (1 pixel wide), not widened
