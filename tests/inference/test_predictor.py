"""Tiled (sliding-window) prediction, flip TTA and the PyTorch inference optimizations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masksmith.bundle import BundleMeta
from masksmith.errors import MasksmithError
from masksmith.inference.backends import TorchBackend
from masksmith.inference.predictor import Predictor, tiled_logits, tta_views
from masksmith.models import build_model


def _network(name: str, depth: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = build_model(name, 3, 3, depth=depth, base_channels=8).eval()
    for module in network.modules():
        # Non-trivial running statistics, so folding BatchNorm has something to fold.
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    return network


def _meta(resize: str = "random_crop", size: int = 64, **changes) -> BundleMeta:
    return BundleMeta(model="unet", model_options={"depth": 1, "base_channels": 8}, in_channels=3, out_channels=3,
                      class_names=["bg", "a", "b"], colors=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], size=size,
                      resize=resize, mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"}, **changes)


@pytest.mark.parametrize("name", ["unet", "fcn-lite"])
def test_tiles_reproduce_whole_image_logits_when_the_receptive_field_fits_in_the_overlap(name):
    network = _network(name, depth=1)
    backend = TorchBackend(network)
    image = torch.randn(1, 3, 203, 261)  # not a multiple of the tile, stride or downsampling factor
    whole = backend(image)
    tiled = tiled_logits(backend, image, tile=96, overlap=48, multiple=network.multiple, blend="linear", batch=3)
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().max()) < 1e-4 * float(whole.abs().max())


def test_gaussian_blend_agrees_on_the_interior_and_shows_no_seams():
    network = _network("unet", depth=1)
    backend = TorchBackend(network)
    image = torch.randn(1, 3, 200, 260)
    whole = backend(image)
    tile, overlap = 96, 48
    tiled = tiled_logits(backend, image, tile=tile, overlap=overlap, multiple=2, blend="gaussian")
    scale = float(whole.abs().max())
    assert float((tiled - whole).abs()[..., 8:-8, 8:-8].max()) < 2e-3 * scale
    # A seam is a jump between neighbouring rows/columns at a tile border that the whole-image output lacks.
    stride = tile - overlap
    for axis, length in ((2, 200), (3, 260)):
        for border in range(stride, length - 1, stride):
            jump_tiled = tiled.narrow(axis, border, 1) - tiled.narrow(axis, border - 1, 1)
            jump_whole = whole.narrow(axis, border, 1) - whole.narrow(axis, border - 1, 1)
            assert float((jump_tiled - jump_whole).abs().max()) < 2e-3 * scale


def test_deeper_models_stay_close_to_whole_image_inference():
    network = _network("unet", depth=2)
    backend = TorchBackend(network)
    image = torch.randn(1, 3, 180, 220)
    whole = backend(image)
    for blend in ("gaussian", "linear"):
        tiled = tiled_logits(backend, image, tile=96, overlap=64, multiple=4, blend=blend)
        assert float((tiled - whole).abs().mean()) < 1e-3 * float(whole.abs().max())
        assert (tiled.argmax(1) == whole.argmax(1)).float().mean() > 0.999


def test_predictor_tiles_large_images_of_crop_trained_models_automatically():
    network = _network("unet", depth=1)
    rng = np.random.default_rng(0)
    small, large = rng.integers(0, 256, (100, 120, 3), np.uint8), rng.integers(0, 256, (300, 140, 3), np.uint8)
    crop = Predictor(network, _meta("random_crop", size=64))
    assert crop.tiling_for(small.shape) is None  # under 2x the training size: whole image
    assert crop.tiling_for(large.shape) == (64, 16)
    resized = Predictor(network, _meta("resize", size=64))
    assert resized.tiling_for(large.shape) is None  # resize-trained models see the whole image resized
    masks = crop.predict_batch([small, large])
    assert [m.shape for m in masks] == [(100, 120), (300, 140)]
    explicit = Predictor(network, _meta("random_crop", size=64), tile=96, overlap=48, blend="linear")
    untiled = Predictor(network, _meta("random_crop", size=64), auto_tile_factor=None)
    assert explicit.tiling_for(large.shape) == (96, 48)
    assert (explicit.predict(large) == untiled.predict(large)).mean() > 0.999
    assert (crop.predict_tiled(large, tile=96, overlap=48, blend="linear") == untiled.predict(large)).mean() > 0.999


def test_flip_tta_is_off_by_default_and_averages_four_passes():
    network = _network("unet", depth=1)
    calls = []
    backend = TorchBackend(network)

    def counting(batch):
        calls.append(batch.shape)
        return backend(batch)

    counting.name = "torch"  # type: ignore[attr-defined]
    image = np.random.default_rng(1).integers(0, 256, (40, 52, 3), np.uint8)
    plain = Predictor(counting, _meta(), multiple=2)  # type: ignore[arg-type]
    plain.predict(image)
    assert len(calls) == 1
    calls.clear()
    with_tta = Predictor(counting, _meta(), multiple=2, tta=True)  # type: ignore[arg-type]
    probabilities = with_tta.probabilities([image])[0]
    assert len(calls) == 4 and probabilities.shape == (3, 40, 52)
    assert torch.allclose(probabilities.sum(0), torch.ones(40, 52), atol=1e-5)


def test_tta_averages_only_the_flips_the_model_was_trained_with():
    network = _network("unet", depth=1)
    backend = TorchBackend(network)
    seen: list[torch.Tensor] = []

    def recording(batch):
        seen.append(batch.clone())
        return backend(batch)

    recording.name = "torch"  # type: ignore[attr-defined]
    image = np.random.default_rng(2).integers(0, 256, (40, 52, 3), np.uint8)
    # An `upright` model (left-right flips only): the image and its mirror, never upside down.
    upright = Predictor(recording, _meta(tta_flips=["horizontal"]), multiple=2, tta=True)  # type: ignore[arg-type]
    logits = upright.logits(image)
    assert upright.tta_passes == 2 and len(seen) == 2
    assert torch.equal(seen[1], seen[0].flip(3))
    expected = (backend(seen[0]) + backend(seen[0].flip(3)).flip(3)) / 2
    assert torch.allclose(logits, expected, atol=1e-6)
    # A model trained without flips: --tta would show it views it never saw; it warns and predicts plainly.
    seen.clear()
    with pytest.warns(UserWarning, match="without flips"):
        unflipped = Predictor(recording, _meta(tta_flips=[]), multiple=2, tta=True)  # type: ignore[arg-type]
    assert torch.equal(unflipped.logits(image), backend(seen[0])) and len(seen) == 1
    assert unflipped.tta_passes == 1
    assert tta_views(["horizontal", "vertical"]) == [(), (3,), (2,), (2, 3)]


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_image_gives_the_same_array_from_a_path_an_array_and_a_pil_image(tmp_path, channels):
    # One rule turns an image into the network's uint8 array (data.images): a 16-bit image is scaled by its
    # maximum whether predict reads it from a file or a caller hands it over in memory.
    from PIL import Image

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 4000, (20, 24), dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")  # stored 16-bit
    meta = _meta().model_copy(update={"in_channels": channels, "mean": [0.5] * channels, "std": [0.25] * channels})
    predictor = Predictor(_network("unet", depth=1), meta)
    from_path = predictor.to_array(path)
    assert from_path.shape == (20, 24, channels) and from_path.max() == 255  # scaled, not wrapped
    np.testing.assert_array_equal(predictor.to_array(wide), from_path)
    np.testing.assert_array_equal(predictor.to_array(wide[:, :, None]), from_path)
    np.testing.assert_array_equal(predictor.to_array(Image.open(path)), from_path)


def test_in_memory_arrays_of_a_bad_shape_or_type_are_one_line_errors():
    predictor = Predictor(_network("unet", depth=1), _meta())
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((2, 4, 4, 3), np.uint8), np.array([["a"]])):
        with pytest.raises(MasksmithError) as error:
            predictor.to_array(bad)
        assert "\n" not in str(error.value) and str(bad.shape) in str(error.value)
