"""The device a `device` option names ("auto" takes CUDA when there is one) and the precision a run uses there."""

from __future__ import annotations

import torch

# What a `device` option may name.
DEVICES = ("auto", "cpu", "cuda")


def torch_device(device: str) -> str:
    """"cuda" for "cuda", and for "auto" when a CUDA GPU is present; "cpu" otherwise."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device == "cuda" else "cpu"


def precision_for(precision: str, gpu: bool) -> str:
    """A config precision as Lightning names it; auto is 16-bit mixed on CUDA, 32-bit elsewhere."""
    if precision == "auto":
        return "16-mixed" if gpu else "32-true"
    return "32-true" if precision == "32" else precision
