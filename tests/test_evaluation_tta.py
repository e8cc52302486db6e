"""evaluate --tta: the scores are those of the flip-averaged predictions, and the result says so."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import load_bundle, save_bundle
from masksmith.cli.app import app
from masksmith.data.discover import discover
from masksmith.data.encoding import MaskEncoding
from masksmith.data.masks import read_mask
from masksmith.errors import MasksmithError
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.inference.predictor import Predictor
from tests.trained_models import shapes_model


def _confusion(predictor: Predictor, data) -> np.ndarray:
    """The confusion matrix of `predictor` over every pair of `data`, built here without evaluate."""
    meta = predictor.meta
    confusion = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    for sample in sorted((s for samples in discover(data).values() for s in samples), key=lambda s: s.name):
        truth = read_mask(sample.mask, MaskEncoding.from_dict(meta.mask_encoding), meta.num_classes, meta.ignore_index)
        confusion.update(predictor.predict(sample.image), truth)
    return confusion.matrix


def test_tta_scores_are_the_flip_averaged_predictions(tmp_path):
    trained, data = shapes_model()
    # As if trained with flips (the shared model's augmentation has none): TTA averages 4 views.
    meta, weights = load_bundle(trained)
    bundle = save_bundle(tmp_path / "flipped.msb", weights, meta.model_copy(update={"tta_flips": ["horizontal",
                                                                                                 "vertical"]}))
    plain = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "plain", progress=False)
    flipped = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "tta", progress=False, tta=True)
    assert (plain["tta"], flipped["tta"], plain["tta_passes"], flipped["tta_passes"]) == (False, True, 1, 4)
    assert np.array_equal(flipped["confusion_matrix"], _confusion(Predictor.load(bundle, tta=True), data))
    assert np.array_equal(plain["confusion_matrix"], _confusion(Predictor.load(bundle), data))
    result = CliRunner().invoke(app, ["evaluate", str(bundle), str(data), "--split", "all", "--tta", "-q",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert '"tta": true' in (tmp_path / "cli" / "metrics.json").read_text()


def test_tta_with_a_predictor_in_memory_is_refused(tmp_path):
    bundle, data = shapes_model()
    with pytest.raises(MasksmithError, match="tta"):
        masksmith.evaluate(Predictor.load(bundle), data, split="all", out=tmp_path, tta=True, progress=False)


def test_tta_of_a_model_trained_without_flips_is_its_plain_prediction(tmp_path):
    bundle, data = shapes_model()
    assert Predictor.load(bundle).meta.tta_flips == []  # trained with --augment none
    plain = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "plain", progress=False)
    with pytest.warns(UserWarning, match="trained without flips"):
        flipped = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "tta", progress=False, tta=True)
    assert flipped["tta_passes"] == 1
    assert np.array_equal(flipped["confusion_matrix"], plain["confusion_matrix"])
