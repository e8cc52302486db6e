"""Reliability when the machine fails: a read-only or full output folder is one line naming the path and the
cause (exit 2) with no temporary file left, a config is valid before anything is created, and a killed process
of a two-process training is one line saying which rank died and how to resume."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.training.checkpoints import AtomicCheckpointIO
from masksmith.cli.app import app
from masksmith.errors import ConfigError
from masksmith.core.fileio import atomic_path, require_writable
from tests.helpers import make_shapes_dataset, untrained_bundle

TINY = ["--size", "32", "-m", "base_channels=4", "-m", "depth=2", "-b", "2", "--no-auto", "--workers", "0",
        "--early-stopping", "0", "-q"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A labelled dataset, a bundle of its 3 classes, a Labelme folder and a folder of photos."""
    root = tmp_path_factory.mktemp("failures")
    data = make_shapes_dataset(root / "shapes", count=4)
    bundle = untrained_bundle(root / "model.msb", class_names=["background", "red box", "blue box"])
    labelme = root / "labelme"
    labelme.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(labelme / "a.png")
    shape = {"label": "cat", "points": [[2, 2], [10, 2], [10, 10]], "shape_type": "polygon"}
    (labelme / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "a.png"}))
    return {"data": data, "bundle": bundle, "labelme": labelme, "photos": data / "images"}


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _one_error_line(output: str) -> str:
    """The output's one `error:` line (a traceback or a second error fails the test)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


COMMANDS = {
    "predict": lambda w, out: ["predict", w["bundle"], w["photos"], "--out", out, "-q"],
    "predict --format coco": lambda w, out: ["predict", w["bundle"], w["photos"], "--out", out, "--format", "coco",
                                             "-q"],
    "train": lambda w, out: ["train", w["data"], "--out", out, "--epochs", "1", *TINY],
    "evaluate": lambda w, out: ["evaluate", w["bundle"], w["data"], "--split", "all", "--out", out, "-q"],
    "export": lambda w, out: ["export", w["bundle"], "--out", out / "model.onnx"],
    "check": lambda w, out: ["check", w["data"], "--out", out, "-q"],
    "convert labelme": lambda w, out: ["convert", "labelme", w["labelme"], out, "-q"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_output_folder_is_one_line_before_any_work(world, tmp_path, monkeypatch, command):
    out = tmp_path / "out"
    out.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):  # what creating a file in a read-only mount raises
        folder = Path(kwargs.get("dir") or (args[2] if len(args) > 2 else tempfile.gettempdir()))
        if folder.resolve().is_relative_to(out.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(folder / "x.tmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    result = _invoke(*COMMANDS[command](world, out))
    assert result.exit_code == 2, result.output
    line = _one_error_line(" ".join(result.output.split("\n ")))  # rich may wrap the line at the terminal's width
    assert str(out) in line and "Read-only file system" in line
    assert list(out.iterdir()) == []  # refused before any file was written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder anyway")
def test_a_real_read_only_folder_is_one_line(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = _invoke("predict", world["bundle"], world["photos"], "--out", out, "-q")
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2 and "Permission denied" in _one_error_line(result.output)


def _full_disk_after(count: int):
    """Path.write_bytes that works `count` times, then writes half the bytes and fails as a full disk does."""
    real = Path.write_bytes
    calls = {"n": 0}

    def write_bytes(self, data):
        calls["n"] += 1
        if calls["n"] <= count:
            return real(self, data)
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write_bytes


@pytest.mark.slow
def test_a_full_disk_while_predicting_overlays_is_one_line_naming_the_file(world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(Path, "write_bytes", _full_disk_after(3))
    result = _invoke("predict", world["bundle"], world["photos"], "--out", out, "--overlay", "-q")
    assert result.exit_code == 2, result.output
    line = _one_error_line(" ".join(result.output.split("\n ")))
    assert f"{out}/" in line and line.endswith("No space left on device")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left


def test_a_wrapped_write_failure_names_the_target_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    # torch.save raises a RuntimeError whose context is the failed write; Lightning's writer names its own
    # scratch file in the system's temp folder.
    for failure in (RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos"),
                    OSError(errno.ENOSPC, "No space left on device", "/tmp/tmpabc123")):
        with pytest.raises(OSError) as caught:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"half")
                try:
                    raise OSError(errno.ENOSPC, "No space left on device")
                except OSError:
                    raise failure
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
        assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_and_resume_finishes(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = AtomicCheckpointIO.save_checkpoint
    saved = {"n": 0}

    def full_after_first_epoch(self, checkpoint, path, storage_options=None):
        if checkpoint.get("epoch", 0) >= 1:
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device", "/tmp/tmpabc123")
        saved["n"] += 1
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_after_first_epoch)
    result = _invoke("train", world["data"], "--out", run, "--epochs", "3", *TINY)
    assert result.exit_code == 2, result.output
    line = _one_error_line(" ".join(result.output.split("\n ")))
    assert f"{run / 'checkpoints'}/" in line and "No space left on device" in line
    assert saved["n"] >= 1 and not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", real)
    resumed = _invoke("train", "--resume", run, "-q")
    assert resumed.exit_code == 0, resumed.output
    assert (run / "model.msb").is_file()


def test_require_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = require_writable(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"file/sub: cannot write there: Not a directory"):
        require_writable(tmp_path / "file" / "sub")


# --- configs: bounded, text, and valid before anything is created -------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("batch_size: 10000000000000000000000\n", "batch_size: Input should be less than or equal to 4096"),
    ("lr: .inf\n", "lr: Input should be a finite number"),
    ("epochs: 0\n", "epochs: Input should be greater than or equal to 1"),
    ("max_time: .nan\n", "max_time: Input should be a finite number"),
    ("seed: -1\n", "seed: Input should be greater than or equal to 0"),
    ("model_options: {base_channels: 200000}\n", "base_channels = 200000 is out of range"),
    ("mean: [120, 110, 100]\n", "mean.0: Input should be less than or equal to 1"),
    (b"\xff\xfe\x00b\x00a\x00t\x00c\x00h", "not a text (UTF-8) config file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text (UTF-8) config file"),
    ("batch_size: 4\x00\n", "not valid YAML"),
])
def test_a_bad_config_is_one_line_and_creates_nothing(world, tmp_path, content, message):
    config = tmp_path / "config.yaml"
    raw = content if isinstance(content, bytes) else f"data: {world['data']}\nout: {tmp_path / 'run'}\n{content}".encode()
    config.write_bytes(raw)
    result = _invoke("train", "--config", config)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output.replace("\n", " "))
    assert str(config) in line and message in line
    assert not (tmp_path / "run").exists() and not Path("runs").exists()


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--batch-size", "100000"], ["--threshold", "nan"],
                                  ["--threshold", "1.5"], ["--tile", "0"], ["--overlap", "-1"]])
def test_predict_numeric_options_are_bounded(world, tmp_path, args):
    result = _invoke("predict", world["bundle"], world["photos"], "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# --- a killed process of a two-process training ----------------------------------------------------------------


@pytest.mark.slow
def test_killing_one_rank_of_a_two_process_run_is_one_line_naming_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=10, size=(32, 32))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MASKSMITH_RUN_DECISION", None)
    main = subprocess.Popen([str(Path(sys.executable).parent / "masksmith"), "train", str(data), *TINY,
                             "--val-fraction", "0.3", "--loss", "ce", "--devices", "2", "--epochs", "200", "-o",
                             str(run)], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.ckpt").is_file():
            assert main.poll() is None, main.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(main.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children  # rank 1, which Lightning's launcher started
        os.kill(int(children[0]), signal.SIGKILL)
        output, _ = main.communicate(timeout=120)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
    assert main.returncode == 2, output
    line = _one_error_line(output)
    assert "rank 1 of 2 was killed by SIGKILL" in line and f"masksmith train --resume {run}" in line
    assert "gloo" not in output and len(output.splitlines()) <= 3  # Lightning's two "Initializing distributed"
