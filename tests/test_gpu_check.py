"""benchmarks/gpu_check.sh: its CPU dry run runs every command (train, evaluate, predict, export, serve, --devices 2)
and prints the table with numbers; without a GPU and without --dry-run it stops with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ROWS = ["device", "plan's choices", "mixed precision of the run", "train (masksmith train, whole run)",
        "GPU memory during train (nvidia-smi peak)", "train step, mixed precision on (bf16-mixed)",
        "train step, mixed precision off (float32)", "evaluate", "inference, PyTorch, batch 1",
        "inference, PyTorch, batch 8", "predict", "ONNX Runtime, CPUExecutionProvider", "serve, one request",
        "train --devices N"]
NUMBER = r"\d+(\.\d+)?"


def run_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """The script with this venv's python and masksmith first on PATH, one thread per process."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def table_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] not in ("check", "---"):
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.slow
def test_the_dry_run_runs_every_command_on_the_cpu_and_prints_the_table_with_numbers(tmp_path):
    out = tmp_path / "check"
    result = run_check("--dry-run", "--out", str(out), timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "DRY RUN on the CPU" in result.stdout
    rows = table_rows(result.stdout)
    assert list(rows) == ROWS
    for name in ROWS:
        if name not in ("plan's choices", "mixed precision of the run", "GPU memory during train (nvidia-smi peak)"):
            assert re.search(NUMBER, rows[name]), (name, rows[name])
    assert rows["plan's choices"].startswith("precision ")  # the toy run's precision, timed by the plan
    assert rows["mixed precision of the run"].startswith(("on: precision bf16-mixed", "off: precision 32"))
    assert re.fullmatch(rf"{NUMBER} images/s \(\d+ epochs of 10 images in {NUMBER} s\)",
                        rows["train (masksmith train, whole run)"])
    assert re.fullmatch(rf"mIoU {NUMBER}, mean Dice {NUMBER}", rows["evaluate"])
    assert rows["predict"] == "8 masks written"
    assert re.fullmatch(rf"HTTP 200, {NUMBER} ms, mask 64x64", rows["serve, one request"])
    assert re.fullmatch(rf"\d+ epochs in \d+ s, best val_dice {NUMBER}", rows["train --devices N"])
    assert (out / "served.png").read_bytes().startswith(b"\x89PNG") and (out / "model.onnx").is_file()
    assert (out / "ddp" / "model.msb").is_file()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run the real check")
def test_without_a_gpu_the_real_check_stops_with_one_line(tmp_path):
    result = run_check("--out", str(tmp_path / "check"), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("gpu_check.sh: no CUDA GPU here (torch.cuda.is_available() is False); "
                                     "--dry-run checks the commands")
    assert not (tmp_path / "check" / "run").exists()


def test_bad_arguments_and_an_existing_check_folder_are_refused(tmp_path):
    result = run_check("--gpus", "2", timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == "gpu_check.sh: unknown argument --gpus (see --help)"
    (tmp_path / "check" / "run").mkdir(parents=True)
    result = run_check("--dry-run", "--out", str(tmp_path / "check"), timeout=60)
    assert result.returncode == 2 and "already holds a check" in result.stderr
    assert list((tmp_path / "check").iterdir()) == [tmp_path / "check" / "run"]  # nothing written over it
