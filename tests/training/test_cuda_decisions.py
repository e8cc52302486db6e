"""The CUDA decisions that need no GPU to check: Lightning's accelerator and precision, the process-group backend,
the launch checks against the GPUs found, and channels_last on CUDA batches (torch.cuda mocked either way)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from masksmith.config import resolve_config
from masksmith.training.engine import SegmentationModule
from masksmith.errors import ConfigError
from masksmith.core.devices import precision_for
from masksmith.training.parallel import (Launch, accelerator, check_launch, lightning_precision,
                                        process_group_backend)


@pytest.fixture(params=[True, False], ids=["gpu-found", "no-gpu"])
def cuda_found(request, monkeypatch) -> bool:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: request.param)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if request.param else 0)
    return request.param


def test_auto_trains_on_a_gpu_in_16_bit_mixed_precision_with_nccl_when_one_is_found(cuda_found):
    config = resolve_config(data="d", device="auto")
    assert accelerator("auto") == ("gpu" if cuda_found else "cpu")
    assert lightning_precision(config) == ("16-mixed" if cuda_found else "32-true")
    assert process_group_backend("auto") == ("nccl" if cuda_found else "gloo")
    # An explicit device is taken as given, found or not (check_launch refuses a missing GPU).
    assert accelerator("cuda") == "gpu" and accelerator("cpu") == "cpu"
    assert process_group_backend("cuda") == "nccl" and process_group_backend("cpu") == "gloo"


@pytest.mark.parametrize("precision, gpu, lightning", [
    ("auto", True, "16-mixed"), ("auto", False, "32-true"), ("32", True, "32-true"), ("32", False, "32-true"),
    ("16-mixed", True, "16-mixed"), ("bf16-mixed", True, "bf16-mixed"), ("bf16-mixed", False, "bf16-mixed")])
def test_precision_names_map_to_lightnings(precision, gpu, lightning):
    assert precision_for(precision, gpu) == lightning
    config = resolve_config(data="d", device="cuda" if gpu else "cpu", precision=precision)
    assert lightning_precision(config) == lightning


def test_the_launch_is_checked_against_the_gpus_found(cuda_found):
    if cuda_found:
        check_launch(resolve_config(data="d", device="cuda", precision="16-mixed"), Launch())
        with pytest.raises(ConfigError, match=r"^devices 2: this machine has 1 CUDA GPU\(s\)$"):
            check_launch(resolve_config(data="d", device="cuda", devices=2), Launch())
    else:
        with pytest.raises(ConfigError, match=r"^device cuda: no CUDA GPU found"):
            check_launch(resolve_config(data="d", device="cuda"), Launch())
        with pytest.raises(ConfigError, match="precision 16-mixed needs a CUDA GPU"):
            check_launch(resolve_config(data="d", device="auto", precision="16-mixed"), Launch())


@pytest.mark.parametrize("setting, on_cuda, on_cpu", [("auto", True, False), ("on", True, True),
                                                      ("off", False, False)])
def test_channels_last_auto_converts_cuda_batches_only(setting, on_cuda, on_cpu):
    module = SimpleNamespace(config=SimpleNamespace(channels_last=setting))

    def batch(is_cuda: bool) -> SimpleNamespace:  # a stand-in tensor: only its device flag and conversion count
        return SimpleNamespace(is_cuda=is_cuda, contiguous=lambda memory_format: memory_format)

    for is_cuda, wanted in ((True, on_cuda), (False, on_cpu)):
        prepared = SegmentationModule._prepare(module, batch(is_cuda))
        assert (prepared is torch.channels_last) == wanted
