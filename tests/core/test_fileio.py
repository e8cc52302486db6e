"""Atomic files and locks: no output over an input (through links too), a dead holder's lock released, the
umask's file modes."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.core.fileio import (atomic_path, folder_lock, refuse_overwrite, remove_stale_temps, take_flock,
                                   write_text_atomic)
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


def test_take_flock_waits_for_a_holder_up_to_its_limit(tmp_path):
    path = tmp_path / "x.lock"
    holder, waiter = os.open(path, os.O_RDWR | os.O_CREAT), os.open(path, os.O_RDWR)
    try:
        assert take_flock(holder)
        started = time.monotonic()
        assert not take_flock(waiter, 0.3)  # still held after 0.3 s
        assert time.monotonic() - started >= 0.3
        threading.Timer(0.2, fcntl.flock, (holder, fcntl.LOCK_UN)).start()
        assert take_flock(waiter, 30)  # released while it waits
    finally:
        os.close(holder)
        os.close(waiter)


def test_stale_temps_of_one_stem_leave_the_others_and_the_users_files(tmp_path):
    def killed_write(name):  # what a hard kill in the middle of atomic_path leaves
        with atomic_path(tmp_path / name) as tmp:
            tmp.write_text("half")
            os.link(tmp, tmp_path / f"kept-{name}")
        os.link(tmp_path / f"kept-{name}", tmp)
        return tmp

    mine, other = killed_write("abc.onnx"), killed_write("abd.onnx")
    (tmp_path / ".abc.notes.tmp").write_text("a user's file")  # not atomic_path's name
    assert remove_stale_temps(tmp_path, stem="abc") == [mine]
    assert other.exists() and (tmp_path / ".abc.notes.tmp").exists()
    assert remove_stale_temps(tmp_path) == [other]


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
