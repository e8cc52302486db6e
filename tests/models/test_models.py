"""One shared test class runs every registered architecture through the same contract."""

from __future__ import annotations

import json

import pytest
import torch

from masksmith.errors import ConfigError
from masksmith.models import (
    MODELS,
    build_model,
    logits_to_classes,
    logits_to_probabilities,
    model_options,
)
from masksmith.models.base import pad_to_multiple

# Built-in models only: the smp.* entries need the optional extra and are tested in models/test_smp.py.
ALL_MODELS = [name for name in MODELS.names() if not name.startswith("smp.")]


def tiny_options(name: str, **overrides: object) -> dict:
    """Small widths/depths for speed, limited to the options the model actually has."""
    wanted = {"base_channels": 4, "depth": 3, **overrides}
    valid = model_options(name)
    return {key: value for key, value in wanted.items() if key in valid}


def test_registry_holds_the_documented_models() -> None:
    assert {"unet", "fcn-lite"} <= set(ALL_MODELS)


def test_unet_options_and_defaults() -> None:
    assert model_options("unet") == {
        "depth": 4,
        "base_channels": 32,
        "upsampling": "transpose",
        "dropout": 0.0,
        "encoder": None,
        "weights": None,
        "decoder_stride": 1,
    }


@pytest.mark.parametrize("name", ALL_MODELS)
class TestEveryModel:
    @pytest.mark.parametrize("height,width", [(37, 53), (64, 64), (1, 1), (5, 130)])
    @pytest.mark.parametrize("in_channels,out_channels", [(1, 1), (3, 5)])
    def test_output_shape_any_size(
        self, name: str, height: int, width: int, in_channels: int, out_channels: int
    ) -> None:
        model = build_model(name, in_channels, out_channels, **tiny_options(name)).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, in_channels, height, width))
        assert logits.shape == (2, out_channels, height, width)
        assert torch.isfinite(logits).all()

    def test_default_options_odd_size(self, name: str) -> None:
        model = build_model(name, 3, 2).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 37, 53)).shape == (1, 2, 37, 53)

    def test_backward_reaches_every_parameter(self, name: str) -> None:
        model = build_model(name, 3, 4, **tiny_options(name))
        model(torch.randn(2, 3, 24, 30)).square().mean().backward()
        missing = [key for key, p in model.named_parameters() if p.grad is None]
        assert not missing

    def test_bilinear_upsampling(self, name: str) -> None:
        if "upsampling" not in model_options(name):
            pytest.skip(f"{name} has no upsampling option")
        transpose = build_model(name, 3, 2, **tiny_options(name, upsampling="transpose"))
        bilinear = build_model(name, 3, 2, **tiny_options(name, upsampling="bilinear"))
        # The variants really differ: bilinear has no ConvTranspose2d at all.
        assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in transpose.modules())
        assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in bilinear.modules())
        with torch.no_grad():
            assert bilinear.eval()(torch.randn(1, 3, 19, 23)).shape == (1, 2, 19, 23)

    def test_bad_upsampling_value(self, name: str) -> None:
        if "upsampling" not in model_options(name):
            pytest.skip(f"{name} has no upsampling option")
        with pytest.raises(ConfigError, match="bilinear"):
            build_model(name, 3, 2, upsampling="nearest")

    def test_dropout_active_in_train_only(self, name: str) -> None:
        if "dropout" not in model_options(name):
            pytest.skip(f"{name} has no dropout option")
        model = build_model(name, 3, 2, **tiny_options(name, dropout=0.5))
        assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())
        x = torch.randn(2, 3, 16, 16)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, model(x))
        with pytest.raises(ConfigError, match="dropout"):
            build_model(name, 3, 2, dropout=1.5)

    def test_bad_depth_and_channels(self, name: str) -> None:
        if "depth" in model_options(name):
            with pytest.raises(ConfigError, match="depth"):
                build_model(name, 3, 2, depth=0)
        with pytest.raises(ConfigError, match="in_channels"):
            build_model(name, 0, 2)

    def test_unknown_option_names_model_option_and_valid_ones(self, name: str) -> None:
        with pytest.raises(ConfigError) as error:
            build_model(name, 3, 2, dephth=3)
        message = str(error.value)
        assert name in message and "dephth" in message
        for option in model_options(name):
            assert option in message

    def test_channels_last_matches_contiguous(self, name: str) -> None:
        torch.manual_seed(0)
        model = build_model(name, 3, 3, **tiny_options(name)).eval()
        x = torch.randn(2, 3, 21, 34)
        with torch.no_grad():
            expected = model(x)
            model = model.to(memory_format=torch.channels_last)
            got = model(x.contiguous(memory_format=torch.channels_last))
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    def test_same_seed_same_model_and_output(self, name: str) -> None:
        x = torch.randn(1, 3, 20, 20)
        outputs = []
        for _ in range(2):
            torch.manual_seed(123)
            model = build_model(name, 3, 2, **tiny_options(name)).eval()
            with torch.no_grad():
                outputs.append(model(x))
        assert torch.equal(outputs[0], outputs[1])

    def test_records_resolved_architecture(self, name: str) -> None:
        model = build_model(name, 3, 2, **tiny_options(name))
        arch = model.masksmith_arch
        assert arch["name"] == name and arch["in_channels"] == 3 and arch["out_channels"] == 2
        assert set(arch["options"]) == set(model_options(name))
        json.dumps(arch)  # it goes into the bundle metadata
        rebuilt = build_model(arch["name"], arch["in_channels"], arch["out_channels"], **arch["options"])
        assert rebuilt.state_dict().keys() == model.state_dict().keys()

    def test_tiny_overfit(self, name: str) -> None:
        torch.manual_seed(0)
        # A bright disc on a dark noisy background; the mask is the disc.
        yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
        disc = ((yy - 11) ** 2 + (xx - 13) ** 2 < 36).long()
        image = disc.float() + 0.3 * torch.randn(24, 24)
        images = torch.stack([image, image.flip(-1)])[:, None].expand(2, 3, 24, 24).contiguous()
        masks = torch.stack([disc, disc.flip(-1)])
        model = build_model(name, 3, 2, **tiny_options(name, base_channels=8))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images), masks)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses
        model.eval()
        with torch.no_grad():
            accuracy = (logits_to_classes(model(images)) == masks).float().mean().item()
        assert accuracy > 0.85


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as error:
        build_model("unett", 3, 2)
    for name in ALL_MODELS:
        assert name in str(error.value)
    with pytest.raises(ConfigError, match="unet"):
        model_options("nope")


