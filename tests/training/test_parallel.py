"""Training with several processes (Lightning DDP on the CPU, gloo): validation scores exact across processes,
each image validated once, rank 0 alone writing, a killed torchrun run resumed, and the launch options checked
before any data is read."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import masksmith
from masksmith.config import resolve_config, resolve_user_config
from masksmith.core.runlog import RunLog
from masksmith.errors import ConfigError
from masksmith.training.engine import SegmentationModule
from masksmith.training.fit import SegmentationData
from masksmith.training.handoff import Decision
from masksmith.training.network import build_network, model_arguments
from masksmith.training.parallel import DECISION_ENV
from masksmith.training.prepare import prepare_data
from tests.helpers import make_shapes_dataset

BIN = Path(sys.executable).parent
# 10 images, 3 of them for validation: an odd count, which a padding sampler would split as 2 + 2 (one twice).
OPTIONS = ["--size", "32", "-m", "base_channels=4", "-m", "depth=2", "-b", "2", "--val-fraction", "0.3",
           "--loss", "ce", "--no-auto", "--workers", "0", "--early-stopping", "0", "--devices", "2", "-q"]
VAL_SCORES = ("val_dice", "val_miou", "val_iou", "val_pixel_accuracy", "val_image_dice", "val_loss")


def free_port() -> int:
    """A TCP port no one listens on now, for this test's torchrun rendezvous (tests may run in parallel)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, cwd: Path) -> subprocess.Popen:
    """`torchrun --nproc-per-node 2 masksmith train ARGS`, from the venv, on its own port, one thread a process."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    env.pop(DECISION_ENV, None)
    return subprocess.Popen([str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(port),
                             str(BIN / "masksmith"), "train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def worker_of_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's worker process with global rank `rank` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                if f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
        except OSError:  # a process that ended while we looked
            continue
    raise AssertionError(f"no worker of rank {rank} under pid {parent}")


@pytest.fixture(scope="session")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 2-process torchrun run whose rank 0 is SIGKILLed after its first checkpoint, then resumed to the end."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_shapes_dataset(root / "shapes", count=10, size=(32, 32))
    run = root / "run"
    first = torchrun(str(data), *OPTIONS, "--epochs", "40", "-o", str(run), cwd=root)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.is_file():
        assert first.poll() is None, f"the run ended before its first checkpoint:\n{first.communicate()[0]}"
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.05)
    os.kill(worker_of_rank(first.pid, 0), signal.SIGKILL)  # the process that writes; torchrun then stops rank 1
    killed_output = first.communicate(timeout=120)[0]
    killed_at = int(torch.load(last, weights_only=True)["epoch"])
    rows_when_killed = (run / "metrics.csv").read_text().count("\n") - 1
    bundle_when_killed = (run / "model.msb").exists()
    # The rest from the run folder's config (devices 2 included); two more epochs than the checkpoint holds.
    resumed = torchrun("--resume", str(run), "--epochs", str(killed_at + 3), cwd=root)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    return SimpleNamespace(run=run, data=data, root=root, first_returncode=first.returncode, killed_at=killed_at,
                           killed_output=killed_output, rows_when_killed=rows_when_killed,
                           bundle_when_killed=bundle_when_killed, output=output)


@pytest.mark.slow
def test_two_process_validation_scores_equal_one_process_on_the_same_weights(resumed_run):
    # best.ckpt holds the weights its epoch was validated with, by 2 processes; validate them again in 1.
    run = resumed_run.run
    recorded = json.loads((run / "results.json").read_text())["best_epoch_metrics"]
    user = resolve_user_config(run / "config.yaml", quiet=True)
    config = user.config
    arguments = model_arguments(config)
    data = prepare_data(user, arguments, RunLog(None, quiet=True))
    assert len(data.val) == 3 and [s.name for s in data.val] == json.loads((run / "split.json").read_text())["val"]
    module = SegmentationModule(build_network(config, arguments, data.channels, data.num_classes,
                                              RunLog(None, quiet=True)), config, data.num_classes)
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    alone = trainer.validate(module, datamodule=SegmentationData(config, data), verbose=False)[0]
    for name in VAL_SCORES:
        assert alone[name] == pytest.approx(recorded[name], abs=1e-6), name
    assert 0 < recorded["val_pixel_accuracy"] < 1  # a real score, not an empty matrix's


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_and_writes_one_valid_bundle(resumed_run):
    run, epochs = resumed_run.run, resumed_run.killed_at + 3
    assert resumed_run.first_returncode != 0 and "SIGKILL" in resumed_run.killed_output
    assert not resumed_run.bundle_when_killed and resumed_run.rows_when_killed >= 1
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(epochs))  # each epoch once, none lost
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == epochs
    assert int(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]) == epochs - 1
    log = (run / "train.log").read_text()
    # Rank 0 alone logs: one start line per launch (2), one end line, one "model:" line on the terminal.
    assert log.count("model unet") == 2 and log.count("done in") == 1
    assert log.count("training on 2 processes") == 2
    assert resumed_run.output.count("model: ") == 1
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".msb") == ["model.msb"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    model = masksmith.load(run / "model.msb")
    mask = model.predict(resumed_run.data / "images" / "s00.jpg")
    assert mask.shape == (32, 32) and set(mask.ravel().tolist()) <= {0, 1, 2}


@pytest.mark.slow
def test_rank_0_refusing_the_run_stops_every_process(resumed_run):
    # The finished run folder: rank 0 refuses to train into it; rank 1 must stop with its message, not hang.
    again = torchrun(str(resumed_run.data), *OPTIONS, "--epochs", "1", "-o", str(resumed_run.run),
                     cwd=resumed_run.root)
    output = again.communicate(timeout=120)[0]
    assert again.returncode != 0
    assert "already holds a run" in output and "rank 0 stopped:" in output


@pytest.fixture
def shapes_config(tmp_path: Path):
    data = make_shapes_dataset(tmp_path / "shapes", count=10, size=(32, 32))
    user = resolve_user_config(data=str(data), size=32, val_fraction=0.3, batch_size=2, num_workers=0, quiet=True)
    return user, prepare_data(user, {}, RunLog(None, quiet=True))


def test_each_validation_image_goes_to_exactly_one_process_and_training_steps_match(shapes_config):
    user, data = shapes_config
    shares = []
    for rank in range(2):
        loaders = SegmentationData(user.config, data)
        loaders.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shares.append((list(loaders.val_dataloader().sampler), loaders.train_dataloader()))
    val_indices = shares[0][0] + shares[1][0]
    assert sorted(val_indices) == [0, 1, 2] and len(val_indices) == 3  # none repeated, none left out
    assert len(shares[0][1]) == len(shares[1][1])  # as many training steps on each process: DDP needs it


def test_fewer_validation_images_than_processes_is_a_config_error(shapes_config):
    user, data = shapes_config
    loaders = SegmentationData(user.config, data)
    loaders.trainer = SimpleNamespace(world_size=4, global_rank=3)
    with pytest.raises(ConfigError, match="3 validation image.*4 processes"):
        loaders.val_dataloader()


@pytest.mark.parametrize("options, message", [
    ({"strategy": "dpp"}, "unknown strategy 'dpp' (did you mean 'ddp'?)"),
    ({"strategy": "fsdp"}, "unknown strategy 'fsdp'; valid: auto, ddp, ddp_spawn"),
    ({"precision": "bf16"}, "unknown precision 'bf16' (did you mean 'bf16-mixed'?)"),
    ({"precision": 16}, "unknown precision '16' (did you mean '16-mixed'?)"),
    ({"precision": "16-mixed", "device": "cpu"}, "precision 16-mixed needs a CUDA GPU"),
    ({"devices": 0}, "devices: Input should be greater than or equal to 1"),
    ({"devices": 10 ** 9}, "devices: Input should be less than or equal to 256"),
    ({"num_nodes": 2}, "num_nodes > 1 needs a launcher on every node"),
    ({"devices": 2, "folds": 3}, "cross-validation (folds) trains in one process"),
    ({"amp": "on"}, "unknown option(s) amp"),  # precision is the one spelling
])
def test_bad_launch_options_fail_before_any_data_is_read(tmp_path, options, message):
    with pytest.raises(ConfigError) as error:
        masksmith.train(tmp_path / "no-such-folder", out=str(tmp_path / "run"), quiet=True, **options)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_torchrun_launch_must_match_devices_times_nodes_and_not_spawn(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"started 3 processes but devices 2 x num_nodes 1 = 2"):
        masksmith.train(tmp_path / "none", devices=2, out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="ddp_spawn starts its own processes"):
        masksmith.train(tmp_path / "none", devices=3, strategy="ddp_spawn", out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_precision_given_as_yaml_reads_a_number():
    assert resolve_config(data="d", precision=32).precision == "32"  # YAML's number


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"run_dir": "r", "resume": false, "config": {}, "given": []}',
                                  '{"run_dir": "r", "resume": false, "config": {"data": "d", "epochs": -1}, "given": []}'])
def test_an_unreadable_decision_from_rank_0_is_a_config_error(text):
    with pytest.raises(ConfigError, match="rank 0's decision"):
        Decision.from_json(text)
