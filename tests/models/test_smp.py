"""The smp extra: every architecture through the registry, local weights files, encoder normalization,
the full train → bundle → predict path, and the frozen-encoder schedule. Runs in .venv-smp (./test-smp.sh)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

smp = pytest.importorskip("segmentation_models_pytorch")

import masksmith  # noqa: E402
from masksmith.bundle import read_meta  # noqa: E402
from masksmith.errors import ConfigError  # noqa: E402
from masksmith.models import MODELS, build_model, model_options  # noqa: E402
from masksmith.models.smp import encoder_normalization  # noqa: E402
from masksmith.models.weights import load_weights  # noqa: E402
from tests.helpers import make_shapes_dataset  # noqa: E402

# DPT is registered too but needs a ViT encoder (tu-vit_*); the rest run on a small ResNet.
ARCHITECTURES = ["Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
                 "PAN", "UPerNet", "Segformer"]
ENCODER = "resnet18"
# PAN's pyramid pools its 1/32 features down 8x more: it needs a larger input than the rest.
INPUT_SIZE = {"PAN": 256}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_and_trains_a_step(arch, channels):
    torch.manual_seed(0)
    model = build_model(f"smp.{arch}", channels, 3, encoder=ENCODER)
    assert model.masksmith_arch["options"]["encoder"] == ENCODER
    size = INPUT_SIZE.get(arch, 64)
    images, masks = torch.randn(2, channels, size, size), torch.randint(0, 3, (2, size, size))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = _state(model)
    logits = model.train()(images)
    assert logits.shape == (2, 3, size, size)
    loss = torch.nn.functional.cross_entropy(logits, masks)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not _equal(before, _state(model))


@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus", "Segformer"])
def test_any_input_size_is_padded_to_the_stride_and_cropped_back(arch):
    # smp itself refuses 100 x 70 (not a multiple of 32 or 16); masksmith pads and crops back.
    torch.manual_seed(0)
    model = build_model(f"smp.{arch}", 3, 2, encoder=ENCODER).eval()
    with torch.no_grad():
        odd = model(torch.randn(2, 3, 100, 70))
        assert odd.shape == (2, 2, 100, 70)
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 2, 128, 128)


def test_every_smp_architecture_is_registered_with_its_options():
    for arch in ARCHITECTURES + ["DPT"]:
        assert f"smp.{arch}" in MODELS
    options = model_options("smp.Unet")
    assert options["encoder"] == "resnet34" and options["weights"] is None and "decoder_channels" in options
    with pytest.raises(ConfigError, match="no option 'decoder_chanels'"):
        build_model("smp.Unet", 3, 2, encoder=ENCODER, decoder_chanels=[8])


def test_architecture_options_pass_through():
    model = build_model("smp.Unet", 3, 2, encoder=ENCODER, encoder_depth=3, decoder_channels=[32, 16, 8])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_timm_encoders_work_through_tu_names():
    model = build_model("smp.FPN", 1, 2, encoder="tu-resnet10t")
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2, 64, 64)


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet19'.*did you mean"):
        build_model("smp.Unet", 3, 2, encoder="resnet19")


def test_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"smp.Unet needs the smp extra: pip install 'masksmith\[smp\]'"):
        build_model("smp.Unet", 3, 2, encoder=ENCODER)


def test_whole_model_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = build_model("smp.Unet", 3, 2, encoder=ENCODER).eval()
    path = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = build_model("smp.Unet", 3, 2, encoder=ENCODER, weights=str(path)).eval()
    assert _equal(_state(source), _state(loaded))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(image), loaded(image))


@pytest.mark.parametrize("layout", ["encoder.pth", "prefixed.safetensors"])
def test_encoder_weights_file_loads_the_encoder_alone(tmp_path, layout):
    torch.manual_seed(1)
    source = build_model("smp.Unet", 1, 2, encoder=ENCODER)
    path = tmp_path / layout
    if layout.endswith(".pth"):
        torch.save(source.encoder.state_dict(), path)  # the encoder's own key names
    else:
        save_file({f"encoder.{k}": v.contiguous() for k, v in source.encoder.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = build_model("smp.Unet", 1, 2, encoder=ENCODER, weights=str(path))
    assert _equal(_state(source.encoder), _state(loaded.encoder))
    assert not _equal(_state(source.decoder), _state(loaded.decoder))  # the decoder stays as initialised
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(source.encoder.eval()(image)[-1], loaded.encoder.eval()(image)[-1])


def test_mismatched_weights_are_reported_with_the_key_names(tmp_path):
    state = _state(build_model("smp.Unet", 3, 2, encoder=ENCODER).encoder)
    state["layer9.conv.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a 1-channel stem for a 3-channel model
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ConfigError) as error:
        build_model("smp.Unet", 3, 2, encoder=ENCODER, weights=str(path))
    assert "layer9.conv.weight" in str(error.value) and "conv1.weight" in str(error.value)
    report = load_weights(build_model("smp.Unet", 3, 2, encoder=ENCODER), path, part="encoder", strict=False)
    assert report.unexpected == ["layer9.conv.weight"] and report.mismatched[0].startswith("conv1.weight")


def test_train_bundle_and_predict_with_an_smp_unet(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2,
                             model="smp.Unet", encoder=ENCODER, weights=None, out=str(tmp_path / "run"), quiet=True)
    meta = read_meta(result.bundle)
    assert meta.model == "smp.Unet" and meta.model_options["encoder"] == ENCODER
    mean, std = encoder_normalization("smp.Unet", {"encoder": ENCODER})
    assert meta.mean == pytest.approx(mean) and meta.std == pytest.approx(std)
    mask = masksmith.load(str(result.bundle), device="cpu").predict(str(data / "images" / "s00.jpg"))
    assert mask.shape == (40, 56) and mask.max() <= 2
    # ONNX export of an smp model: verified against PyTorch at export, and the same masks from both backends.
    pytest.importorskip("onnxruntime")
    from masksmith.inference.export import export_onnx

    report = export_onnx(result.bundle, tmp_path / "model.onnx")
    assert report.max_rel_diff <= 1e-4
    onnx_mask = masksmith.load(str(tmp_path / "model.onnx"), device="cpu").predict(str(data / "images" / "s00.jpg"))
    assert np.array_equal(onnx_mask, mask)


def test_grayscale_frozen_then_fine_tuned_from_a_local_encoder_file(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    for image in (data / "images").iterdir():  # grayscale microscopy-like input
        Image.fromarray(np.asarray(Image.open(image).convert("L"))).save(image)
    torch.manual_seed(4)
    start = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("smp.FPN", 1, 3, encoder=ENCODER).encoder.state_dict().items()},
              str(start))
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=2, batch_size=2,
                             model="smp.FPN", encoder=ENCODER, weights=str(start), freeze_encoder_epochs=1,
                             out=str(tmp_path / "run"), quiet=True)
    assert result.epochs_run == 2
    meta = read_meta(result.bundle)
    # The bundle rebuilds the architecture only: its own tensors are the weights.
    assert meta.in_channels == 1 and meta.model_options["weights"] is None
    assert len(meta.mean) == 1
    mask = masksmith.load(str(result.bundle), device="cpu").predict(str(data / "images" / "s01.jpg"))
    assert mask.shape == (40, 56)