def test_pad_to_multiple_reflects_and_falls_back_to_zeros() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., :2, :3], x)
    # Pad of 2 rows cannot reflect a 2-row input, so this one is zero-padded.
    assert padded[..., 2:, :].abs().sum() == 0
    reflected = pad_to_multiple(torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 1, 3, 5), 4)
    assert reflected[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]
    assert pad_to_multiple(x, 1) is x


def test_logits_to_classes_sigmoid_and_argmax() -> None:
    one = torch.tensor([[[[-2.0, 0.1], [3.0, 0.0]]]])
    assert logits_to_classes(one).tolist() == [[[0, 1], [1, 0]]]
    # sigmoid(0.1) ~ 0.525: above 0.5, below 0.6.
    assert logits_to_classes(one, threshold=0.6).tolist() == [[[0, 0], [1, 0]]]
    many = torch.zeros(1, 3, 1, 2)
    many[0, 2, 0, 0] = 1.0
    many[0, 1, 0, 1] = 1.0
    classes = logits_to_classes(many)
    assert classes.dtype == torch.int64 and classes.tolist() == [[[2, 1]]]


def test_logits_to_probabilities() -> None:
    one = torch.randn(2, 1, 4, 5)
    probs = logits_to_probabilities(one)
    assert probs.shape == (2, 2, 4, 5)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(one[:, 0]))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 4, 5))
    many = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(logits_to_probabilities(many), torch.softmax(many, 1))
    # Same decision either way for a 1-channel head at the default threshold.
    assert torch.equal(logits_to_probabilities(one).argmax(1), logits_to_classes(one))


def test_encoder_protocol_and_input_multiple() -> None:
    from masksmith.models.base import DEFAULT_MULTIPLE, encoder_of, encoder_stride, input_multiple, set_frozen

    unet = build_model("unet", 3, 2, depth=3, base_channels=4)
    fcn = build_model("fcn-lite", 3, 2, depth=2, base_channels=4)
    assert input_multiple(unet) == 8 and input_multiple(fcn) == 4
    assert input_multiple(torch.nn.Conv2d(3, 2, 1)) == DEFAULT_MULTIPLE == 1  # declares nothing: pads nothing
    assert encoder_of(unet) is not None and encoder_of(torch.nn.Conv2d(3, 2, 1)) is None
    encoder = encoder_of(unet)
    set_frozen(encoder, True, training=True)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(m.training for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(p.requires_grad for name, p in unet.named_parameters() if name.startswith("head"))
    set_frozen(encoder, False, training=True)
    assert all(p.requires_grad for p in encoder.parameters()) and all(m.training for m in encoder.modules())

    class Strided(torch.nn.Module):
        output_stride = 16

    assert encoder_stride(Strided()) == 16 and encoder_stride(torch.nn.Identity()) == 32
    with pytest.raises(ValueError, match="multiple"):
        input_multiple(type("Odd", (), {"multiple": 2.5})())
