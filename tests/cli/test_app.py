"""The command line, as a user types it: exit codes, files written, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.cli.app import app
from tests.helpers import make_shapes_dataset, untrained_bundle

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_shapes_dataset(root / "shapes", count=8, size=(44, 60))
    config = root / "cfg.yaml"
    config.write_text(f"data: {data}\nclasses: {data / 'classes.txt'}\nsize: 32\nepochs: 5\nbatch_size: 2\n"
                      "model_options: {base_channels: 8, depth: 3}\n")
    result = invoke("train", "--config", config, "--epochs", "2", "--out", root / "run", "-q")
    assert result.exit_code == 0, result.output
    return root, data, result


@pytest.mark.slow
def test_train_from_yaml_with_overrides(cli_run):
    root, _, result = cli_run
    assert f"model: {root / 'run' / 'model.msb'}" in result.output
    assert len((root / "run" / "metrics.csv").read_text().splitlines()) == 3  # --epochs 2 beat the file's 5
    assert "model_options:\n  base_channels: 8" in (root / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_evaluate_prints_the_table_and_writes_the_report(cli_run):
    root, data, _ = cli_run
    result = invoke("evaluate", root / "run" / "model.msb", data, "--out", root / "eval")
    assert result.exit_code == 0, result.output
    assert "red box" in result.output and "miou" in result.output
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 2 and len(metrics["per_class"]) == 3
    assert (root / "eval" / "per_class.csv").read_text().startswith("index,name,iou,dice,precision,recall")


@pytest.mark.slow
def test_predict_folder_and_glob_with_overlays_and_a_bad_file(cli_run):
    root, data, _ = cli_run
    inputs = root / "inputs"
    inputs.mkdir()
    for name in ("s00.jpg", "s01.jpg"):
        (inputs / name).write_bytes((data / "images" / name).read_bytes())
    Image.fromarray(np.zeros((17, 23, 3), np.uint8)).save(inputs / "odd.png")
    (inputs / "broken.png").write_bytes(b"this is not a png")
    result = invoke("predict", root / "run" / "model.msb", inputs, "--out", root / "pred", "--overlay", "-q")
    assert result.exit_code == 1
    assert "broken.png" in result.output and "wrote 3 masks" in result.output
    written = Image.open(root / "pred" / "odd.png")
    assert written.mode == "P" and written.size == (23, 17)
    assert Image.open(root / "pred" / "s00.png").size == (60, 44)
    assert (root / "pred" / "overlays" / "s00.jpg").is_file()
    result = invoke("predict", root / "run" / "model.msb", str(inputs / "s0*.jpg"), "--out", root / "glob", "-q")
    assert result.exit_code == 0 and sorted(p.name for p in (root / "glob").glob("*.png")) == ["s00.png", "s01.png"]


@pytest.mark.parametrize("args, message", [
    (["train", "{data}", "--model", "segnet"], "unknown model 'segnet'; valid names: fcn-lite, "),
    (["train", "{empty}"], "empty"),
    (["train", "{data}", "--optimizer", "adagrad"], "optimizer"),
    (["train"], "give a DATA folder"),
    (["predict", "{bad_bundle}", "{data}", "--out", "{tmp}/p"], "bad.msb: not a readable model bundle"),
    (["evaluate", "{tmp}/missing.msb", "{data}"], "missing.msb: no such model bundle"),
    (["predict", "{bundle}", "{tmp}/nothing-here", "--out", "{tmp}/p"], "nothing-here"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(cli_run, tmp_path, args, message):
    root, data, _ = cli_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.msb").write_bytes(b"\x00" * 64)
    values = {"data": data, "empty": tmp_path / "empty", "bad_bundle": tmp_path / "bad.msb", "tmp": tmp_path,
              "bundle": root / "run" / "model.msb"}
    result = invoke(*[a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_models_lists_architectures_and_options():
    result = invoke("models")
    assert result.exit_code == 0
    assert "unet: depth=4, base_channels=32" in result.output and "fcn-lite:" in result.output


def test_predict_refuses_two_inputs_that_would_overwrite_each_other(cli_run, tmp_path):
    root, data, _ = cli_run
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").write_bytes((data / "images" / "s00.jpg").read_bytes())
    result = invoke("predict", root / "run" / "model.msb", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "p")
    assert result.exit_code == 2 and "would both be written as same.png" in result.output
    assert not (tmp_path / "p").exists()


def test_predicting_loads_no_lightning(tmp_path):
    # Every command's options are read at start-up (train's from the loss and augmentation registries);
    # Lightning alone would add seconds to every `masksmith predict`.
    bundle = untrained_bundle(tmp_path / "model.msb")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "a.png")
    code = ("import sys; from masksmith.cli.app import main; "
            "sys.argv = ['masksmith', 'predict', sys.argv[1], sys.argv[2], '--out', sys.argv[3], '-q', "
            "'--backend', 'torch']\n"
            "try: main()\n"
            "except SystemExit as end: assert not end.code, end.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning'}))")
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(tmp_path / "a.png"), str(tmp_path / "out")],
                         check=True, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "out" / "a.png").is_file()
    assert out.stdout.strip().splitlines()[-1] == "[]"
