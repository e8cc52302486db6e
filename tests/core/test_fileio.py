"""Atomic files and locks: no output over an input (through links too), a dead holder's lock released, the
umask's file modes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.core.fileio import folder_lock, refuse_overwrite, write_text_atomic
from masksmith.errors import ConfigError
from masksmith.training.checkpoints import AtomicCheckpointIO
from tests.helpers import write_photos


def test_refuse_overwrite_sees_symlinked_and_hard_linked_outputs(tmp_path):
    source = write_photos(tmp_path / "in", ["a.png"])[0]
    (tmp_path / "out").mkdir()
    os.symlink(source, tmp_path / "out" / "link.png")
    os.link(source, tmp_path / "out" / "hard.png")
    for target in ("link.png", "hard.png"):
        with pytest.raises(ConfigError, match="would overwrite the input"):
            refuse_overwrite([source], [tmp_path / "out" / target])
    refuse_overwrite([source], [tmp_path / "out" / "a.png"])  # a new file beside them is fine


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from masksmith.core.fileio import folder_lock\n"
         f"with folder_lock({str(run)!r}, kind='training'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another process \(pid {holder.pid}\)"):
            with folder_lock(run):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(run):  # the kernel dropped the dead process's lock
        pass


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    meta = BundleMeta(model="unet", model_options={}, in_channels=3, out_channels=2, class_names=["a", "b"],
                      colors=[[0, 0, 0], [255, 255, 255]], size=32, resize="resize", mean=[0.5] * 3,
                      std=[0.25] * 3, mask_encoding={"kind": "binary"})
    previous = os.umask(umask)
    try:
        save_bundle(tmp_path / "model.msb", {"w": torch.zeros(2)}, meta)
        write_text_atomic(tmp_path / "results.json", "{}")
        AtomicCheckpointIO(tmp_path).save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    for name in ("model.msb", "results.json", "last.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
