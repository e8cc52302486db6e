"""check_dataset / fingerprint / print_report: counts, pairing, classes, sizes, duplicates and leakage."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from masksmith.data.check import CheckReport, check_dataset, fingerprint, print_report, write_fingerprint
from masksmith.data.check.report import RARE_MAX_IMAGES, is_rare
from masksmith.errors import ConfigError, DataError
from masksmith.planning.plan import derive_plan
from tests.conftest import save_array
from tests.helpers import make_shapes_dataset


def _printed(report: CheckReport) -> str:
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=160))
    return buffer.getvalue()


def _pair(root: Path, name: str, mask: np.ndarray, image: np.ndarray | None = None, split: str = "") -> None:
    base = root / split if split else root
    if image is None:
        image = np.full((*mask.shape, 3), 100, np.uint8)
    save_array(base / "images" / f"{name}.png", image)
    save_array(base / "masks" / f"{name}.png", mask)


def _known_masks(root: Path) -> None:
    """Three 4x8 masks with exactly known class pixels: class 0, 1 and 2; class 3 never occurs."""
    a = np.zeros((4, 8), np.uint8)
    a[:, :2] = 1  # 8 px of class 1
    b = np.zeros((4, 8), np.uint8)
    b[0, :] = 2  # 8 px of class 2
    c = np.zeros((4, 8), np.uint8)
    c[:2, :2] = 1  # 4 px of class 1
    for name, mask in (("a", a), ("b", b), ("c", c)):
        _pair(root, name, mask)


# --- the clean path and the numbers ------------------------------------------------------------


def test_clean_dataset_counts_and_class_frequencies(tmp_path):
    _known_masks(tmp_path)
    report = check_dataset(tmp_path, classes=["bg", "one", "two", "three"], progress=False)
    assert report.splits == {"all": 3}
    assert report.encoding is not None and report.encoding.kind == "index"
    assert report.class_names == ["bg", "one", "two", "three"]
    assert report.class_pixels["overall"] == [96 - 20, 12, 8, 0]
    assert report.class_images["overall"] == [3, 2, 1, 0]
    assert report.class_pixels["all"] == report.class_pixels["overall"]
    assert report.never_seen() == ["three"]
    assert report.rare_classes() == ["one", "two"]  # <= 2 masks (and not in all of them)
    assert [p.code for p in report.errors] == []
    assert report.by_code("class_never_seen")[0].message == "class 3 'three' occurs in none of the 3 masks"
    assert report.exit_code(strict=False) == 0 and report.exit_code(strict=True) == 1
    assert report.image_modes == {"RGB": 3} and report.image_channels == {3: 3}
    assert report.mean == pytest.approx([100 / 255] * 3, abs=1e-5) and report.std == pytest.approx([0, 0, 0])


def test_classes_from_a_file_and_never_seen_named(tmp_path):
    _known_masks(tmp_path / "data")
    classes = tmp_path / "classes.txt"
    classes.write_text("bg\none\ntwo\nthree\n")
    report = check_dataset(tmp_path / "data", classes=classes, progress=False)
    assert report.never_seen() == ["three"]
    assert report.by_code("class_never_seen")[0].paths == [classes]


def test_classes_inferred_from_all_masks_not_a_sample(tmp_path):
    _known_masks(tmp_path)
    report = check_dataset(tmp_path, progress=False)
    assert report.class_names == ["class_0", "class_1", "class_2"]
    assert report.class_pixels["overall"] == [76, 12, 8]


def test_binary_masks(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :2] = 255  # 10% foreground
    for name in ("p", "q"):
        _pair(tmp_path, name, mask)
    report = check_dataset(tmp_path, progress=False)
    assert report.encoding is not None and report.encoding.kind == "binary"
    assert report.class_names == ["background", "foreground"]
    assert report.class_pixels["overall"] == [180, 20]
    fp = fingerprint(report)
    assert fp["foreground_share"] == pytest.approx(0.1)
    assert fp["encoding"]["kind"] == "binary"


def test_binary_with_foreground_value_and_ignore_index(tmp_path):
    mask = np.zeros((4, 5), np.uint8)
    mask[0, :] = 0
    mask[1:, :] = 255
    _pair(tmp_path, "x", mask)
    _pair(tmp_path, "y", np.full((4, 5), 255, np.uint8))
    report = check_dataset(tmp_path, foreground=0, progress=False)
    assert report.encoding is not None and report.encoding.foreground == 0
    assert report.class_pixels["overall"] == [15 + 20, 5]


def test_ignore_index_pixels_are_counted_apart(tmp_path):
    mask = np.array([[0, 1, 2, 255]], np.uint8).repeat(32, axis=0).repeat(8, axis=1)  # 32x32
    _pair(tmp_path, "x", mask, np.full((32, 32, 3), 1, np.uint8))
    _pair(tmp_path, "y", mask, np.full((32, 32, 3), 2, np.uint8))
    report = check_dataset(tmp_path, classes=["a", "b", "c"], progress=False)
    assert report.class_pixels["overall"] == [512, 512, 512]
    assert report.ignored_pixels["overall"] == 512
    assert not report.problems


def test_color_masks_are_counted_as_training_decodes_them(tmp_path):
    mask = np.zeros((40, 40, 3), np.uint8)
    mask[:20] = (255, 0, 0)  # 800 px red
    mask[30:, :10] = (0, 0, 255)  # 100 px blue
    for name in ("a", "b"):
        _pair(tmp_path, name, mask, np.random.default_rng(len(name) + ord(name)).integers(
            0, 256, (40, 40, 3), dtype=np.uint8))
    report = check_dataset(tmp_path, progress=False)
    assert report.encoding is not None and report.encoding.kind == "color"
    assert sorted(report.class_pixels["overall"]) == [200, 1400, 1600]  # blue, black, red
    assert not report.errors


@pytest.mark.parametrize("colour", [False, True])
def test_structure_width_is_foreground_pixels_per_run(tmp_path, colour):
    # Two stripes 3 px wide across 30x30 masks (vertical in one, horizontal in the other): each has 90 px in
    # 30 runs along its length and 3 across, so the structures are 90 / 33 px "wide" (about 3 for long stripes).
    stripes = np.zeros((30, 30), np.uint8)
    stripes[:, 5:8] = stripes[:, 20:23] = 1
    for name, mask in (("a", stripes), ("b", stripes.T.copy())):
        _pair(tmp_path, name, np.stack([mask * 255, mask * 0, mask * 0], axis=-1) if colour else mask,
              np.full((30, 30, 3), 100, np.uint8))
    report = check_dataset(tmp_path, progress=False)
    assert report.encoding is not None and (report.encoding.kind == "color") == colour
    # The stripes: 4 x (30 + 3) runs; the background: 3 runs in each of 30 lines and 1 in each of 24, twice.
    assert sorted(report.class_runs["overall"]) == [4 * (30 + 3), 2 * (3 * 30 + 24)]
    assert report.structure_width() == pytest.approx(90 / 33)
    assert fingerprint(report)["structure_width"] == round(90 / 33, 2)
    assert report.to_dict()["structure_width"] == pytest.approx(90 / 33)
    assert "labelled structures: 2.7 px wide" in _printed(report)


def test_no_foreground_no_structure_width(tmp_path):
    _pair(tmp_path, "a", np.zeros((8, 8), np.uint8))
    _pair(tmp_path, "b", np.zeros((8, 8), np.uint8))
    assert fingerprint(check_dataset(tmp_path, classes=["bg", "thing"], progress=False))["structure_width"] is None


def test_jpeg_masks_are_snapped_and_reported_as_lossy(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.where(np.add.outer(np.arange(64), np.arange(64)) < 64, 255, 0).astype(np.uint8)  # a diagonal edge
    for name in ("a", "b", "c"):
        save_array(tmp_path / "images" / f"{name}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        save_array(tmp_path / "masks" / f"{name}.jpg", mask, quality=70)
    report = check_dataset(tmp_path, progress=False)
    assert report.encoding is not None and report.encoding.kind == "binary"
    assert sum(report.class_pixels["overall"]) == 3 * 64 * 64
    assert report.class_pixels["overall"][1] == pytest.approx(3 * int((mask > 0).sum()), rel=0.05)
    assert not report.errors
    assert {p.name for p in report.by_code("lossy_mask")[0].paths} <= {"a.jpg", "b.jpg", "c.jpg"}


# --- problems -----------------------------------------------------------------------------------


def test_unpaired_files_reported_by_name_not_raised(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"])
    make_image_mask_pairs(tmp_path / "images", tmp_path / "unused", ["lonely"])
    make_image_mask_pairs(tmp_path / "unused2", tmp_path / "masks", ["orphan"])
    report = check_dataset(tmp_path, progress=False)
    assert report.splits == {"all": 3}
    assert [p.name for p in report.unpaired["all"]["images"]] == ["lonely.png"]
    assert [p.name for p in report.unpaired["all"]["masks"]] == ["orphan.png"]
    messages = [p.message for p in report.by_code("unpaired")]
    assert any("lonely.png: image has no mask" in m for m in messages)
    assert any("orphan.png: mask has no image" in m for m in messages)
    assert report.exit_code(strict=False) == 2


def test_unpaired_in_single_folder_layout(tmp_path):
    mask = np.zeros((6, 6), np.uint8)
    save_array(tmp_path / "a.png", np.zeros((6, 6, 3), np.uint8))
    save_array(tmp_path / "a_mask.png", mask)
    save_array(tmp_path / "b.png", np.zeros((6, 6, 3), np.uint8))
    save_array(tmp_path / "c_mask.png", mask)
    report = check_dataset(tmp_path, progress=False)
    assert [p.name for p in report.unpaired["all"]["images"]] == ["b.png"]
    assert [p.name for p in report.unpaired["all"]["masks"]] == ["c_mask.png"]


def test_layout_errors_become_one_problem(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    report = check_dataset(tmp_path, progress=False)
    assert [p.code for p in report.problems] == ["layout"]
    assert "unknown dataset layout" in report.problems[0].message
    assert report.exit_code(strict=False) == 2
    _printed(report)
    json.dumps(report.to_dict())
    with pytest.raises(DataError, match="folder not found"):
        check_dataset(tmp_path / "missing", progress=False)


def test_values_outside_the_given_classes(tmp_path):
    _pair(tmp_path, "ok", np.array([[0, 1], [1, 0]], np.uint8).repeat(8, 0).repeat(8, 1))
    _pair(tmp_path, "bad", np.array([[0, 1], [7, 9]], np.uint8).repeat(8, 0).repeat(8, 1))
    report = check_dataset(tmp_path, classes=["bg", "fg", "other"], progress=False)
    (problem,) = report.by_code("values_outside_classes")
    assert problem.paths[0].name == "bad.png"
    assert "[7, 9]" in problem.message and "0..2" in problem.message
    assert report.class_pixels["overall"][:2] == [128 + 64, 128 + 64]  # the good values still count


def test_size_mismatch_and_tiny(tmp_path):
    _pair(tmp_path, "fine", np.zeros((40, 40), np.uint8))
    save_array(tmp_path / "images" / "wrong.png", np.zeros((40, 50, 3), np.uint8))
    save_array(tmp_path / "masks" / "wrong.png", np.zeros((40, 40), np.uint8))
    _pair(tmp_path, "small", np.zeros((8, 40), np.uint8))
    report = check_dataset(tmp_path, progress=False)
    (mismatch,) = report.by_code("size_mismatch")
    assert "wrong.png: mask is 40x40 but image wrong.png is 50x40" in mismatch.message
    (tiny,) = report.by_code("tiny_image")
    assert tiny.paths[0].name == "small.png" and tiny.severity == "warning"


def test_duplicates_within_a_split_and_leakage_across_splits(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 16), np.uint8)
    for split, names in (("train", ["t1", "t2", "t3"]), ("val", ["v1", "v2"])):
        for name in names:
            _pair(tmp_path, name, mask, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), split=split)
    shutil.copy(tmp_path / "train/images/t1.png", tmp_path / "train/images/t2.png")  # duplicate in train
    shutil.copy(tmp_path / "train/images/t3.png", tmp_path / "val/images/v2.png")  # leaks into val
    report = check_dataset(tmp_path, progress=False)
    (duplicate,) = report.by_code("duplicate")
    assert duplicate.severity == "warning" and [p.name for p in duplicate.paths] == ["t1.png", "t2.png"]
    (leak,) = report.by_code("leakage")
    assert leak.severity == "error" and sorted(p.name for p in leak.paths) == ["t3.png", "v2.png"]
    assert "train and val" in leak.message
    assert report.exit_code(strict=False) == 2
    assert set(report.class_pixels) == {"train", "val", "overall"}


def test_mixed_channels_warning(tmp_path):
    _pair(tmp_path, "rgb", np.zeros((8, 40), np.uint8) + 1, np.zeros((8, 40, 3), np.uint8))
    _pair(tmp_path, "rgb2", np.zeros((8, 40), np.uint8) + 1, np.zeros((8, 40, 3), np.uint8))
    _pair(tmp_path, "gray", np.zeros((8, 40), np.uint8) + 1, np.zeros((8, 40), np.uint8))
    report = check_dataset(tmp_path, progress=False)
    (mixed,) = report.by_code("mixed_channels")
    assert [p.name for p in mixed.paths] == ["gray.png"]
    assert report.image_channels == {1: 1, 3: 2} and report.image_modes == {"RGB": 2, "L": 1}


def test_bad_arguments_raise(tmp_path):
    _known_masks(tmp_path)
    with pytest.raises(ConfigError, match="ignore_index"):
        check_dataset(tmp_path, ignore_index=300, progress=False)
    with pytest.raises(DataError, match="cannot read class list"):
        check_dataset(tmp_path, classes=tmp_path / "nope.txt", progress=False)


def test_rare_rule():
    assert is_rare(1, 1000) and is_rare(RARE_MAX_IMAGES, 1000) and is_rare(9, 1000)
    assert not is_rare(10, 1000) and not is_rare(0, 1000)
    assert not is_rare(2, 2)  # a class in every mask is not rare, however small the dataset


# --- output -------------------------------------------------------------------------------------


def test_print_report_tables_marks_and_and_n_more(tmp_path, make_image_mask_pairs):
    make_image_mask_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b"], num_classes=2)
    make_image_mask_pairs(tmp_path / "images", tmp_path / "nomask", [f"lonely{i:02d}" for i in range(13)])
    report = check_dataset(tmp_path, classes=["bg", "fg", "never[bold]"], progress=False)
    text = _printed(report)
    for heading in ("Pairs per split", "Image sizes", "Classes (3", "unpaired: 13", "NEVER SEEN", "… and 3 more"):
        assert heading in text
    assert "never[bold]" in text  # names are not read as markup
    assert "lonely12.png" not in text  # only the first 10 listed


def test_to_dict_is_json_and_complete(tmp_path):
    make_shapes_dataset(tmp_path, count=4)
    report = check_dataset(tmp_path, classes=tmp_path / "classes.txt", progress=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["splits"] == {"all": 4}
    assert [c["name"] for c in data["classes"]] == ["background", "red box", "blue box"]
    assert sum(c["pixel_share"] for c in data["classes"]) == pytest.approx(1.0)
    assert data["images"]["sizes"]["width"] == {"min": 56, "median": 56.0, "max": 56}
    assert data["images"]["sizes"]["common"] == [{"width": 56, "height": 40, "count": 4}]
    assert data["summary"]["errors"] == 0


def test_fingerprint_and_write(tmp_path):
    make_shapes_dataset(tmp_path / "data", count=6)
    report = check_dataset(tmp_path / "data", classes=tmp_path / "data" / "classes.txt", progress=False)
    out = write_fingerprint(report, tmp_path / "out" / "fingerprint.json")
    fp = json.loads(out.read_text())
    assert fp == json.loads(json.dumps(fingerprint(report)))
    assert fp["train_images"] == 6 and fp["channels"] == 3 and fp["num_classes"] == 3
    assert fp["image_size"]["median_width"] == 56 and fp["image_size"]["median_height"] == 40
    assert len(fp["mean"]) == 3 and all(0 < m < 1 for m in fp["mean"])
    assert fp["stats_images"] == 6
    assert sum(fp["class_pixel_frequency"]) == pytest.approx(1.0)
    assert list((tmp_path / "out").iterdir()) == [out]  # no temp file left behind


def test_fingerprint_uses_the_train_split(tmp_path):
    mask_train = np.zeros((16, 16), np.uint8)
    mask_val = np.ones((16, 16), np.uint8)
    _pair(tmp_path, "t", mask_train, split="train")
    _pair(tmp_path, "t2", mask_train + np.eye(16, dtype=np.uint8), split="train")
    _pair(tmp_path, "v", mask_val, split="val")
    fp = fingerprint(check_dataset(tmp_path, progress=False))
    assert fp["class_statistics_from"] == "train" and fp["train_images"] == 2
    assert fp["class_pixel_frequency"] == pytest.approx([1 - 16 / 512, 16 / 512])


# --- real data ----------------------------------------------------------------------------------

SLICE = [f"{i:04d}" for i in range(1, 39)] + ["0738", "0772"]  # 0738 has a bra, 0772 the only earrings


@pytest.mark.slow
def test_clothing_slice_parallel_matches_serial(tmp_path, ccp_dir):
    for folder, ext in (("images", ".jpg"), ("masks", ".png")):
        (tmp_path / folder).mkdir()
        for name in SLICE:
            shutil.copy(ccp_dir / folder / f"{name}{ext}", tmp_path / folder / f"{name}{ext}")
    names = (ccp_dir / "classes.txt").read_text().split()
    parallel = check_dataset(tmp_path, classes=names, workers=2, progress=False)
    serial = check_dataset(tmp_path, classes=names, workers=1, progress=False)
    assert parallel.to_dict() | {"seconds": 0} == serial.to_dict() | {"seconds": 0}
    assert parallel.splits == {"all": 40} and not parallel.errors
    assert {"clogs", "intimate", "panties", "swimwear"} <= set(parallel.never_seen())
    assert {"earrings", "bra"} <= set(parallel.rare_classes())
    assert parallel.class_images["overall"][names.index("earrings")] == 1
    assert parallel.image_sizes and all(w == 550 for w, _ in parallel.image_sizes)


@pytest.mark.slow
def test_clothing_full_dataset(ccp_dir):
    report = check_dataset(ccp_dir, classes=ccp_dir / "classes.txt", progress=False)
    assert report.splits == {"all": 1004} and not report.errors
    assert report.never_seen() == ["clogs", "intimate", "panties", "swimwear"]
    images = dict(zip(report.class_names, report.class_images["overall"]))
    assert images["earrings"] == 1 and images["bra"] == images["hoodie"] == images["wedges"] == 2
    assert images["skin"] == 1003 and images["hair"] == 960
    assert {"earrings", "bra", "hoodie", "wedges"} <= set(report.rare_classes())
    sizes = report.size_summary()
    assert sizes["width"] == {"min": 550, "median": 550.0, "max": 550}
    assert sizes["height"]["min"] == 801 and sizes["height"]["max"] == 873
    assert sizes["common"][0] == {"width": 550, "height": 825, "count": 121}
    assert report.pixel_shares()[0] == pytest.approx(0.77, abs=0.01)
    # Garments are wide: resized to 384x256 they keep ~16 px, so the plan trains on whole photos.
    assert report.structure_width() == pytest.approx(33.5, abs=0.5)
    plan = {c.option: c for c in derive_plan(fingerprint(report), given={"size": [384, 256]})}
    assert plan["resize"].value == "resize"


def test_membranes_are_thin_and_train_on_crops(isbi_dir):
    report = check_dataset(isbi_dir / "train", foreground=0, progress=False)
    assert report.structure_width() == pytest.approx(5.4, abs=0.3)
    plan = {c.option: c for c in derive_plan(fingerprint(report), given={"size": 256})}
    assert plan["resize"].value == "random_crop"


def _die(task):
    import os

    os._exit(3)


@pytest.mark.slow
def test_a_dying_worker_is_a_clear_error():
    from masksmith.data.check.files import map_tasks as _map

    with pytest.raises(DataError, match="worker process died"):
        list(_map(_die, list(range(40)), 2, False, "testing"))
