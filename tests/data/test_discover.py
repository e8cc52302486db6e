"""discover / split_samples: layouts, pairing by name, and clear errors for bad folders."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.data import discover as discover_module
from masksmith.data.detect import detect_encoding
from masksmith.data.discover import Sample, discover, split_samples
from masksmith.data.encoding import MaskEncoding
from masksmith.errors import ConfigError, DataError
from tests.conftest import save_array
from tests.data.mask_files import class_blocks
from tests.helpers import write_photos


def _stems(samples: list[Sample]) -> list[str]:
    return [s.name for s in samples]


def _assert_paired_by_name(samples: list[Sample], suffix: str = "") -> None:
    for s in samples:
        assert s.mask is not None and s.mask.stem == s.name + suffix


# --- layouts -------------------------------------------------------------------------------


def test_flat_layout_pairs_by_stem_not_order(tmp_path, make_image_mask_pairs):
    # jpg images and png masks: listing order differs by extension, pairing must not care.
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["b", "a", "c10", "c2"], image_ext=".jpg")
    splits = discover(tmp_path)
    assert list(splits) == ["all"]
    assert _stems(splits["all"]) == ["a", "b", "c10", "c2"]
    _assert_paired_by_name(splits["all"])
    assert splits["all"][0].image == tmp_path / "images" / "a.jpg"
    assert splits["all"][0].mask == tmp_path / "masks" / "a.png"


@pytest.mark.parametrize(("image_dir", "mask_dir"), [("img", "labels"), ("image", "annotations"), ("Images", "Masks")])
def test_flat_layout_accepts_other_folder_names(tmp_path, make_image_mask_pairs, image_dir, mask_dir):
    make_image_mask_pairs(tmp_path / image_dir, tmp_path / mask_dir, ["x", "y"])
    assert _stems(discover(tmp_path)["all"]) == ["x", "y"]


def test_split_folders_with_valid_name_and_unlabelled_test(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "train/images", tmp_path / "train/masks", ["t1", "t2", "t3"])
    make_image_mask_pairs(tmp_path / "valid/images", tmp_path / "valid/masks", ["v1"])
    make_image_mask_pairs(tmp_path / "test/images", tmp_path / "unused", ["u1"])
    with pytest.warns(UserWarning, match="test.*no masks folder"):
        splits = discover(tmp_path)
    assert set(splits) == {"train", "val"}
    assert _stems(splits["train"]) == ["t1", "t2", "t3"]
    assert _stems(splits["val"]) == ["v1"]


def test_split_folders_all_three(tmp_path, make_image_mask_pairs):
    for split in ("train", "val", "test"):
        make_image_mask_pairs(tmp_path / split / "images", tmp_path / split / "masks", [f"{split}_0"])
    splits = discover(tmp_path)
    assert {k: _stems(v) for k, v in splits.items()} == {"train": ["train_0"], "val": ["val_0"], "test": ["test_0"]}


def test_split_folders_val_and_valid_together_is_an_error(tmp_path, make_image_mask_pairs):
    for split in ("train", "val", "valid"):
        make_image_mask_pairs(tmp_path / split / "images", tmp_path / split / "masks", ["a"])
    with pytest.raises(DataError, match="val.*valid"):
        discover(tmp_path)


def _voc(root: Path, make, names: list[str], mask_dir: str = "SegmentationClass") -> None:
    make(root / "JPEGImages", root / mask_dir, names, image_ext=".jpg")


def test_voc_layout_with_imagesets(tmp_path, make_image_mask_pairs):
    _voc(tmp_path, make_image_mask_pairs, ["2007_000001", "2007_000002", "2007_000003", "2007_000004"])
    # VOC keeps many JPEGs without masks; only the ids listed in the split files count.
    jpegs = tmp_path / "JPEGImages"
    (jpegs / "2007_999999.jpg").write_bytes((jpegs / "2007_000001.jpg").read_bytes())
    sets = tmp_path / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000003\n2007_000001\n\n")
    (sets / "val.txt").write_text("2007_000002\n")
    (sets / "trainval.txt").write_text("2007_000001\n2007_000002\n2007_000003\n")
    splits = discover(tmp_path)
    assert {k: _stems(v) for k, v in splits.items()} == {
        "train": ["2007_000001", "2007_000003"],
        "val": ["2007_000002"],
    }
    _assert_paired_by_name(splits["train"])


def test_voc_split_file_with_unknown_id_names_the_file_and_id(tmp_path, make_image_mask_pairs):
    _voc(tmp_path, make_image_mask_pairs, ["a", "b"])
    sets = tmp_path / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nghost\nb\n")
    with pytest.raises(DataError, match=r"train\.txt.*1 listed id.*ghost"):
        discover(tmp_path)


def test_voc_without_imagesets_gives_all_and_prefers_segmentationclass(tmp_path, make_image_mask_pairs):
    _voc(tmp_path, make_image_mask_pairs, ["a", "b"])
    (tmp_path / "SegmentationClassNpy").mkdir()
    np.save(tmp_path / "SegmentationClassNpy" / "a.npy", np.zeros((2, 2)))
    make_image_mask_pairs(tmp_path / "unused", tmp_path / "SegmentationClassAug", ["zzz"])
    splits = discover(tmp_path)
    assert list(splits) == ["all"]
    assert {s.mask.parent.name for s in splits["all"]} == {"SegmentationClass"}


def test_voc_uses_first_segmentationclass_folder_with_pngs(tmp_path, make_image_mask_pairs):
    _voc(tmp_path, make_image_mask_pairs, ["a", "b"], mask_dir="SegmentationClassPNG")
    (tmp_path / "SegmentationClassNpy").mkdir()
    np.save(tmp_path / "SegmentationClassNpy" / "a.npy", np.zeros((2, 2)))
    splits = discover(tmp_path)
    assert {s.mask.parent.name for s in splits["all"]} == {"SegmentationClassPNG"}


def test_voc_without_png_masks_is_an_error(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "JPEGImages", tmp_path / "elsewhere", ["a"])
    with pytest.raises(DataError, match="SegmentationClass"):
        discover(tmp_path)


def test_real_labelme_voc_export(labelme_voc_dir):
    splits = discover(labelme_voc_dir)
    assert _stems(splits["all"]) == ["2011_000003", "2011_000006", "2011_000025"]
    _assert_paired_by_name(splits["all"])


def test_real_isbi_split_folders(isbi_dir):
    with pytest.warns(UserWarning, match="test"):  # test/ holds images only
        splits = discover(isbi_dir)
    assert list(splits) == ["train"]
    assert len(splits["train"]) == 30
    assert _stems(splits["train"])[:3] == ["0", "1", "10"]  # sorted by name, deterministic
    _assert_paired_by_name(splits["train"])


def test_real_clothing_flat_layout(ccp_dir):
    samples = discover(ccp_dir)["all"]
    assert len(samples) == 1004
    assert samples[0].name == "0001" and samples[-1].name == "1004"
    _assert_paired_by_name(samples)


# --- mask suffixes ---------------------------------------------------------------------------


def test_mask_suffix_recognised_automatically(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b"], mask_suffix="_mask")
    samples = discover(tmp_path)["all"]
    _assert_paired_by_name(samples, "_mask")


def test_explicit_mask_suffix(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b"], mask_suffix="_m")
    with pytest.raises(DataError, match="have no mask"):
        discover(tmp_path)  # "_m" is not one of the automatic suffixes
    _assert_paired_by_name(discover(tmp_path, mask_suffix="_m")["all"], "_m")


def test_single_folder_with_suffixed_masks(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path, tmp_path, ["scan1", "scan2"], mask_suffix="_mask")
    samples = discover(tmp_path)["all"]
    assert _stems(samples) == ["scan1", "scan2"]
    _assert_paired_by_name(samples, "_mask")


def test_two_candidate_masks_name_both(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    (tmp_path / "masks" / "a_mask.png").write_bytes((tmp_path / "masks" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"a\.png and a_mask\.png"):
        discover(tmp_path)


def test_two_images_with_one_stem_is_an_error(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a"])
    (tmp_path / "images" / "a.jpg").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"a\.jpg and a\.png|a\.png and a\.jpg"):
        discover(tmp_path)


# --- unpaired files and bad folders -----------------------------------------------------------


def test_missing_masks_are_listed_by_name(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"])
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(DataError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "1 image(s)" in message and "b.png" in message and "a.png" not in message
    assert "\n" not in message


def test_many_missing_masks_are_truncated_with_a_count(tmp_path, make_image_mask_pairs):
    names = [f"img{i:02d}" for i in range(14)]
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", names, size=(2, 2))
    for name in names[1:]:
        (tmp_path / "masks" / f"{name}.png").unlink()
    with pytest.raises(DataError, match=r"13 image\(s\).*img01\.png.*img10\.png, … and 3 more"):
        discover(tmp_path)


def test_extra_masks_are_listed_by_name(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    make_image_mask_pairs(tmp_path / "unused", tmp_path / "masks", ["orphan"])
    with pytest.raises(DataError, match=r"1 mask\(s\) in .*masks have no image.*orphan\.png"):
        discover(tmp_path)


def test_skip_unpaired_warns_and_leaves_them_out(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"])
    make_image_mask_pairs(tmp_path / "unused", tmp_path / "masks", ["orphan"])
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.warns(UserWarning, match=r"b\.png.*orphan\.png"):
        samples = discover(tmp_path, skip_unpaired=True)["all"]
    assert _stems(samples) == ["a", "c"]


def test_hidden_and_non_image_files_are_ignored(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a"])
    for folder in ("images", "masks"):
        (tmp_path / folder / ".DS_Store").write_bytes(b"\0\1")
        (tmp_path / folder / "._a.png").write_bytes(b"AppleDouble")
        (tmp_path / folder / "notes.txt").write_text("hello")
    (tmp_path / "images" / "sub").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _stems(discover(tmp_path)["all"]) == ["a"]


def test_empty_root_folder(tmp_path):
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: folder is empty")):
        discover(tmp_path)


def test_empty_images_folder_is_named(tmp_path, make_image_mask_pairs):
    (tmp_path / "images").mkdir()
    make_image_mask_pairs(tmp_path / "unused", tmp_path / "masks", ["a"])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'images'}: no images found")):
        discover(tmp_path)


def test_empty_masks_folder_is_named(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "unused", ["a"])
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'masks'}: no masks found")):
        discover(tmp_path)


def test_unknown_layout_says_what_is_expected(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "pictures", tmp_path / "stuff", ["a"])
    with pytest.raises(DataError, match=r"unknown dataset layout; expected .*images.*masks.*JPEGImages"):
        discover(tmp_path)


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        discover(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        discover(tmp_path / "file.png")


# --- split_samples -----------------------------------------------------------------------------


def _fake_samples(n: int) -> list[Sample]:
    return [Sample(Path(f"/d/images/{i:03d}.png"), Path(f"/d/masks/{i:03d}.png")) for i in range(n)]


def test_split_samples_is_deterministic_disjoint_and_complete():
    samples = _fake_samples(20)
    train, val = split_samples(samples, 0.25, seed=7)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(samples)
    assert split_samples(list(reversed(samples)), 0.25, seed=7) == (train, val)  # input order does not matter
    assert _stems(train) == sorted(_stems(train))
    others = {tuple(_stems(split_samples(samples, 0.25, seed=s)[1])) for s in range(8)}
    assert len(others) > 1  # the seed matters


def test_split_samples_keeps_one_in_each_part():
    train, val = split_samples(_fake_samples(2), 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = split_samples(_fake_samples(3), 0.99, seed=0)
    assert len(train) == 1 and len(val) == 2


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_samples_rejects_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        split_samples(_fake_samples(10), fraction, seed=0)


def test_split_samples_needs_two_samples():
    with pytest.raises(DataError, match="at least 2"):
        split_samples(_fake_samples(1), 0.2, seed=0)


def test_npy_masks_pair_once_discover_lists_npy(tmp_path, monkeypatch):
    # discover.py lists masks with IMAGE_EXTENSIONS; with ".npy" added there, .npy masks pair by stem.
    extensions = discover_module.IMAGE_EXTENSIONS
    if ".npy" not in extensions:
        monkeypatch.setattr(discover_module, "IMAGE_EXTENSIONS", (*extensions, ".npy"))
    for name in ("a", "b"):
        save_array(tmp_path / "images" / f"{name}.png", np.zeros((12, 16, 3), np.uint8))
        (tmp_path / "masks").mkdir(exist_ok=True)
        np.save(tmp_path / "masks" / f"{name}.npy", class_blocks(k=3))
    samples = discover(tmp_path)["all"]
    assert [(s.image.name, s.mask.name) for s in samples] == [("a.png", "a.npy"), ("b.png", "b.npy")]
    encoding, num_classes = detect_encoding([s.mask for s in samples])
    assert (encoding, num_classes) == (MaskEncoding("index"), 3)


def test_train_names_a_broken_image_for_what_it_is(tmp_path):
    from masksmith.data.discover import discover
    from masksmith.errors import DataError

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_photos(root / "images", ["a.png", "b.png"])
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
