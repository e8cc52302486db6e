"""Reliability limits: train enforces its data check, one pixel limit for every command, validated metadata."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import masksmith
from masksmith.data.limits import DEFAULT_MAX_IMAGE_PIXELS, ENV_VAR, ImageTooLarge, image_pixel_limit
from masksmith.data.images import read_image
from masksmith.errors import DataError
from tests.helpers import make_shapes_dataset

TINY = dict(size=16, epochs=2, batch_size=2, model_options={"base_channels": 4, "depth": 2}, early_stopping=0,
            quiet=True, auto=False, num_workers=0)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def real_zero_png(width: int, height: int) -> bytes:
    """A complete, decodable all-zero grayscale PNG, compressed row by row (never width x height in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the row's pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    noise = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


# --- item 4: train enforces what its check finds ------------------------------------------------------------


def test_train_fails_on_a_truncated_jpeg_before_training_and_names_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=6)
    _truncated_jpeg(data / "images" / "s03.jpg")
    with pytest.raises(DataError, match=r"s03\.jpg.*truncated") as caught:
        masksmith.train(data, out=str(tmp_path / "run"), **TINY)
    assert "1 problem(s)" in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


def test_train_skip_invalid_leaves_the_truncated_jpeg_out_and_lists_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=8)
    _truncated_jpeg(data / "images" / "s03.jpg")
    with pytest.warns(UserWarning, match=r"(?s)skipping 1 bad pair.*s03\.jpg: cannot read image: .*truncated"):
        result = masksmith.train(data, out=str(tmp_path / "run"), skip_invalid=True, val_fraction=0.5, **TINY)
    split = json.loads((result.run_dir / "split.json").read_text())
    used = split["train"] + split["val"]
    assert "s03" not in used and sorted(used) == [f"s0{i}" for i in range(8) if i != 3]
    assert "s03" not in masksmith.bundle.read_meta(result.bundle).split["val"]  # evaluate --split val skips it too
    assert result.bundle.is_file()


def test_a_real_10000_square_png_is_refused_before_decoding(tmp_path):
    # 100 Mpx: above the default limit but below PIL's own error limit, so PIL alone would decode it (GBs).
    path = tmp_path / "big.png"
    path.write_bytes(real_zero_png(10000, 10000))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageTooLarge, match=r"big\.png: image refused.*10000x10000 = 100000000 pixels.*89478485"):
        read_image(path)


