"""Reliability: no command writes over a file it reads, and odd inputs never give silently wrong results."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.cli import app
from masksmith.data.convert import convert_coco, convert_labelme
from masksmith.errors import ConfigError
from masksmith.fileio import refuse_overwrite
from masksmith.models import build_model


def _digests(folder: Path) -> dict[str, str]:
    """File name -> BLAKE2 of its bytes, for every regular file directly in `folder`."""
    return {p.name: hashlib.blake2b(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _photos(folder: Path, names: list[str], size: tuple[int, int] = (24, 32)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = folder / name
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """An untrained 3-class U-Net bundle: enough to run predict end to end in a second."""
    torch.manual_seed(0)
    network = build_model("unet", 3, 3, depth=2, base_channels=4)
    meta = BundleMeta(model="unet", model_options={"depth": 2, "base_channels": 4}, in_channels=3, out_channels=3,
                      class_names=["bg", "a", "b"], colors=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], size=32,
                      resize="random_crop", mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"})
    return save_bundle(tmp_path / "model.msb", network.state_dict(), meta)


def _predict(bundle: Path, *args: str):
    return CliRunner().invoke(app, ["predict", str(bundle), *args, "-q"], catch_exceptions=False)


# --- 3. inputs are never overwritten ------------------------------------------------------------------


def test_predict_into_its_own_input_folder_is_refused_and_touches_nothing(tmp_path, bundle):
    inputs = tmp_path / "photos"
    _photos(inputs, [f"p{i}.png" for i in range(8)])
    before = _digests(inputs)
    result = _predict(bundle, str(inputs), "--out", str(inputs))
    assert result.exit_code == 2, result.output
    assert "would overwrite the input" in result.output and "p0.png" in result.output
    assert "8 outputs" in result.output
    assert _digests(inputs) == before


def test_predict_one_png_into_the_current_folder_is_refused(tmp_path, bundle):
    # conftest runs every test inside tmp_path, so "." is the folder holding a.png.
    _photos(tmp_path, ["a.png"])
    before = (tmp_path / "a.png").read_bytes()
    result = _predict(bundle, "a.png", "--out", ".")
    assert result.exit_code == 2, result.output
    assert "a.png" in result.output and "would overwrite" in result.output
    assert (tmp_path / "a.png").read_bytes() == before


def test_predict_through_a_symlinked_or_dotted_out_folder_is_refused(tmp_path, bundle):
    inputs = tmp_path / "photos"
    _photos(inputs, ["a.png"])
    os.symlink(inputs, tmp_path / "alias")
    before = _digests(inputs)
    for out in (tmp_path / "alias", tmp_path / "elsewhere" / ".." / "photos"):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        result = _predict(bundle, str(inputs), "--out", str(out))
        assert result.exit_code == 2, (out, result.output)
    assert _digests(inputs) == before


def test_predict_overlay_that_would_replace_an_input_is_refused(tmp_path, bundle):
    # OUT/overlays/<stem>.jpg is an output too: a JPEG input there must not be replaced by its overlay.
    out = tmp_path / "out"
    _photos(out / "overlays", ["b.jpg"])
    before = (out / "overlays" / "b.jpg").read_bytes()
    result = _predict(bundle, str(out / "overlays" / "b.jpg"), "--out", str(out), "--overlay")
    assert result.exit_code == 2, result.output
    assert (out / "overlays" / "b.jpg").read_bytes() == before


def test_predict_jpegs_into_their_own_folder_still_works(tmp_path, bundle):
    # No input is written over (a.jpg -> a.png), so this is not refused.
    inputs = tmp_path / "photos"
    _photos(inputs, ["a.jpg", "b.jpg"])
    result = _predict(bundle, str(inputs), "--out", str(inputs))
    assert result.exit_code == 0, result.output
    assert Image.open(inputs / "a.png").size == (32, 24)


def test_refuse_overwrite_sees_symlinked_and_hard_linked_outputs(tmp_path):
    source = _photos(tmp_path / "in", ["a.png"])[0]
    (tmp_path / "out").mkdir()
    os.symlink(source, tmp_path / "out" / "link.png")
    os.link(source, tmp_path / "out" / "hard.png")
    for target in ("link.png", "hard.png"):
        with pytest.raises(ConfigError, match="would overwrite the input"):
            refuse_overwrite([source], [tmp_path / "out" / target])
    refuse_overwrite([source], [tmp_path / "out" / "a.png"])  # a new file beside them is fine


def test_export_over_its_own_bundle_is_refused(tmp_path, bundle):
    before = bundle.read_bytes()
    result = CliRunner().invoke(app, ["export", str(bundle), "--out", str(bundle)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "would overwrite the input" in result.output
    assert bundle.read_bytes() == before


def _rotated_jpeg(path: Path) -> bytes:
    """A JPEG with an EXIF rotation tag (converters re-encode those upright, dropping the EXIF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path, exif=exif.tobytes())
    return path.read_bytes()


