"""`masksmith train`'s options are generated from TrainConfig: every field a flag, help from the registries,
texts parsed into config values, and only the flags typed count as given."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import masksmith.training
from masksmith.cli.app import app
from masksmith.cli.options import (COMMAND_ONLY, OPTIONS_TABLE_FILE, TABLE_END, TABLE_START, cli_options, options_table,
                                   parse_cli_values, with_options_table)
from masksmith.config import TrainConfig
from masksmith.errors import ConfigError

runner = CliRunner()
WIDE = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}  # option names and help on one line each


@pytest.fixture
def captured(monkeypatch):
    """Run `masksmith train ...` with the training replaced by a recorder of what it was given."""
    calls: list[dict] = []

    class Result:
        bundle = Path("run/model.msb")

    def record(data=None, **kwargs):
        calls.append({"data": data, **kwargs})
        return Result()

    monkeypatch.setattr(masksmith.training, "train", record)

    def invoke(*args: str) -> dict:
        result = runner.invoke(app, ["train", *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return calls[-1]

    return invoke


def test_every_config_field_is_an_option_and_appears_in_help_and_table():
    fields = set(TrainConfig.model_fields) - set(COMMAND_ONLY)
    assert {option.field for option in cli_options()} == fields
    help_text = runner.invoke(app, ["train", "--help"], env=WIDE).output
    table = options_table()
    for option in cli_options():
        assert option.long_flag in help_text, option.field
        assert f"| `{option.field}` |" in table
    # The eight fields the hand-written command could not set.
    for flag in ("--ignore-index", "--threshold", "--mean", "--std", "--channels", "--class-weights", "--precision",
                 "--channels-last"):
        assert flag in help_text


def test_help_lists_come_from_the_registries_and_show_defaults():
    help_text = runner.invoke(app, ["train", "--help"], env=WIDE).output
    assert "upright" in help_text  # the augmentation preset the old help left out
    assert "fcn-lite" in help_text and "focal" in help_text and "val_image_dice" in help_text
    assert "[default: 0.0]" in help_text and "[height, width]" in help_text  # not eaten as markup
    assert "[default: 0.001, or planned from the data]" in help_text  # --lr: the plan sets it for an encoder
    assert "[default: 50, or planned from the data]" in help_text


def test_only_typed_flags_are_passed_and_old_flag_names_work(captured):
    call = captured("data", "--size", "384x256", "-m", "depth=3", "-m", "base_channels=8", "--no-auto",
                    "--skip-invalid", "--skip-unpaired", "-b", "4", "-o", "out", "--workers", "0", "-q")
    assert call["data"] == Path("data") and call["config"] is None and call["resume"] is None
    options = {k: v for k, v in call.items() if k not in ("data", "config", "resume")}
    assert options == {"size": [384, 256], "model_options": {"depth": 3, "base_channels": 8}, "auto": False,
                       "skip_invalid": True, "skip_unpaired": True, "batch_size": 4, "out": "out",
                       "num_workers": 0, "quiet": True}
    assert captured("d", "--out", "x", "--num-workers", "2")["out"] == "x"


def test_list_and_name_valued_fields_parse(captured):
    call = captured("d", "--mean", "0.4,0.5,0.6", "--std", "0.2, 0.2, 0.2", "--class-weights", "1,2",
                    "--ignore-color", "255,255,255", "--ignore-index", "0", "--threshold", "0.3", "--precision", "32",
                    "--channels-last", "on", "--channels", "1", "--monitor", "val_miou")
    assert call["mean"] == [0.4, 0.5, 0.6] and call["std"] == [0.2, 0.2, 0.2] and call["class_weights"] == [1.0, 2.0]
    assert call["ignore_color"] == [255, 255, 255] and call["ignore_index"] == 0 and call["threshold"] == 0.3
    assert (call["precision"], call["channels_last"], call["channels"], call["monitor"]) == ("32", "on", 1, "val_miou")


@pytest.mark.parametrize("args, message", [
    (["--size", "big"], "--size 'big': expected a side"),
    (["--ignore-color", "1,2"], "--ignore-color '1,2': expected R,G,B"),
    (["--mean", "a,b"], "--mean 'a,b': expected numbers"),
    (["-m", "depth"], "--model-option 'depth': expected NAME=VALUE"),
])
def test_unreadable_flag_values_are_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, ["train", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_parse_cli_values_leaves_untyped_options_out():
    assert parse_cli_values({"size": None, "model_options": [], "epochs": 3, "auto": False}) == {
        "epochs": 3, "auto": False}


def test_the_options_page_table_matches_the_config():
    # docs/training.md's table is generated (python -m masksmith.cli.options --write docs/training.md).
    page = (Path(__file__).resolve().parents[2] / OPTIONS_TABLE_FILE).read_text(encoding="utf-8")
    assert page.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0] == options_table()


def test_writing_the_table_replaces_only_what_is_between_the_markers(tmp_path):
    page = f"# Options\nbefore\n{TABLE_START}| stale |\n{TABLE_END}\nafter\n"
    updated = with_options_table(page)
    assert updated == f"# Options\nbefore\n{TABLE_START}{options_table()}{TABLE_END}\nafter\n"
    assert with_options_table(updated) == updated
    with pytest.raises(ConfigError, match="no options table markers"):
        with_options_table("# a page without markers\n", "page.md")
