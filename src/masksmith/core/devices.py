"""The device a `device` option names: "auto" takes CUDA when there is one."""

from __future__ import annotations

import torch


def torch_device(device: str) -> str:
    """"cuda" for "cuda", and for "auto" when a CUDA GPU is present; "cpu" otherwise."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device == "cuda" else "cpu"
