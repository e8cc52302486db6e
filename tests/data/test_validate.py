"""data/validate.py: the one image/mask size rule, and validation that reads only what no check read cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from masksmith.data.check import check_dataset
from masksmith.data.discover import Sample, discover
from masksmith.data.encoding import MaskEncoding
from masksmith.data.validate import size_mismatch, validate_samples
from masksmith.errors import DataError
from tests.helpers import make_shapes_dataset

INDEX = MaskEncoding("index")


def test_size_mismatch_is_one_message_in_width_by_height():
    sample = Sample(Path("data/images/a.jpg"), Path("data/masks/a.png"))
    assert size_mismatch(sample, (56, 40), (56, 40)) is None
    assert size_mismatch(sample, (56, 40), (40, 56)) == "data/masks/a.png: mask is 40x56 but image a.jpg is 56x40"


def test_check_validation_and_the_dataset_word_a_mismatch_the_same(tmp_path, write_image_file):
    data = make_shapes_dataset(tmp_path / "shapes", count=3)
    write_image_file(data / "masks" / "s01.png", np.zeros((40, 30), np.uint8))  # the image is 56 wide
    sample = next(s for s in discover(data)["all"] if s.name == "s01")
    expected = size_mismatch(sample, (56, 40), (30, 40))
    (problem,) = check_dataset(data, workers=1, progress=False).by_code("size_mismatch")
    assert problem.message == expected
    with pytest.raises(DataError) as info:
        validate_samples([sample], INDEX, 3, ignore_index=255, progress=False)
    assert expected in str(info.value)


def test_pairs_read_cleanly_are_kept_unread_and_in_order(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    samples = discover(data)["all"]
    # Broken after the "check": a pair vouched for is not read again, so it is kept; the others are read.
    (data / "masks" / "s02.png").write_bytes(b"")
    kept = validate_samples(samples, INDEX, 3, ignore_index=255, progress=False, read_cleanly=set(samples))
    assert kept == samples
    with pytest.raises(DataError, match=r"s02\.png"):
        validate_samples(samples, INDEX, 3, ignore_index=255, progress=False, read_cleanly=set(samples[:2]))
    with pytest.warns(UserWarning, match=r"skipping 1 bad pair"):
        kept = validate_samples(samples, INDEX, 3, ignore_index=255, progress=False, skip_invalid=True,
                                read_cleanly={samples[3]})
    assert kept == [samples[0], samples[1], samples[3]]


def test_a_check_vouches_only_for_pairs_no_error_names(tmp_path, write_image_file):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    write_image_file(data / "masks" / "s01.png", np.full((40, 56), 7, np.uint8))  # values beyond the 3 classes
    write_image_file(data / "masks" / "s03.png", np.zeros((20, 56), np.uint8))  # wrong size
    report = check_dataset(data, workers=1, progress=False)
    assert sorted(s.name for s in report.pairs_read_cleanly()) == ["s00", "s02"]
    report.labels = None  # masks whose encoding could not be decided: nothing is vouched for
    assert report.pairs_read_cleanly() == set()
