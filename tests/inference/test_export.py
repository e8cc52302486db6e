"""ONNX export: fp32 parity with PyTorch, dynamic shapes, embedded metadata, int8, the ONNX backend and CLI."""

from __future__ import annotations

import importlib
import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

import masksmith  # noqa: E402
from masksmith.bundle import read_meta  # noqa: E402
from masksmith.cli.app import app  # noqa: E402
from masksmith.errors import BundleError, ConfigError, MasksmithError  # noqa: E402
from masksmith.inference.backends import OnnxBackend, network_to_onnx, read_onnx_meta  # noqa: E402
from masksmith.inference.export import export_onnx, upsampling_as_depth_to_space  # noqa: E402
from masksmith.inference.predictor import Predictor  # noqa: E402
from tests.helpers import make_shapes_dataset, untrained_bundle  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained for a few seconds on the synthetic shapes, exported fp32 and int8."""
    root = tmp_path_factory.mktemp("export")
    data = make_shapes_dataset(root / "shapes", count=12, size=(40, 56))
    run = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=8, batch_size=4, lr=3e-3,
                          model_options={"base_channels": 8, "depth": 3}, early_stopping=0,
                          out=str(root / "run"), quiet=True)
    fp32 = export_onnx(run.bundle, root / "model.onnx")
    int8 = export_onnx(run.bundle, root / "model.int8.onnx", int8=True, calibration=data / "images")
    return root, data, run.bundle, fp32, int8


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 32, 32), (1, 3, 45, 70), (3, 3, 64, 24)])
def test_fp32_onnx_matches_pytorch_at_any_batch_and_size(trained, shape):
    root, _, bundle, report, _ = trained
    torch_predictor = Predictor.load(bundle, device="cpu", optimize=False)
    backend = OnnxBackend(root / "model.onnx")
    batch = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        expected = torch_predictor.network(batch)
    got = backend(batch)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    assert report.precision == "fp32" and report.max_rel_diff <= 1e-4 and len(report.checks) >= 2


@pytest.mark.slow
def test_metadata_round_trips_through_the_onnx_file(trained):
    root, _, bundle, _, _ = trained
    original = read_meta(bundle)
    for name in ("model.onnx", "model.int8.onnx"):
        meta = read_onnx_meta(root / name)
        assert meta == original
        assert (meta.class_names, meta.colors, meta.mean, meta.std, meta.threshold) == (
            original.class_names, original.colors, original.mean, original.std, original.threshold)
    props = {p.key for p in onnx.load(str(root / "model.onnx")).metadata_props}
    assert "masksmith" in props


@pytest.mark.slow
def test_int8_export_is_calibrated_and_agrees_with_fp32(trained):
    root, data, _, _, report = trained
    assert report.precision == "int8" and report.calibration_images == 12
    assert (root / "model.int8.onnx").stat().st_size < (root / "model.onnx").stat().st_size
    model = onnx.load(str(root / "model.int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    fp32, int8 = Predictor.load(root / "model.onnx"), Predictor.load(root / "model.int8.onnx")
    images = sorted((data / "images").iterdir())
    same = [np.mean(a == b) for a, b in zip(fp32.predict_batch(images), int8.predict_batch(images))]
    assert np.mean(same) >= 0.95


@pytest.mark.slow
def test_int8_graph_stays_int8_with_weights_that_cannot_saturate(trained):
    root, _, _, _, _ = trained
    model = onnx.load(str(root / "model.int8.onnx"))
    ops = [node.op_type for node in model.graph.node]
    # The upsampling runs as an int8 1x1 conv + pixel shuffle, not as an fp32 ConvTranspose.
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights
    # 7-bit weights: two uint8 x int8 products (255 * 64 * 2) fit in VPMADDUBSW's 16 bits on CPUs without VNNI.
    assert all(np.abs(w).max() <= 64 for w in weights)


@pytest.mark.slow
def test_transposed_conv_rewrite_computes_the_same_function(trained):
    _, _, bundle, _, _ = trained
    predictor = Predictor.load(bundle, device="cpu", optimize=False)
    model = onnx.load_from_string(network_to_onnx(predictor.network, predictor.meta))
    assert any(node.op_type == "ConvTranspose" for node in model.graph.node)
    rewritten = upsampling_as_depth_to_space(onnx.load_from_string(model.SerializeToString()))
    assert not any(node.op_type == "ConvTranspose" for node in rewritten.graph.node)
    onnx.checker.check_model(rewritten)
    batch = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    expected = OnnxBackend(model.SerializeToString())(batch)
    got = OnnxBackend(rewritten.SerializeToString())(batch)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


@pytest.mark.slow
def test_onnx_predictions_match_the_bundle_from_the_command_line(trained, tmp_path):
    root, data, bundle, _, _ = trained
    exported = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", str(bundle), "--format", "onnx", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert "max |logit diff|" in result.output and exported.is_file()
    outputs = {}
    for label, model, extra in (("torch", bundle, ["--backend", "torch"]), ("onnx", exported, []),
                                ("msb-onnx", bundle, ["--backend", "onnx"]), ("msb-default", bundle, [])):
        out = tmp_path / label
        result = runner.invoke(app, ["predict", str(model), str(data / "images"), "--out", str(out), "-q", *extra])
        assert result.exit_code == 0, result.output
        outputs[label] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert len(outputs["torch"]) == 12
    for label in ("onnx", "msb-onnx", "msb-default"):
        assert outputs[label].keys() == outputs["torch"].keys()
        same = np.mean([np.mean(outputs[label][k] == outputs["torch"][k]) for k in outputs["torch"]])
        assert same >= 0.999


@pytest.mark.slow
def test_predict_options_tile_overlap_and_tta(trained, tmp_path):
    _, data, bundle, _, _ = trained
    result = runner.invoke(app, ["predict", str(bundle), str(data / "images"), "--out", str(tmp_path / "o"),
                                 "--tile", "32", "--overlap", "16", "--tta", "-q"])
    assert result.exit_code == 0, result.output
    # The plan gave these colour shapes `upright` augmentation (left-right flips only): the bundle records that,
    # and TTA averages the image and its mirror.
    assert "tta: 2 forward passes per image" in result.output
    assert len(list((tmp_path / "o").glob("*.png"))) == 12


def _plain_onnx(path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8  # one every onnxruntime reads
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind, message", [
    ("garbage", "not a readable ONNX model"),
    ("empty", "empty file"),
    ("foreign", "no 'masksmith' metadata"),
    ("missing", "no such ONNX model"),
])
def test_bad_onnx_files_give_one_clear_line_naming_the_file(tmp_path, kind, message):
    path = tmp_path / f"{kind}.onnx"
    if kind == "garbage":
        path.write_bytes(b"\x08\x07not an onnx protobuf at all" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        _plain_onnx(path)
    with pytest.raises(BundleError, match=message) as caught:
        Predictor.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    result = runner.invoke(app, ["predict", str(path), str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_export_refuses_what_it_cannot_do(trained, tmp_path):
    root, _, bundle, _, _ = trained
    with pytest.raises(MasksmithError, match="calibration"):
        export_onnx(bundle, tmp_path / "m.onnx", int8=True)
    with pytest.raises(MasksmithError, match=r"\.onnx"):
        export_onnx(bundle, tmp_path / "m.bin")
    with pytest.raises(MasksmithError, match="onnx backend only"):
        Predictor.load(root / "model.onnx", backend="torch")
    result = runner.invoke(app, ["export", str(bundle), "--format", "tflite"])
    assert result.exit_code == 2 and "only 'onnx'" in result.output


def test_export_is_the_function_and_no_submodule_shadows_it(tmp_path):
    # The ONNX code lives in masksmith.inference.export, so importing it cannot rebind masksmith.export.
    importlib.import_module("masksmith.inference.export")

    assert type(masksmith) is types.ModuleType  # a plain package module, no class swapped in
    assert importlib.util.find_spec("masksmith.export") is None
    assert callable(masksmith.export) and masksmith.export.__module__ == "masksmith.inference.export"
    from masksmith.inference.export import export_onnx

    assert callable(export_onnx)
    bundle = tmp_path / "model.msb"
    bundle.write_bytes(b"")
    with pytest.raises(ConfigError):  # the output would overwrite the input
        masksmith.export(bundle, bundle)
    with pytest.raises(MasksmithError, match="only 'onnx'"):
        masksmith.export(bundle, export_format="tflite")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return untrained_bundle(tmp_path / "model.msb")


def test_export_over_its_own_bundle_is_refused(tmp_path, bundle):
    before = bundle.read_bytes()
    result = CliRunner().invoke(app, ["export", str(bundle), "--out", str(bundle)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "would overwrite the input" in result.output
    assert bundle.read_bytes() == before


@pytest.mark.slow
def test_int8_export_measures_its_agreement_on_the_validation_split(trained, tmp_path):
    from masksmith.inference.export import validation_images

    root, data, bundle, _, report = trained
    meta = read_meta(bundle)
    wanted = set(meta.split["val"])
    found = validation_images(bundle, meta)
    assert wanted and {path.stem for path in found} == wanted
    assert report.validation_images == len(wanted) and 0.5 < report.validation_agreement <= 1
    header = OnnxBackend(root / "model.int8.onnx").header
    assert header.validation_agreement == pytest.approx(report.validation_agreement)
    assert header.validation_images == len(wanted)
    assert "on the validation split" in report.summary()
    # The same measure, taken independently: int8 masks against PyTorch's at the images' own size.
    int8, eager = Predictor.load(root / "model.int8.onnx"), Predictor.load(bundle, backend="torch")
    same = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(int8.predict_batch(found),
                                                                      eager.predict_batch(found))]))
    assert abs(same - report.validation_agreement) < 0.02
    # The fp32 export has nothing to claim; an int8 one is said to change masks, by as much as measured.
    assert OnnxBackend(root / "model.onnx").header.validation_agreement is None
    result = runner.invoke(app, ["predict", str(root / "model.int8.onnx"), str(data / "images"),
                                 "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    assert f"{100 * report.validation_agreement:.2f}% of the validation split's mask pixels" in result.output
    from masksmith.serve.model import ServedModel

    card = ServedModel.load(root / "model.int8.onnx").card
    assert card["precision"] == "int8" and card["int8"]["validation_images"] == len(wanted)
    claimed = "at least 99.5%" in card["int8"]["note"]
    assert claimed == (report.validation_agreement >= 0.995)
    assert ServedModel.load(root / "model.onnx").card["precision"] == "fp32"


@pytest.mark.parametrize("agreement, claim", [(0.9951, "at least 99.5%"), (0.9949, "only 99.49%"),
                                              (None, "not measured")])
def test_int8_note_claims_agreement_only_at_or_above_the_bar(agreement, claim):
    from masksmith.bundle import OnnxHeader
    from masksmith.inference.export import int8_note

    from tests.inference.test_backends import _meta  # a BundleMeta for the header

    header = OnnxHeader(precision="int8", validation_agreement=agreement,
                        validation_images=6 if agreement is not None else None, meta=_meta())
    assert claim in int8_note(header)
    assert int8_note(OnnxHeader(precision="fp32", meta=_meta())) is None
