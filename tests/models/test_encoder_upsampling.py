"""An encoder U-Net's bundle says how its decoder really upsamples (nearest or bilinear, never the classic
U-Net's default "transpose", which this decoder has no layers for)."""

from __future__ import annotations

import pytest
import torch

import masksmith
from masksmith.bundle import load_network, read_meta
from masksmith.errors import ConfigError
from masksmith.models import build_model
from masksmith.models.encoder_unet import DecoderBlock
from masksmith.training.network import bundle_options
from tests.helpers import make_shapes_dataset

TINY = {"base_channels": 4}


def decoder_modes(network: torch.nn.Module) -> set[str]:
    return {block.mode for block in network.modules() if isinstance(block, DecoderBlock)}


@pytest.mark.parametrize("given,expected", [({}, "nearest"), ({"upsampling": "transpose"}, "nearest"),
                                            ({"upsampling": "nearest"}, "nearest"),
                                            ({"upsampling": "bilinear"}, "bilinear")])
def test_encoder_unet_records_the_mode_it_runs(given: dict, expected: str) -> None:
    network = build_model("unet", 3, 2, encoder="mobilenet_v2", **TINY, **given)
    assert decoder_modes(network) == {expected}
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in network.modules())
    assert network.masksmith_arch["options"]["upsampling"] == expected
    assert bundle_options({"encoder": "mobilenet_v2", "weights": "imagenet", **given}, network) == {
        "encoder": "mobilenet_v2", "weights": None, **given, "upsampling": expected}


def test_classic_unet_keeps_its_modes_and_records_nothing_extra() -> None:
    network = build_model("unet", 3, 2, base_channels=4, depth=2)
    assert network.masksmith_arch["options"]["upsampling"] == "transpose"
    assert bundle_options({"base_channels": 4}, network) == {"base_channels": 4}
    with pytest.raises(ConfigError, match="transpose, bilinear"):
        build_model("unet", 3, 2, upsampling="nearest")  # nearest is the encoder decoder's, not the classic's


@pytest.mark.parametrize("bad", ["cubic", "", "NEAREST", 2, None])
def test_encoder_unet_rejects_other_modes(bad: object) -> None:
    with pytest.raises(ConfigError, match="upsampling must be one of nearest, bilinear"):
        build_model("unet", 3, 2, encoder="efficientnet_lite0", upsampling=bad, **TINY)


@pytest.mark.slow
def test_trained_bundle_records_nearest_and_rebuilds_it(tmp_path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", count=6, size=(32, 32))
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=3, model="unet",
                             encoder="mobilenet_v2", model_options=TINY, out=str(tmp_path / "run"), quiet=True,
                             auto=False)
    meta = read_meta(result.bundle)
    assert meta.model_options["upsampling"] == "nearest" and meta.model_options["encoder"] == "mobilenet_v2"
    _, network = load_network(result.bundle)
    assert decoder_modes(network) == {"nearest"}
