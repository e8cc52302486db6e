"""The model bundle: one safetensors file, weights + JSON metadata, never a pickle; crafted bundle and ONNX
metadata is one clear BundleError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import masksmith
from masksmith.bundle import BundleMeta, load_bundle, read_meta, save_bundle
from masksmith.errors import BundleError


def make_meta(**changes):
    values = dict(model="unet", model_options={"depth": 2}, in_channels=1, out_channels=2,
                  class_names=["background", "membrane"], colors=[[0, 0, 0], [128, 0, 0]], size=64,
                  resize="resize", mean=[0.5], std=[0.25], threshold=0.4,
                  mask_encoding={"kind": "binary", "foreground": 0}, split={"kind": "random", "val": ["3"]})
    values.update(changes)
    return BundleMeta(**values)


def test_round_trip_keeps_weights_and_metadata_exactly(tmp_path):
    state = {"conv.weight": torch.randn(4, 1, 3, 3), "bn.num_batches_tracked": torch.tensor(7)}
    path = save_bundle(tmp_path / "model.msb", state, make_meta())
    meta, weights = load_bundle(path)
    assert meta == make_meta() and meta.num_classes == 2
    assert set(weights) == set(state)
    assert all(torch.equal(weights[k], state[k]) for k in state)
    assert read_meta(path).threshold == 0.4
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_bundle_is_not_a_pickle(tmp_path):
    path = save_bundle(tmp_path / "model.msb", {"w": torch.zeros(2)}, make_meta())
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON


@pytest.mark.parametrize("content", [b"", b"not a bundle at all", b"\x80\x04\x95" + b"\x00" * 50])
def test_garbage_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.msb"
    path.write_bytes(content)
    with pytest.raises(BundleError, match="bad.msb: not a readable model bundle"):
        load_bundle(path)


def test_truncated_bundle_is_a_clear_error(tmp_path):
    path = save_bundle(tmp_path / "model.msb", {"w": torch.randn(1000)}, make_meta())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match="model.msb"):
        load_bundle(path)


def test_foreign_safetensors_and_damaged_metadata(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(BundleError, match="not a masksmith bundle"):
        load_bundle(foreign)
    damaged = tmp_path / "damaged.msb"
    save_file({"w": torch.zeros(1)}, str(damaged), metadata={"masksmith": json.dumps({"format": "masksmith-bundle", "meta": {"model": 3}})})
    with pytest.raises(BundleError, match="damaged masksmith metadata"):
        load_bundle(damaged)
    newer = tmp_path / "newer.msb"
    save_file({"w": torch.zeros(1)}, str(newer), metadata={"masksmith": json.dumps(
        {"format": "masksmith-bundle", "format_version": 99, "meta": make_meta().model_dump()})})
    with pytest.raises(BundleError, match="newer"):
        load_bundle(newer)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such model bundle"):
        load_bundle(tmp_path / "missing.msb")


def test_atomic_output_has_ordinary_permissions(tmp_path):
    import os
    import stat

    from masksmith.core.fileio import write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "x")
    plain = tmp_path / "b.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_onnx_header_is_checked_by_the_bundles_own_rules() -> None:
    from masksmith.bundle import onnx_header, parse_onnx_header

    meta = BundleMeta(model="unet", model_options={}, in_channels=3, out_channels=2, class_names=["bg", "fg"],
                      colors=[[0, 0, 0], [255, 255, 255]], size=32, resize="resize", mean=[0.5] * 3, std=[0.5] * 3,
                      mask_encoding={"kind": "index"})
    header = parse_onnx_header(onnx_header(meta, 8, "int8", 18), "m.onnx")
    assert (header.meta, header.input_multiple, header.precision) == (meta, 8, "int8")
    broken = json.loads(onnx_header(meta, 8, "fp32", 18))
    broken["meta"]["colors"] = [[0, 0, 0]]
    with pytest.raises(BundleError, match=r"m\.onnx: damaged masksmith metadata in ONNX model .*1 colors for 2"):
        parse_onnx_header(json.dumps(broken), "m.onnx")
    with pytest.raises(BundleError, match="newer than this masksmith"):
        parse_onnx_header(json.dumps({**broken, "format_version": 99}), "m.onnx")
    with pytest.raises(BundleError, match="not one exported by masksmith"):
        parse_onnx_header(None, "m.onnx")


def test_tta_flips_default_to_both_for_older_bundles_and_are_checked(tmp_path):
    older = make_meta().model_dump()
    del older["tta_flips"]  # a bundle written before the field: TTA kept its 4 views
    path = tmp_path / "older.msb"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"masksmith": json.dumps(
        {"format": "masksmith-bundle", "format_version": 1, "meta": older})})
    assert read_meta(path).tta_flips == ["horizontal", "vertical"]
    upright = save_bundle(tmp_path / "upright.msb", {"w": torch.zeros(1)}, make_meta(tta_flips=["horizontal"]))
    assert read_meta(upright).tta_flips == ["horizontal"]
    for flips in (["horizontal", "horizontal"], ["diagonal"], "horizontal"):
        with pytest.raises(ValueError, match="tta_flips"):
            make_meta(tta_flips=flips)


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
    from masksmith.inference.predictor import Predictor

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
    from masksmith.inference.predictor import Predictor

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
    from masksmith.inference.predictor import Predictor

    path = _onnx_with_header(tmp_path / "crafted.onnx", header)
    with pytest.raises(masksmith.errors.BundleError) as caught:
        Predictor.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: damaged masksmith metadata in ONNX model") and message in text


def test_onnx_channels_must_match_the_metadata(tmp_path):
    from masksmith.inference.predictor import Predictor

    # The graph takes 2 channels; the metadata says 3 (RGB).
    path = _onnx_with_header(tmp_path / "channels.onnx", _onnx_header())
    with pytest.raises(masksmith.errors.BundleError, match=r"channels\.onnx: the graph's input has 2 channels"):
        Predictor.load(path)
    gray = _onnx_header(meta=_meta_values(in_channels=1, model_options={}))
    # in_channels 1 is not 2 either; only the output (2 logits for 2 classes) agrees
    with pytest.raises(masksmith.errors.BundleError, match="input has 2 channels but its masksmith metadata says 1"):
        Predictor.load(_onnx_with_header(tmp_path / "gray.onnx", gray))


def test_one_function_per_name_for_building_networks():
    # training.network.build_network builds a run's initial network; bundle.restore_network rebuilds a saved one.
    import ast

    src = Path(masksmith.__file__).parent
    defined = sorted(f"{path.relative_to(src)}:{node.name}" for path in sorted(src.rglob("*.py"))
                     for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                     if isinstance(node, ast.FunctionDef) and node.name in ("build_network", "restore_network"))
    assert defined == ["bundle.py:restore_network", "training/network.py:build_network"]
