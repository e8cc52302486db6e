"""Freed tensor memory stays in the process (glibc): a network called again costs (almost) no page faults, in the
main thread and in others; the user's own malloc settings are left alone; inference and training ask for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import masksmith
from masksmith.core import cpu_memory
from masksmith.inference.backends import TorchBackend
from masksmith.errors import MasksmithError
from masksmith.models import build_model

REPO = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not cpu_memory.c_library().startswith("glibc"),
                                reason="the tuning is glibc's mallopt")
# Three inference calls of a small network on a batch whose feature maps (67 MB each) are above glibc's largest mmap
# threshold (32 MiB), after one to warm up; then the page faults of three more, in this thread and in another: the
# kernel zero-fills every page that malloc maps afresh.
CHURN = """
import resource, sys, threading, torch
from masksmith.core.cpu_memory import keep_freed_memory
tuned = keep_freed_memory()
network = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6()).eval()
images = torch.randn(4, 3, 512, 512)
def churn():
    with torch.inference_mode():
        for _ in range(3):
            network(images)
def faults(run):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def in_thread():
    thread = threading.Thread(target=churn)
    thread.start()
    thread.join()
churn()
print(tuned, faults(churn), faults(in_thread))
"""
MAPS = 3 * 6 * 4 * 16 * 512 * 512 * 4 // 4096  # pages of 3 calls' six 67 MB feature maps, were all of them fresh


def churn(**env: str) -> tuple[str, int, int]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **env}
    if cpu_memory.OPT_OUT not in env:
        environment.pop(cpu_memory.OPT_OUT, None)
    output = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, env=environment,
                            timeout=120, check=True).stdout.split()
    return output[0], int(output[1]), int(output[2])


@pytest.mark.slow
@glibc_only
def test_a_networks_feature_maps_reuse_the_freed_memory_in_every_thread():
    tuned, main_thread, other_thread = churn()
    # The same calls with malloc as glibc ships it: the feature maps' pages are faulted in afresh every call.
    untuned, system_main, system_other = churn(**{cpu_memory.OPT_OUT: "1"})
    assert (tuned, untuned) == ("True", "False")
    assert system_main > MAPS // 2 and system_other > MAPS // 2
    assert main_thread < system_main // 10 and other_thread < system_other // 10


@pytest.mark.slow
@glibc_only
def test_the_users_own_malloc_settings_are_left_alone(monkeypatch):
    assert churn(MALLOC_ARENA_MAX="2")[0] == "False"
    for name in list(os.environ):
        if name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", "LD_PRELOAD", cpu_memory.OPT_OUT):
            monkeypatch.delenv(name)
    assert not cpu_memory.user_configured_malloc()
    for name, value in (("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096"), ("MALLOC_TRIM_THRESHOLD_", "0"),
                        (cpu_memory.OPT_OUT, "1")):
        monkeypatch.setenv(name, value)
        assert cpu_memory.user_configured_malloc(), name
        monkeypatch.delenv(name)
    monkeypatch.setenv(cpu_memory.OPT_OUT, "0")
    assert not cpu_memory.user_configured_malloc()


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_memory, "c_library", lambda: "")
    assert cpu_memory._tune() is False


def test_cpu_inference_and_training_keep_freed_memory(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("masksmith.inference.backends.keep_freed_memory", lambda: calls.append("inference"))
    monkeypatch.setattr("masksmith.training.run.keep_freed_memory", lambda: calls.append("training"))
    before = torch.get_num_threads()
    try:
        TorchBackend(build_model("unet", 3, 2, depth=2, base_channels=4), optimize=False)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(MasksmithError, match="folder not found"):
        masksmith.train(tmp_path / "no-such-folder", out=str(tmp_path / "run"), quiet=True)
    assert calls == ["inference", "training"]