def test_the_limit_is_configurable_by_environment_and_context(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    assert read_image(path).shape == (30, 40, 1)
    monkeypatch.setenv(ENV_VAR, "1000")
    with pytest.raises(ImageTooLarge, match=r"40x30 = 1200 pixels, over the limit of 1000"):
        read_image(path)
    with image_pixel_limit(1200):
        assert read_image(path).shape == (30, 40, 1)
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(masksmith.errors.ConfigError, match=ENV_VAR):
        read_image(path)
    monkeypatch.delenv(ENV_VAR)
    with image_pixel_limit(None):
        assert read_image(path).shape == (30, 40, 1)
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485


def test_a_limit_above_pils_own_is_honoured(tmp_path):
    # PIL refuses above 2 x its MAX_IMAGE_PIXELS inside Image.open; masksmith's limit, not PIL's, decides.
    path = tmp_path / "wide.png"
    path.write_bytes(real_zero_png(20000, 10000))  # 200 Mpx > PIL's error limit of 179 Mpx
    with image_pixel_limit(200_000_000):
        with masksmith.data.limits.open_image(path) as image:
            assert image.size == (20000, 10000)
    with pytest.raises(ImageTooLarge, match="20000x10000"):
        with masksmith.data.limits.open_image(path):
            pass


def test_train_refuses_an_image_over_its_max_image_pixels(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=6)  # 56x40 = 2240 pixels each
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    with pytest.raises(DataError, match=r"big\.png: image refused as a possible decompression bomb: 80x80 = 6400"):
        masksmith.train(data, out=str(tmp_path / "run"), max_image_pixels=5000, val_fraction=0.5, **TINY)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny 3-class U-Net bundle trained for one epoch on the synthetic shapes."""
    root = tmp_path_factory.mktemp("limits")
    data = make_shapes_dataset(root / "shapes", count=6)
    return masksmith.train(data, out=str(root / "run"), **{**TINY, "epochs": 1}).bundle


def test_predict_lists_a_real_bomb_png_and_writes_the_other_images(bundle, tmp_path):
    from masksmith.predict import Predictor, predict_files

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "big.png").write_bytes(real_zero_png(10000, 10000))
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(inputs / "fine.png")
    report = predict_files(Predictor.load(bundle, device="cpu"), [str(inputs)], tmp_path / "out", progress=False)
    assert [p.name for p in report.written] == ["fine.png"]
    assert [(p.name, "10000x10000" in why and "decompression bomb" in why) for p, why in report.failed] == [
        ("big.png", True)]


def test_evaluate_refuses_an_image_over_the_limit_by_name(bundle, tmp_path, monkeypatch):
    data = make_shapes_dataset(tmp_path / "data", count=3)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    monkeypatch.setenv(ENV_VAR, "5000")
    # Listed and gone past, as predict does; the other pairs are scored.
    result = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "eval", progress=False)
    assert result["images"] == 3 and [row["name"] for row in result["failed"]] == ["big"]
    assert re.search(r"images/big\.png: image refused as a possible decompression bomb: 80x80",
                     result["failed"][0]["reason"])


def test_check_uses_the_same_limit(tmp_path, monkeypatch):
    from masksmith.data.check import check_dataset

    data = make_shapes_dataset(tmp_path / "data", count=3)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    assert not check_dataset(data, workers=1, progress=False).by_code("too_large")
    monkeypatch.setenv(ENV_VAR, "5000")
    report = check_dataset(data, workers=1, progress=False)
    assert sorted(Path(p).parent.name for problem in report.by_code("too_large") for p in problem.paths) == [
        "images", "masks"]


# --- item 6: crafted bundle and ONNX metadata ------------------------------------------------------------


def _meta_values(**changes):
    values = dict(model="unet", model_options={"depth": 2, "base_channels": 4}, in_channels=1, out_channels=2,
                  class_names=["background", "membrane"], colors=[[0, 0, 0], [128, 0, 0]], size=64,
                  resize="resize", mean=[0.5], std=[0.25], threshold=0.4,
                  mask_encoding={"kind": "binary", "foreground": 0}, split={"kind": "random", "val": ["3"]})
    values.update(changes)
    return values


def _write_bundle(path: Path, header, weights=None) -> Path:
    from safetensors.torch import save_file

    save_file(weights or {"w": torch.zeros(1)}, str(path), metadata={"masksmith": json.dumps(header)})
    return path


def _tiny_weights(**meta_changes) -> dict:
    from masksmith.models import build_model

    meta = _meta_values(**meta_changes)
    return build_model(meta["model"], meta["in_channels"], meta["out_channels"], **meta["model_options"]).state_dict()



BAD_META = [
    ({"size": 10**9}, "size"),
    ({"colors": [[0, 0, 0], [999, 0, 0]]}, "colors.1.0"),
    ({"colors": [[0, 0, 0]]}, "1 colors for 2 classes"),
    ({"model_options": {"depth": 2, "base_channels": 200000}}, "base_channels = 200000 is out of range"),
    ({"threshold": float("nan")}, "threshold"),
    ({"mean": [float("nan")]}, "mean.0"),
    ({"std": [0.0]}, "std.0"),
    ({"mean": [0.5, 0.5, 0.5]}, "mean has 3 values for 1 input channel"),
    ({"ignore_index": -1}, "ignore_index"),
    ({"ignore_index": 1}, "ignore_index 1 is a class index"),
    ({"class_names": ["a", "b", "c"], "colors": [[0, 0, 0]] * 3, "mask_encoding": {"kind": "index"}},
     "2 output channels cannot give 3 classes"),
    ({"out_channels": 3, "class_names": ["a", "b", "c"], "colors": [[0, 0, 0]] * 3},
     "binary mask encoding has 2 classes"),
    ({"in_channels": 2, "mean": [0.5, 0.5], "std": [0.2, 0.2]}, "in_channels"),
    ({"mask_encoding": {"kind": "stripes"}}, "mask_encoding"),
    ({"size": True}, "size"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_META, ids=[m for _, m in BAD_META])
def test_crafted_bundle_metadata_is_one_clear_bundle_error(tmp_path, changes, message):
    from masksmith.predict import Predictor

    path = _write_bundle(tmp_path / "crafted.msb", {"format": "masksmith-bundle", "meta": _meta_values(**changes)},
                         _tiny_weights())
    with pytest.raises(masksmith.errors.BundleError) as caught:
        Predictor.load(path, device="cpu")
    text = str(caught.value)
    assert text.startswith(f"{path}: damaged masksmith metadata") and message in text and "\n" not in text


@pytest.mark.parametrize("header", [["a", "list"], {"format": "masksmith-bundle", "meta": [1, 2]}, "text", 3])
def test_bundle_metadata_that_is_not_an_object(tmp_path, header):
    path = _write_bundle(tmp_path / "listed.msb", header)
    with pytest.raises(masksmith.errors.BundleError, match=r"listed\.msb: damaged masksmith metadata"):
        masksmith.bundle.read_meta(path)


def test_weights_that_do_not_fit_the_metadata_are_refused_before_building(tmp_path):
    from masksmith.predict import Predictor

    # The metadata asks for 64 base channels, the file holds a 4-channel network: compared on the meta device.
    header = {"format": "masksmith-bundle", "meta": _meta_values(model_options={"depth": 2, "base_channels": 64})}
    path = _write_bundle(tmp_path / "mismatch.msb", header, _tiny_weights())
    with pytest.raises(masksmith.errors.BundleError,
                       match=r"mismatch\.msb: weights do not fit the unet architecture its metadata describes "
                             r"\(.* is \[4, 1, 3, 3\] in the file but \[64, 1, 3, 3\]"):
        Predictor.load(path, device="cpu")
    good = _write_bundle(tmp_path / "good.msb", {"format": "masksmith-bundle", "meta": _meta_values()}, _tiny_weights())
    predictor = Predictor.load(good, device="cpu")
    assert predictor.predict(np.zeros((20, 30), np.uint8)).shape == (20, 30)


def _onnx_with_header(path: Path, header) -> Path:
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2, "h", "w"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2, "h", "w"])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "masksmith", json.dumps(header)
    onnx.save(model, str(path))
    return path


def _onnx_header(**changes):
    return {"format": "masksmith-onnx", "format_version": 1, "input_multiple": 4, "precision": "fp32",
            "meta": _meta_values(in_channels=3, mean=[0.5] * 3, std=[0.25] * 3, model_options={}), **changes}


@pytest.mark.parametrize(("header", "message"), [
    (["not", "an", "object"], "a JSON list, not an object"),
    (_onnx_header(input_multiple=0), "input_multiple"),
    (_onnx_header(input_multiple="8"), "input_multiple"),
    (_onnx_header(precision="int3"), "precision"),
    (_onnx_header(meta={**_onnx_header()["meta"], "size": 10**9}), "meta.size"),
    (_onnx_header(meta={**_onnx_header()["meta"], "colors": [[0, 0, 0]]}), "1 colors for 2 classes"),
])
def test_crafted_onnx_metadata_is_one_clear_bundle_error(tmp_path, header, message):
    from masksmith.predict import Predictor

    path = _onnx_with_header(tmp_path / "crafted.onnx", header)
    with pytest.raises(masksmith.errors.BundleError) as caught:
        Predictor.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: damaged masksmith metadata in ONNX model") and message in text


def test_onnx_channels_must_match_the_metadata(tmp_path):
    from masksmith.predict import Predictor

    # The graph takes 2 channels; the metadata says 3 (RGB).
    path = _onnx_with_header(tmp_path / "channels.onnx", _onnx_header())
    with pytest.raises(masksmith.errors.BundleError, match=r"channels\.onnx: the graph's input has 2 channels"):
        Predictor.load(path)
    gray = _onnx_header(meta=_meta_values(in_channels=1, model_options={}))
    # in_channels 1 is not 2 either; only the output (2 logits for 2 classes) agrees
    with pytest.raises(masksmith.errors.BundleError, match="input has 2 channels but its masksmith metadata says 1"):
        Predictor.load(_onnx_with_header(tmp_path / "gray.onnx", gray))


# --- item 6: deeply nested annotation JSON ----------------------------------------------------------------


def _labelme_file(path: Path, shapes_text: str) -> Path:
    """A Labelme file with a 20x30 embedded image; `shapes_text` is spliced in as raw JSON."""
    import base64

    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"version": "5.4.1", "flags": {{}}, "shapes": {shapes_text}, "imageHeight": 20, '
                    f'"imageWidth": 30, "imagePath": "{path.stem}.png", "imageData": "{image}"}}')
    return path


def _shape_points(points: str) -> str:
    return f'[{{"label": "a", "points": {points}, "group_id": null, "shape_type": "polygon", "flags": {{}}}}]'


@pytest.mark.parametrize("depth", [200, 100_000])  # 200: json.loads copes, later code would not; 100000: it fails
def test_deeply_nested_labelme_json_is_a_per_file_error(tmp_path, depth):
    from masksmith.data.convert import convert_labelme

    src = tmp_path / "src"
    _labelme_file(src / "good.json", _shape_points("[[2, 2], [20, 2], [20, 15]]"))
    _labelme_file(src / "nested.json", _shape_points("[" * depth + "]" * depth))
    report = convert_labelme(src, tmp_path / "out", ["_background_", "a"], visualize=False, progress=False)
    assert report.written == ["good"]
    assert [(p.name, why) for p, why in report.failed] == [
        ("nested.json", f"{src / 'nested.json'}: JSON nested more than 64 levels deep; annotation files nest "
                        "about 5 (a damaged or crafted file?)")]


def test_deeply_nested_coco_json_is_one_clear_error(tmp_path):
    from masksmith.data.convert import convert_coco

    (tmp_path / "images").mkdir()
    ann = tmp_path / "annotations.json"
    ann.write_text('{"images": [], "categories": [], "annotations": [{"segmentation": ' + "[" * 50_000
                   + "]" * 50_000 + "}]}")
    with pytest.raises(DataError, match=r"annotations\.json: JSON nested more than 64 levels deep") as caught:
        convert_coco(ann, tmp_path / "images", tmp_path / "out", progress=False)
    assert "\n" not in str(caught.value)


def test_nesting_depth_is_measured_without_recursion():
    from masksmith.data.convert.nesting import nesting_depth_exceeds

    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit
        deep = [deep]
    assert nesting_depth_exceeds(deep)
    assert not nesting_depth_exceeds({"shapes": [{"points": [[1.0, 2.0]]}]}, limit=5)  # object, list, object, list, list
    assert nesting_depth_exceeds({"shapes": [{"points": [[1.0, 2.0]]}]}, limit=4)


# --- item 6: bounded gallery for extreme aspect ratios ---------------------------------------------------------


def test_evaluate_gallery_of_a_10000x16_strip_stays_small(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSMITH_MAX_ASPECT", "1000")  # 625:1 is over the default work budget's 100:1
    data = tmp_path / "strip"
    rng = np.random.default_rng(0)
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 10000, 3), dtype=np.uint8)).save(data / "images" / "w.png")
    Image.fromarray(rng.integers(0, 3, (16, 10000), dtype=np.uint8)).save(data / "masks" / "w.png")
    result = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "eval", progress=False)
    assert result["images"] == 1
    with Image.open(tmp_path / "eval" / "gallery.png") as gallery:
        width, height = gallery.size
    # Four tiles of at most 2 x 256 pixels wide, plus padding (it was 640025 pixels wide).
    assert width <= 4 * (512 + 8) + 8 and height < 1000


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