def _labelme_json(path: Path, image_path: str) -> None:
    shape = {"label": "a", "points": [[2, 2], [10, 2], [10, 10]], "group_id": None, "shape_type": "polygon",
             "flags": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": [shape], "imagePath": image_path,
                                "imageData": None}))


def test_convert_labelme_into_its_source_folder_is_refused(tmp_path):
    src = tmp_path / "src"
    original = _rotated_jpeg(src / "JPEGImages" / "x.jpg")
    _labelme_json(src / "x.json", "JPEGImages/x.jpg")
    with pytest.raises(ConfigError, match="src"):
        convert_labelme(src, src, progress=False)
    result = CliRunner().invoke(app, ["convert", "labelme", str(src), str(src), "-q"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert (src / "JPEGImages" / "x.jpg").read_bytes() == original
    assert not (src / "SegmentationClass").exists()  # refused before any work


def test_convert_labelme_whose_image_is_an_output_is_refused(tmp_path):
    # The JSONs sit in data/ann/ and read data/JPEGImages/x.jpg; converting into data/ would replace it.
    data = tmp_path / "data"
    original = _rotated_jpeg(data / "JPEGImages" / "x.jpg")
    _labelme_json(data / "ann" / "x.json", "../JPEGImages/x.jpg")
    with pytest.raises(ConfigError, match=r"x\.jpg.*would overwrite the input"):
        convert_labelme(data / "ann", data, progress=False)
    assert (data / "JPEGImages" / "x.jpg").read_bytes() == original
    report = convert_labelme(data / "ann", tmp_path / "voc", progress=False)  # elsewhere it converts
    assert report.written == ["x"]


def _coco(root: Path, images_dir: Path) -> tuple[Path, bytes]:
    original = _rotated_jpeg(images_dir / "x.jpg")
    annotations = {"images": [{"id": 1, "file_name": "x.jpg", "height": 30, "width": 20}],
                   "categories": [{"id": 1, "name": "thing"}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                    "segmentation": [[2, 2, 10, 2, 10, 10]]}]}
    path = root / "annotations.json"
    path.write_text(json.dumps(annotations))
    return path, original


@pytest.mark.parametrize("out_is", ["the images folder", "the images folder's parent"])
def test_convert_coco_over_its_images_is_refused(tmp_path, out_is):
    # OUT == IMAGES (the folder rule), or IMAGES == OUT/JPEGImages (the copy would replace the original).
    images = tmp_path / "data" / "JPEGImages"
    annotations, original = _coco(tmp_path, images)
    out = images if out_is == "the images folder" else tmp_path / "data"
    result = CliRunner().invoke(app, ["convert", "coco", str(annotations), str(images), str(out), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert (images / "x.jpg").read_bytes() == original
    assert convert_coco(annotations, images, tmp_path / "voc", progress=False).written == ["x"]


# --- 5. no silently wrong results ----------------------------------------------------------------------


def test_a_2d_npy_image_is_read_as_height_x_width(tmp_path, bundle):
    from masksmith.data.check import check_dataset
    from masksmith.data.images import read_image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):  # 64 rows x 48 columns: a 2-D uint8 array is a grayscale image
        np.save(root / "images" / f"{name}.npy", rng.integers(0, 256, (64, 48), dtype=np.uint8))
        Image.fromarray(rng.integers(0, 3, (64, 48), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    image = read_image(root / "images" / "a.npy")
    assert image.shape == (64, 48, 1)
    assert np.array_equal(image[:, :, 0], np.load(root / "images" / "a.npy"))
    report = check_dataset(root, workers=1, progress=False)
    assert not report.by_code("size_mismatch"), [p.message for p in report.problems]
    result = _predict(bundle, str(root / "images" / "a.npy"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "a.png").size == (48, 64)


def test_an_all_ignore_image_is_left_out_of_the_per_image_mean(tmp_path, bundle):
    from masksmith.evaluation import evaluate
    from masksmith.metrics import mean_image_score, per_image_dice

    everything_ignored = np.full((4, 4), 255, np.uint8)
    assert np.isnan(per_image_dice(np.ones((4, 4), np.uint8), everything_ignored, 3, ignore_index=255))
    assert mean_image_score([0.25, float("nan"), None, 0.75]) == (0.5, 2)

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    _photos(root / "images", ["a.png", "b.png", "c.png"])
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 3, (24, 32), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(root / "masks" / "c.png")
    result = evaluate(bundle, root, split="all", out=tmp_path / "eval", progress=False)
    dice = {row["name"]: row["dice"] for row in result["per_image"]}
    assert dice["c"] is None
    assert result["image_dice"] == pytest.approx((dice["a"] + dice["b"]) / 2)
    assert result["image_dice_left_out"] == 1
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["image_dice_left_out"] == 1
    assert "| image_dice_left_out | 1 |" in (tmp_path / "eval" / "report.md").read_text()


def _odd_entries(folder: Path) -> None:
    """A symlink loop, a dangling link and a folder, all named like images."""
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    os.symlink(folder / "nowhere" / "gone.png", folder / "dangling.png")
    (folder / "x.png").mkdir()


def test_predict_lists_links_and_folders_it_cannot_read(tmp_path, bundle):
    inputs = tmp_path / "photos"
    _photos(inputs, ["good.png"])
    _odd_entries(inputs)
    result = _predict(bundle, str(inputs), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "4 file(s) could not be read" in result.output
    assert "loop_a.png: symbolic link loop" in result.output
    assert "dangling.png: broken symbolic link" in result.output
    assert "x.png: is a folder" in result.output
    # The masks of the readable images, and the unreadable entries listed in failures.csv.
    assert sorted(n for n in os.listdir(tmp_path / "out") if not n.startswith(".")) == ["failures.csv", "good.png"]
    assert "dangling.png" in (tmp_path / "out" / "failures.csv").read_text()
    # The same entries found through a glob are listed too, not dropped.
    result = _predict(bundle, str(inputs / "*.png"), "--out", str(tmp_path / "out2"))
    assert result.exit_code == 1 and "dangling.png: broken symbolic link" in result.output, result.output


def test_train_names_a_broken_image_for_what_it_is(tmp_path):
    from masksmith.data.discover import discover
    from masksmith.errors import DataError

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    _photos(root / "images", ["a.png", "b.png"])
    (root / "masks").mkdir()
    for name in ("a", "b", "c", "d"):
        Image.fromarray(rng.integers(0, 3, (24, 32), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    os.symlink(root / "nowhere.png", root / "images" / "c.png")
    (root / "images" / "d.png").mkdir()
    with pytest.raises(DataError) as caught:
        discover(root)
    message = str(caught.value)
    assert "c.png: broken symbolic link" in message and "d.png: is a folder, not an image file" in message
    assert "have no image" not in message  # masks c.png and d.png are not blamed as unpaired
    with pytest.warns(UserWarning, match="broken symbolic link"):
        assert [s.name for s in discover(root, skip_unpaired=True)["all"]] == ["a", "b"]
    from masksmith.data.check import check_dataset

    unpaired = {Path(p.paths[0]).name: p.message for p in check_dataset(root, workers=1, progress=False)
                .by_code("unpaired")}
    assert "its image" in unpaired["c.png"] and "c.png is not a readable file" in unpaired["c.png"]


def _stray_dataset(root: Path) -> Path:
    """Binary masks, foreground 0 on background 255, two of three with a 10x5 patch of stray 128s."""
    _photos(root / "images", ["a0.png", "a1.png", "a2.png"], size=(40, 40))
    (root / "masks").mkdir()
    for index in range(3):
        mask = np.full((40, 40), 255, np.uint8)
        mask[5:15, 5:15] = 0
        if index:
            mask[20:25, 20:30] = 128
        Image.fromarray(mask).save(root / "masks" / f"a{index}.png")
    return root


def test_stray_binary_values_are_counted_in_a_warning(tmp_path):
    from masksmith.data.check import check_dataset
    from masksmith.data.detect import StrayMaskValuesWarning, detect_encoding

    root = _stray_dataset(tmp_path / "data")
    masks = sorted((root / "masks").iterdir())
    with pytest.warns(StrayMaskValuesWarning, match=r"100 pixels in 2 of the 3 masks .*\(128\).*count as background"):
        encoding, _ = detect_encoding(masks, foreground=0)
    assert (encoding.foreground, encoding.background) == (0, 255)
    report = check_dataset(root, foreground=0, workers=1, progress=False)
    [problem] = report.by_code("stray_binary_values")
    assert problem.severity == "warning"
    assert problem.message.startswith("100 pixels in 2 of 3 masks have values (128)")
    assert [Path(p).name for p in problem.paths] == ["a1.png", "a2.png"]
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1  # a warning, not an error
    clean = check_dataset(root, workers=1, progress=False)  # no --foreground: 3 index classes, nothing stray
    assert not clean.by_code("stray_binary_values")


def test_one_rgb_mask_among_binary_masks_is_named(tmp_path):
    from masksmith.data.check import check_dataset
    from masksmith.data.detect import detect_encoding
    from masksmith.errors import DataError

    root = _stray_dataset(tmp_path / "data")
    odd = np.zeros((40, 40, 3), np.uint8)
    odd[5:15, 5:15] = (255, 0, 0)
    Image.fromarray(odd).save(root / "masks" / "a1.png")
    with pytest.raises(DataError, match=r"a1\.png: is an RGB color mask"):
        detect_encoding(sorted((root / "masks").iterdir()), foreground=0)
    [problem] = check_dataset(root, foreground=0, workers=1, progress=False).by_code("mask_encoding")
    assert "a1.png: is an RGB color mask" in problem.message


# --- manifests ---------------------------------------------------------------------------------------------------


def test_a_csv_manifest_with_two_path_columns_is_an_error(tmp_path):
    from masksmith.data.manifest import read_manifest
    from masksmith.errors import DataError

    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,path\na.png,x,b.png\n")
    with pytest.raises(DataError, match=r"list\.csv: the header has 2 'path' columns; keep one"):
        read_manifest(manifest)


def test_a_parquet_manifest_with_two_path_columns_is_an_error(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    from masksmith.data.manifest import read_manifest
    from masksmith.errors import DataError

    manifest = tmp_path / "list.parquet"
    parquet.write_table(pyarrow.Table.from_arrays([pyarrow.array(["a.png"]), pyarrow.array(["b.png"])],
                                                  names=["path", "path"]), manifest)
    with pytest.raises(DataError, match=r"list\.parquet: 2 columns are named 'path'; keep one"):
        read_manifest(manifest)
