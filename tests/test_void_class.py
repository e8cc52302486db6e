"""A dataset whose void class is a line of its class list (CamVid's 'Unlabelled' as class 11 of 12): the ignore
value that names it makes it the void, and without one the plan proposes it; check, train, evaluate, predict and
the label store all read the 11 classes that remain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.bundle import read_meta
from masksmith.cli.app import app
from masksmith.config import resolve_user_config
from masksmith.data.check import check_dataset
from masksmith.data.classes import is_void_name, named_void, proposed_void, without_named_void
from masksmith.data.labels import resolve_labels
from masksmith.errors import ConfigError
from masksmith.core.runlog import RunLog
from masksmith.serve.label.store import LabelOptions, LabelStore
from masksmith.planning.stage import plan_void
from tests.helpers import STREET_CLASSES, STREET_VOID, make_street_dataset

runner = CliRunner()
TINY = ("--epochs", "1", "--size", "32", "-m", "base_channels=8", "-m", "depth=2", "--seed", "0")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """12 street scenes, 11 classes plus 'Unlabelled' (index 11) as the last line of classes.txt."""
    return make_street_dataset(tmp_path_factory.mktemp("void") / "street")


@pytest.fixture(scope="module")
def trained(street, tmp_path_factory) -> tuple[Path, str]:
    """A tiny run of `masksmith train street --ignore-index 11` (run folder, its output)."""
    out = tmp_path_factory.mktemp("void-run") / "run"
    result = invoke("train", street, "--ignore-index", STREET_VOID, *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


# --- the rule -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["void", "Void", "Unlabelled", "unlabeled", "IGNORE", "don't care", "Don’t Care",
                                  "__ignore__", "dont care"])
def test_void_names(name):
    assert is_void_name(name)


@pytest.mark.parametrize("name", ["background", "voidspace", "road", "unlabelled area", "ignored", "_background_"])
def test_other_names_are_no_void(name):
    assert not is_void_name(name)


def test_an_ignore_value_naming_the_last_class_makes_it_the_void():
    names = list(STREET_CLASSES)
    kept, void = without_named_void(names, 11, "classes.txt")
    assert kept == names[:11] and void is not None and (void.index, void.name, void.listed) == (11, "Unlabelled", 12)
    assert "\n" not in void.text() and "'Unlabelled'" in void.text() and "classes.txt" in void.text()
    # The last class is the void whatever it is called: the user said so with the ignore value.
    assert without_named_void(["background", "a", "b"], 2)[0] == ["background", "a"]
    assert without_named_void(names, np.uint8(11))[0] == names[:11]  # a value read from a mask


@pytest.mark.parametrize("ignore", [12, 200, 255, None, True, "11"])
def test_an_ignore_value_naming_no_class_changes_nothing(ignore):
    assert without_named_void(list(STREET_CLASSES), ignore) == (list(STREET_CLASSES), None)
    assert without_named_void(None, 11) == (None, None)


def test_an_ignore_value_naming_the_background_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        named_void(["void", "road", "car"], 0, "classes.txt")
    message = str(error.value)
    assert "\n" not in message and "classes.txt" in message and "class 0 'void'" in message
    assert "background" in message and "3..255" in message


def test_an_ignore_value_naming_a_middle_class_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        named_void(list(STREET_CLASSES), 8, "classes.txt")
    message = str(error.value)
    assert "\n" not in message and "class 8 'Car'" in message and "middle" in message and "12..255" in message


def test_a_void_leaving_a_single_class_is_refused():
    with pytest.raises(ConfigError, match="single class"):
        named_void(["background", "Unlabelled"], 1)


def test_the_last_void_name_is_proposed_with_its_reason():
    proposal = proposed_void(list(STREET_CLASSES), "street/classes.txt")
    assert proposal is not None and proposal.index == 11
    assert "'Unlabelled'" in proposal.reason and "street/classes.txt" in proposal.reason


def test_a_void_name_in_the_middle_is_not_proposed():
    names = ["background", "road", "void", "car"]
    assert proposed_void(names) is None


def test_a_first_void_name_is_not_proposed_and_says_why():
    proposal = proposed_void(["Void", "road", "car"])
    assert proposal is not None and proposal.index is None and "background" in proposal.reason


def test_two_void_names_propose_nothing_and_name_both():
    proposal = proposed_void(["background", "road", "void", "Unlabelled"])
    assert proposal is not None and proposal.index is None
    assert "2 'void'" in proposal.reason and "3 'Unlabelled'" in proposal.reason and "--ignore-index" in proposal.reason
    assert proposed_void(["Void", "road", "Unlabelled"]).index is None
    assert proposed_void(["background", "road"]) is None and proposed_void(None) is None


# --- check, labels, plan ------------------------------------------------------------------------------------

def test_check_takes_the_named_void_out_of_the_classes(street):
    report = check_dataset(street, ignore_index=STREET_VOID, progress=False, workers=1)
    assert report.labels is not None and list(report.labels.class_names) == list(STREET_CLASSES[:11])
    assert report.labels.ignore_index == STREET_VOID and not report.errors
    assert report.void is not None and report.void.name == "Unlabelled"
    assert report.ignored_pixels["overall"] > 0  # the void pixels are counted as ignored, not as a class
    assert report.to_dict()["void"]["index"] == STREET_VOID


def test_check_command_says_so_in_one_line_and_passes(street, tmp_path):
    result = invoke("check", street, "--ignore-index", STREET_VOID, "--out", tmp_path / "check")
    assert result.exit_code == 0, result.output
    assert "void: ignore_index 11 is class 11 'Unlabelled'" in " ".join(result.output.split())


def test_check_refuses_the_background_as_ignore_value(street, tmp_path):
    result = invoke("check", street, "--ignore-index", 0, "--out", tmp_path / "check")
    assert result.exit_code == 2
    assert "ignore_index 0 is class 0 'Sky'" in " ".join(result.output.split())


def test_resolve_labels_reads_the_named_void_alike(street):
    masks = sorted((street / "masks").glob("*.png"))
    spec = resolve_labels(masks, classes=street / "classes.txt", ignore_index=STREET_VOID)
    assert spec.num_classes == 11 and spec.ignore_index == STREET_VOID


def _plan_void(data: Path, log_path: Path, **options):
    user = resolve_user_config(None, data=str(data), classes=str(data / "classes.txt"), **options)
    return plan_void(user, RunLog(log_path, quiet=True))


def test_the_plan_proposes_the_last_void_name(street, tmp_path):
    user, choices = _plan_void(street, tmp_path / "log")
    assert [c.option for c in choices] == ["ignore_index", "classes"]
    assert user.config.ignore_index == STREET_VOID and user.config.classes == list(STREET_CLASSES[:11])
    assert "'Unlabelled'" in choices[0].reason


def test_a_given_ignore_value_is_not_replaced_by_the_plan(street, tmp_path):
    user, choices = _plan_void(street, tmp_path / "log", ignore_index=255)
    assert choices == [] and user.config.ignore_index == 255


def test_the_plan_leaves_two_void_names_to_the_user_and_logs_why(tmp_path):
    data = make_street_dataset(tmp_path / "two", count=2, classes=STREET_CLASSES[:10] + ("void", "Unlabelled"))
    user, choices = _plan_void(data, tmp_path / "log")
    assert choices == [] and user.config.ignore_index == 255 and user.config.classes == str(data / "classes.txt")
    assert "void names" in (tmp_path / "log").read_text()


def test_the_plan_keeps_a_middle_void_name_as_a_class(tmp_path):
    names = STREET_CLASSES[:5] + ("void",) + STREET_CLASSES[6:]
    data = make_street_dataset(tmp_path / "middle", count=2, classes=names)
    user, choices = _plan_void(data, tmp_path / "log")
    assert choices == [] and user.config.ignore_index == 255


# --- end to end: train, evaluate, predict, label --------------------------------------------------------------

def test_train_with_the_void_as_ignore_value_goes_on_with_11_classes(trained):
    run, _ = trained
    assert "void: ignore_index 11 is class 11 'Unlabelled'" in (run / "train.log").read_text()
    meta = read_meta(run / "model.msb")
    assert list(meta.class_names) == list(STREET_CLASSES[:11]) and meta.ignore_index == STREET_VOID


def test_train_refuses_the_background_as_ignore_value_in_one_line(street, tmp_path):
    result = invoke("train", street, "--ignore-index", 0, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) <= 2 and "ignore_index 0 is class 0 'Sky'" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "model.msb").exists()


def test_train_without_ignore_value_plans_the_void(street, tmp_path):
    result = invoke("train", street, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["config"]["ignore_index"] == STREET_VOID
    assert plan["config"]["classes"] == list(STREET_CLASSES[:11])
    reasons = {choice["option"]: choice["reason"] for choice in plan["choices"]}
    assert "'Unlabelled'" in reasons["ignore_index"]
    meta = read_meta(tmp_path / "run" / "model.msb")
    assert meta.num_classes == 11 and meta.ignore_index == STREET_VOID


def test_fine_tuning_from_the_bundle_keeps_its_void_without_the_plan(trained, street, tmp_path):
    run, _ = trained
    result = invoke("train", street, "--init", run / "model.msb", "--no-auto", "--epochs", "1", "--out",
                    tmp_path / "again", "-q")
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "again" / "model.msb")
    assert meta.num_classes == 11 and meta.ignore_index == STREET_VOID
    assert "void: ignore_index 11" in (tmp_path / "again" / "train.log").read_text()


@pytest.mark.slow
def test_evaluate_skips_the_void_pixels(trained, street, tmp_path):
    run, _ = trained
    result = invoke("evaluate", run / "model.msb", street, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(metrics["per_class"]) == 11
    assert "Unlabelled" not in json.dumps(metrics["per_class"])


@pytest.mark.slow
def test_predict_writes_masks_of_the_11_classes(trained, street, tmp_path):
    run, _ = trained
    result = invoke("predict", run / "model.msb", street / "images", "--out", tmp_path / "pred", "-q")
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "pred").glob("*.png"))
    assert len(written) == 12
    assert all(np.asarray(Image.open(path)).max() < 11 for path in written)


def test_the_label_store_opens_the_dataset_with_the_models_void(trained, street):
    run, _ = trained
    store = LabelStore.open(street, LabelOptions(), read_meta(run / "model.msb"))
    assert list(store.labels.class_names) == list(STREET_CLASSES[:11]) and store.labels.ignore_index == STREET_VOID


def test_the_label_store_without_model_keeps_the_void_paintable(street):
    store = LabelStore.open(street, LabelOptions())
    assert store.labels.class_names[-1] == "Unlabelled" and store.labels.num_classes == 12


def test_the_label_store_with_the_void_given(street):
    store = LabelStore.open(street, LabelOptions(ignore_index=STREET_VOID))
    assert store.labels.num_classes == 11
