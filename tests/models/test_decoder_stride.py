"""`-m decoder_stride=2|4`: an encoder U-Net whose decoder stops early and upsamples its logits bilinearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import masksmith
from masksmith.bundle import load_network, read_meta
from masksmith.errors import ConfigError
from masksmith.inference.predictor import Predictor
from masksmith.models import build_model
from masksmith.models.encoder_unet import DecoderBlock
from tests.helpers import make_shapes_dataset

TINY = {"base_channels": 4}


def flops(network: torch.nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(shape))
    return counter.get_total_flops()


@pytest.mark.parametrize("stride,blocks", [(1, 5), (2, 4), (4, 3)])
def test_the_decoder_stops_at_its_stride_and_the_logits_come_back_at_input_size(stride: int, blocks: int) -> None:
    torch.manual_seed(0)
    network = build_model("unet", 3, 5, encoder="efficientnet_lite0", decoder_stride=stride, **TINY).eval()
    assert sum(isinstance(m, DecoderBlock) for m in network.modules()) == blocks
    seen: list[torch.Size] = []
    network.head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    image = torch.randn(2, 3, 45, 70)  # not a multiple of 32: padded to 64x96, cropped back
    with torch.no_grad():
        logits = network(image)
    assert logits.shape == (2, 5, 45, 70)
    assert seen == [torch.Size((2, 5, 64 // stride, 96 // stride))]


def test_stride_4_logits_are_the_bilinear_upsampling_of_the_heads_map() -> None:
    torch.manual_seed(0)
    network = build_model("unet", 3, 3, encoder="mobilenet_v2", decoder_stride=4, **TINY).eval()
    captured: list[torch.Tensor] = []
    network.head.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        logits = network(torch.randn(1, 3, 64, 64))
    expected = F.interpolate(captured[0], scale_factor=4.0, mode="bilinear", align_corners=False)
    assert torch.allclose(logits, expected)


@pytest.mark.slow
def test_stopping_early_saves_the_most_expensive_blocks() -> None:
    shape = (1, 3, 192, 288)
    costs = {s: flops(build_model("unet", 3, 59, encoder="efficientnet_lite0", decoder_stride=s), shape)
             for s in (1, 2, 4)}
    assert costs[4] < costs[2] < costs[1]
    assert costs[4] < 0.7 * costs[1]  # the two blocks at strides 2 and 1 are a third of the whole network


@pytest.mark.parametrize("bad", [3, 0, 8, "4", 4.0001, True, None])
def test_other_strides_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="decoder_stride must be one of 1, 2, 4"):
        build_model("unet", 3, 2, encoder="efficientnet_lite0", decoder_stride=bad, **TINY)


def test_the_classic_unet_has_no_early_stop() -> None:
    build_model("unet", 3, 2, base_channels=4, depth=2, decoder_stride=1)  # the default, accepted
    with pytest.raises(ConfigError, match="decoder_stride=4 needs a pretrained encoder"):
        build_model("unet", 3, 2, base_channels=4, depth=2, decoder_stride=4)


@pytest.mark.slow
def test_a_trained_bundle_rebuilds_the_stride_and_exports_to_onnx(tmp_path) -> None:
    from masksmith.inference.export import export_onnx

    data = make_shapes_dataset(tmp_path / "shapes", count=6, size=(40, 56))
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=3, model="unet",
                             encoder="mobilenet_v2", model_options={**TINY, "decoder_stride": 4},
                             out=str(tmp_path / "run"), quiet=True, auto=False)
    assert read_meta(result.bundle).model_options["decoder_stride"] == 4
    _, network = load_network(result.bundle)
    assert network.decoder_stride == 4 and sum(isinstance(m, DecoderBlock) for m in network.modules()) == 3

    report = export_onnx(result.bundle, tmp_path / "model.onnx")
    assert report.max_rel_diff <= 1e-4
    images = sorted((data / "images").iterdir())
    eager, onnx = Predictor.load(result.bundle, device="cpu"), Predictor.load(tmp_path / "model.onnx")
    same = [np.mean(a == b) for a, b in zip(eager.predict_batch(images), onnx.predict_batch(images))]
    assert min(same) >= 0.999
