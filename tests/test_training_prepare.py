"""The prepare stage: a run discovers its data once, and validation reads only the pairs its check did not."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import masksmith
import masksmith.data.check.pairs
import masksmith.data.discover
import masksmith.data.labels
import masksmith.data.validate
import masksmith.training.prepare
import masksmith.training.stages
from masksmith.errors import DataError
from tests.helpers import make_shapes_dataset

OPTIONS = dict(epochs=1, model="fcn-lite", model_options={"base_channels": 4, "depth": 2}, quiet=True)


class _DataPhaseOver(Exception):
    pass


@pytest.fixture
def counted(monkeypatch) -> Counter:
    """Counts discoveries and pair validations of a train call, which stops where the network is built."""
    calls: Counter = Counter()
    discover_dataset = masksmith.data.discover.discover_dataset
    sample_problem = masksmith.data.validate.sample_problem

    def discovering(*args, **kwargs):
        calls["discover"] += 1
        return discover_dataset(*args, **kwargs)

    def validating(sample, *args, **kwargs):
        calls[f"validate {sample.name}"] += 1
        return sample_problem(sample, *args, **kwargs)

    survey_labels = masksmith.data.labels.survey_labels

    def surveying(*args, **kwargs):
        calls["survey labels"] += 1
        return survey_labels(*args, **kwargs)

    def stop(*args, **kwargs):
        raise _DataPhaseOver

    # Every module that imported discover_dataset holds its own name for it.
    for module in (masksmith.data.discover, masksmith.data.check.pairs, masksmith.training.prepare):
        monkeypatch.setattr(module, "discover_dataset", discovering)
    monkeypatch.setattr(masksmith.data.validate, "sample_problem", validating)
    monkeypatch.setattr(masksmith.data.labels, "survey_labels", surveying)  # detection's sampling of the masks
    monkeypatch.setattr(masksmith.training.stages, "build_network", stop)
    return calls


def _data_phase(data, out, **options) -> None:
    with pytest.raises(_DataPhaseOver):
        masksmith.train(data, out=str(out), **{**OPTIONS, **options})


def test_a_planned_run_discovers_once_and_reads_no_pair_twice(tmp_path, counted):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    _data_phase(data, tmp_path / "run")
    # Regression: planning and prepare each discovered (3 discoveries with the check's), validation decoded
    # again every pair the check had just read, and prepare sampled the masks again to detect their labels.
    assert counted == Counter({"discover": 1, "survey labels": 1})
    assert (tmp_path / "run" / "fingerprint.json").is_file()


def test_without_a_check_validation_reads_every_pair(tmp_path, counted):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    _data_phase(data, tmp_path / "run", auto=False)
    assert counted["discover"] == 1 and counted["survey labels"] == 1
    assert sorted(name for name in counted if name.startswith("validate")) == [
        f"validate s{i:02d}" for i in range(6)]


def test_a_pair_the_check_found_wrong_is_validated_and_left_out(tmp_path, counted, write_image_file):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    write_image_file(data / "masks" / "s04.png", np.zeros((20, 56), np.uint8))  # the image is 40 high
    with pytest.warns(UserWarning, match=r"s04\.png: mask is 56x20 but image s04\.jpg is 56x40"):
        _data_phase(data, tmp_path / "run", skip_invalid=True)
    assert counted == Counter({"discover": 1, "survey labels": 1, "validate s04": 1})
    with pytest.raises(DataError, match=r"1 problem\(s\).*\n.*s04\.png: mask is 56x20"):
        masksmith.train(data, out=str(tmp_path / "strict"), **OPTIONS)
