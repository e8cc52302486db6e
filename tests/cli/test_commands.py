"""check, evaluate, predict, export, serve and convert: every option generated from the command's config (flag,
help, docs table, the Python API's keywords), defaults read from their owners, names checked before any file
is read, with the closest valid name."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

import masksmith
import masksmith.data.check.step
import masksmith.evaluation.scoring
import masksmith.inference.export
import masksmith.serve.server
from masksmith.annotations import DEFAULT_TOLERANCE
from masksmith.cli.app import app
from masksmith.cli.options import (COMMAND_CONFIGS, TABLE_PAGES, cli_options, options_table, table_markers,
                                   with_options_tables)
from masksmith.core.command_config import field_extra
from masksmith.data.check.config import CheckConfig
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX
from masksmith.errors import ConfigError
from masksmith.evaluation.config import EvaluateConfig
from masksmith.inference.backends import DEFAULT_OPSET
from masksmith.inference.config import ExportConfig, PredictConfig
from masksmith.serve.config import ServeConfig
from masksmith.serve.label.config import DEFAULT_PORT, LabelConfig
from masksmith.serve.label.store import LabelOptions
from masksmith.serve.options import ServeOptions

runner = CliRunner()
WIDE = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}
ROOT = Path(__file__).resolve().parents[2]
GENERATED = [name for name in COMMAND_CONFIGS if name != "train"]


@pytest.mark.parametrize("command", GENERATED)
def test_every_field_is_a_flag_in_help_and_a_row_of_the_table(command):
    config = COMMAND_CONFIGS[command]
    help_text = runner.invoke(app, [*command.split(), "--help"], env=WIDE).output
    # `convert` alone is the group: its options are those of every converter (coco, cvat have no others).
    if command == "convert":
        help_text = runner.invoke(app, ["convert", "coco", "--help"], env=WIDE).output
    options = cli_options(config)
    assert {option.field for option in options} == set(config.model_fields)
    for option in options:
        assert option.long_flag in help_text, (command, option.field)
    # A converter's table lists its own options; those every converter takes are the `convert` table's.
    shared = set(COMMAND_CONFIGS["convert"].model_fields) if command.startswith("convert ") else set()
    table = options_table(config)
    for name in set(config.model_fields) - shared:
        assert f"| `{name}` |" in table
    for name in shared:
        assert f"| `{name}` |" not in table


@pytest.mark.parametrize("page", sorted(TABLE_PAGES))
def test_each_docs_page_holds_its_commands_generated_tables(page):
    # python -m masksmith.cli.options --write PAGE regenerates them.
    text = (ROOT / page).read_text(encoding="utf-8")
    assert with_options_tables(text, page) == text
    for command in TABLE_PAGES[page]:
        start, end = table_markers(command)
        assert text.split(start, 1)[1].split(end, 1)[0] == options_table(COMMAND_CONFIGS[command])


def test_a_page_missing_a_commands_markers_is_one_line_error():
    with pytest.raises(ConfigError, match="docs/serve.md: no options table markers"):
        with_options_tables("# Serving\n", "docs/serve.md")


def test_defaults_are_read_from_their_owners():
    assert CheckConfig().ignore_index == DEFAULT_IGNORE_INDEX
    assert ServeConfig().serve_options() == ServeOptions()  # every serve default is ServeOptions'
    assert PredictConfig(out="o").polygon_tolerance == DEFAULT_TOLERANCE
    assert ExportConfig().opset == DEFAULT_OPSET
    assert LabelConfig().label_options() == LabelOptions()


@pytest.mark.parametrize("function, config", [
    (masksmith.data.check.step.check, CheckConfig),
    (masksmith.evaluation.scoring.evaluate, EvaluateConfig),
    (masksmith.inference.export.export, ExportConfig),
])
def test_the_python_api_takes_the_configs_options_as_keywords_with_the_same_defaults(function, config):
    parameters = inspect.signature(function).parameters
    for name, field in config.model_fields.items():
        if field_extra(field).get("cli_only"):
            assert name not in parameters
            continue
        assert name in parameters, name
        assert parameters[name].default == field.get_default(), name


@pytest.mark.parametrize("args, message", [
    (["predict", "missing.msb", "x.png", "-o", "out", "--backend", "onx"], "did you mean 'onnx'?"),
    (["predict", "missing.msb", "x.png", "-o", "out", "--blend", "gausian"], "did you mean 'gaussian'?"),
    (["predict", "missing.msb", "x.png", "-o", "out", "--format", "lableme"], "did you mean 'labelme'?"),
    (["predict", "missing.msb", "x.png", "-o", "out", "--mask-format", "palete"], "did you mean 'palette'?"),
    (["predict", "missing.msb", "x.png", "-o", "out", "--engine", "rey"], "did you mean 'ray'?"),
    (["predict", "missing.msb", "x.png", "-o", "out", "--device", "cdua"], "did you mean 'cuda'?"),
    (["evaluate", "missing.msb", "data", "--split", "vall"], "did you mean 'val'?"),
    (["serve", "missing.msb", "--device", "cdua"], "did you mean 'cuda'?"),
    (["serve", "missing.msb", "--backend", "torh"], "did you mean 'torch'?"),
])
def test_unknown_names_are_refused_before_any_file_is_read_with_the_closest(args, message):
    # The model does not exist: the name is refused first, in one line.
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and message in result.output and "missing.msb" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("args, flag", [
    (["predict", "m.msb", "x.png", "-o", "out", "-b", "0"], "--batch-size"),
    (["check", "data", "--foreground", "70000"], "--foreground"),
    (["check", "data", "--ignore-index", "256"], "--ignore-index"),
    (["export", "m.msb", "--opset", "3"], "--opset"),
])
def test_out_of_range_values_name_their_flag_in_one_line(args, flag):
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output


def test_flags_reach_the_python_api(monkeypatch, tmp_path):
    calls: dict[str, dict] = {}

    def recorder(name, result):
        def record(*args, **kwargs):
            calls[name] = {"args": args, **kwargs}
            return result
        return record

    class Exported:
        def summary(self):
            return "exported"

    monkeypatch.setattr(masksmith.inference.export, "export", recorder("export", Exported()))
    result = runner.invoke(app, ["export", "m.msb", "-o", "x.onnx", "--int8", "--calibration", "a.png",
                                 "--calibration", "b"])
    assert result.exit_code == 0 and "exported" in result.output, result.output
    assert calls["export"] == {"args": (Path("m.msb"),), "out": Path("x.onnx"), "export_format": "onnx",
                               "int8": True, "calibration": ["a.png", "b"], "opset": DEFAULT_OPSET}

    monkeypatch.setattr(masksmith.data.check.step, "check", recorder("check", None))
    runner.invoke(app, ["check", "d", "--ignore-color", "1,2,3", "--workers", "2", "-o", "o", "--json"])
    assert calls["check"] == {"args": (Path("d"),), "classes": None, "foreground": None, "palette": None,
                              "ignore_color": [1, 2, 3], "mask_suffix": None, "ignore_index": DEFAULT_IGNORE_INDEX,
                              "workers": 2, "out": Path("o"), "progress": False}


def test_serve_flags_become_the_servers_options(monkeypatch):
    import masksmith.serve

    seen = {}
    monkeypatch.setattr(masksmith.serve, "require_serve_extra", lambda: None)
    monkeypatch.setattr(masksmith.serve.server, "serve",
                        lambda model, options, backend, access_log: seen.update(options=options, backend=backend,
                                                                                access_log=access_log))
    result = runner.invoke(app, ["serve", "m.msb", "--max-upload-mb", "1", "--max-work-mb", "512", "--port", "0",
                                 "-q", "--backend", "onnx"], env={"MASKSMITH_SERVE_TOKEN": "secret"})
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert (options.max_upload_bytes, options.max_work_bytes, options.port, options.token) == (
        2**20, 512 * 2**20, 0, "secret")
    assert (options.max_pixels, options.max_queue) == (ServeOptions().max_pixels, ServeOptions().max_queue)
    assert seen["backend"] == "onnx" and seen["access_log"] is False


def test_the_python_api_checks_names_by_the_config_before_reading(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'test'\?"):
        masksmith.evaluate(tmp_path / "missing.msb", tmp_path, split="tset")


def test_label_flags_become_the_label_servers_arguments(monkeypatch):
    import masksmith.serve
    import masksmith.serve.label.server

    seen = {}
    monkeypatch.setattr(masksmith.serve, "require_serve_extra", lambda: None)
    monkeypatch.setattr(masksmith.serve.label.server, "label",
                        lambda data, model, options, **kwargs: seen.update(data=data, model=model, options=options,
                                                                           **kwargs))
    result = runner.invoke(app, ["label", "d", "--ignore-color", "1,2,3", "--max-upload-mb", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert seen["options"] == LabelOptions(ignore_color=(1, 2, 3)) and seen["model"] is None
    assert (seen["port"], seen["max_upload_bytes"], seen["access_log"]) == (DEFAULT_PORT, 2 * 2**20, False)


def test_the_configs_refuse_unknown_keywords_with_the_closest():
    with pytest.raises(ConfigError, match=r"^evaluate: unknown option 'splt' \(did you mean 'split'\?\)"):
        EvaluateConfig.of(splt="val")
    with pytest.raises(ConfigError, match="^predict: --out: Field required"):
        PredictConfig.of()
