"""The prepare stage: a run discovers its data once, validation reads only the pairs its check did not, and
truncated or oversized images stop training by name before it starts."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


TINY = dict(size=16, epochs=2, batch_size=2, model_options={"base_channels": 4, "depth": 2}, early_stopping=0,
            quiet=True, auto=False, num_workers=0)


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    noise = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_train_fails_on_a_truncated_jpeg_before_training_and_names_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=6)
    _truncated_jpeg(data / "images" / "s03.jpg")
    with pytest.raises(DataError, match=r"s03\.jpg.*truncated") as caught:
        masksmith.train(data, out=str(tmp_path / "run"), **TINY)
    assert "1 problem(s)" in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


@pytest.mark.slow
def test_train_skip_invalid_leaves_the_truncated_jpeg_out_and_lists_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=8)
    _truncated_jpeg(data / "images" / "s03.jpg")
    with pytest.warns(UserWarning, match=r"(?s)skipping 1 bad pair.*s03\.jpg: cannot read image: .*truncated"):
        result = masksmith.train(data, out=str(tmp_path / "run"), skip_invalid=True, val_fraction=0.5, **TINY)
    split = json.loads((result.run_dir / "split.json").read_text())
    used = split["train"] + split["val"]
    assert "s03" not in used and sorted(used) == [f"s0{i}" for i in range(8) if i != 3]
    assert "s03" not in masksmith.bundle.read_meta(result.bundle).split["val"]  # evaluate --split val skips it too
    assert result.bundle.is_file()


def test_train_refuses_an_image_over_its_max_image_pixels(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=6)  # 56x40 = 2240 pixels each
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    with pytest.raises(DataError, match=r"big\.png: image refused as a possible decompression bomb: 80x80 = 6400"):
        masksmith.train(data, out=str(tmp_path / "run"), max_image_pixels=5000, val_fraction=0.5, **TINY)
    assert not (tmp_path / "run" / "checkpoints").exists()
