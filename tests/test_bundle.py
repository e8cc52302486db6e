"""The model bundle: one safetensors file, weights + JSON metadata, never a pickle."""

import json

import pytest
import torch
from safetensors.torch import save_file

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
