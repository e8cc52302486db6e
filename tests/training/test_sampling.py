"""Repeat-factor sampling (--repeat-threshold): which classes each mask holds, the factors, the sampler."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import WeightedRandomSampler

from masksmith.config import resolve_user_config
from masksmith.core.runlog import RunLog
from masksmith.data.discover import Sample
from masksmith.data.encoding import MaskEncoding
from masksmith.errors import ConfigError, DataError
from masksmith.training.fit import SegmentationData
from masksmith.training.prepare import prepare_data
from masksmith.training.sampling import classes_present, describe_factors, repeat_factor_sampler, repeat_factors
from tests.helpers import make_shapes_dataset


def _mask(path: Path, values: list[int]) -> Sample:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array([values], dtype=np.uint8)).save(path)
    return Sample(image=path, mask=path)


def test_classes_present_reads_each_mask_and_leaves_out_ignored_pixels(tmp_path):
    samples = [_mask(tmp_path / "a.png", [0, 0, 2]), _mask(tmp_path / "b.png", [1, 255, 255]),
               _mask(tmp_path / "c.png", [255, 255, 255])]
    present = classes_present(samples, MaskEncoding("index"), 3, 255, progress=False)
    assert present.tolist() == [[True, False, True], [False, True, False], [False, False, False]]
    assert classes_present([], MaskEncoding("index"), 3, 255, progress=False).shape == (0, 3)


def test_a_broken_mask_is_a_data_error_naming_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="broken.png"):
        classes_present([Sample(image=broken, mask=broken)], MaskEncoding("index"), 3, 255,
                        progress=False)


def test_repeat_factors_follow_the_rarest_class_of_each_image():
    # Class 0 in all 10 images, class 1 in one (share 0.1), class 2 in five (0.5), class 3 in none.
    present = np.zeros((10, 4), dtype=bool)
    present[:, 0] = True
    present[0, 1] = True
    present[:5, 2] = True
    factors = repeat_factors(present, threshold=0.4)
    assert factors[0] == pytest.approx(math.sqrt(0.4 / 0.1))  # 2: class 1 is four times rarer than the threshold
    assert factors[1:].tolist() == [1.0] * 9  # classes 0 and 2 are in more than 0.4 of the images
    assert repeat_factors(present, threshold=0.0).tolist() == [1.0] * 10
    assert repeat_factors(np.zeros((0, 4), dtype=bool), threshold=0.4).shape == (0,)


def test_the_sampler_draws_in_proportion_to_the_factors_and_is_seeded():
    factors = np.array([3.0, 1.0, 1.0, 1.0])
    sampler = repeat_factor_sampler(factors, seed=1)
    epochs = [list(sampler) for _ in range(500)]
    draws = [index for epoch in epochs for index in epoch]
    assert {len(epoch) for epoch in epochs} == {4} and len({tuple(epoch) for epoch in epochs}) > 1
    assert len(draws) == 2000 and set(draws) == {0, 1, 2, 3}
    assert np.bincount(draws)[0] / len(draws) == pytest.approx(0.5, abs=0.04)  # 3 of 6
    assert list(repeat_factor_sampler(factors, seed=1)) == list(repeat_factor_sampler(factors, seed=1))
    assert "1 of 4 training images" in describe_factors(factors, 0.3)
    assert "every image alike" in describe_factors(np.ones(4), 0.3)


@pytest.fixture
def one_rare_class(tmp_path):
    """The shapes dataset with the blue box (class 2) left in one image only."""
    root = make_shapes_dataset(tmp_path / "shapes", count=10, size=(32, 32))
    masks = sorted((root / "masks").glob("*.png"))
    for path in masks[1:]:
        mask = np.asarray(Image.open(path)).copy()
        mask[mask == 2] = 0
        Image.fromarray(mask).save(path)
    return root, masks[0].stem


def _prepared(root: Path, **options):
    user = resolve_user_config(data=str(root), size=32, val_fraction=0.3, batch_size=2, num_workers=0, quiet=True,
                               classes=str(root / "classes.txt"), **options)
    return user, prepare_data(user, {}, RunLog(None, quiet=True))


def test_a_run_with_a_threshold_repeats_the_images_of_the_rare_class(one_rare_class):
    root, rare = one_rare_class
    user, data = _prepared(root, repeat_threshold=0.5)
    names = [sample.name for sample in data.train]
    assert rare in names  # the seeded split keeps it for training
    factors = dict(zip(names, data.repeat_factors))
    assert factors.pop(rare) == pytest.approx(math.sqrt(0.5 / (1 / len(names))))
    assert set(factors.values()) == {1.0}  # background and the red box are in every image
    loader = SegmentationData(user.config, data).train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    assert loader.sampler.weights.tolist() == pytest.approx(list(data.repeat_factors))
    assert len(loader) == len(names) // 2  # an epoch keeps its length


def test_without_a_threshold_every_image_is_drawn_once_an_epoch(one_rare_class):
    user, data = _prepared(one_rare_class[0])
    assert data.repeat_factors is None
    loader = SegmentationData(user.config, data).train_dataloader()
    assert not isinstance(loader.sampler, WeightedRandomSampler)
    assert sorted(loader.sampler) == list(range(len(data.train)))


def test_repeat_factor_sampling_refuses_several_processes(one_rare_class):
    user, data = _prepared(one_rare_class[0], repeat_threshold=0.5)
    loaders = SegmentationData(user.config, data)
    loaders.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ConfigError, match="repeat_threshold.*one process"):
        loaders.train_dataloader()
