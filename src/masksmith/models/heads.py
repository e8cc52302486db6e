"""Turn model logits into class indices or per-class probabilities (1-channel sigmoid or softmax)."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_logits(logits: Tensor) -> None:
    if logits.dim() < 2:
        raise ValueError(f"logits must be N x C x ..., got shape {tuple(logits.shape)}")


def best_class(scores: Tensor, dim: int) -> Tensor:
    """Index of the largest score along `dim` (the first on ties), as argmax. On CPU, torch's argmax over a
    dimension that is not the innermost runs up to 10x slower than max(...).indices (24 ms against 2.4 for
    4 x 2 x 256 x 256 logits); this is on every validation step, prediction and Dice loss."""
    return scores.max(dim=dim).indices


def logits_to_classes(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Class indices (N x H x W, int64): sigmoid > threshold for a 1-channel head, else argmax."""
    _check_logits(logits)
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0]) > threshold).long()
    return best_class(logits, dim=1)


def logits_to_probabilities(logits: Tensor) -> Tensor:
    """Per-class probabilities (N x C' x H x W): a 1-channel head gives [1 - p, p], else softmax."""
    _check_logits(logits)
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        # Two channels so callers treat binary-sigmoid and softmax heads alike (C' == num_classes).
        return torch.cat([1.0 - foreground, foreground], dim=1)
    return torch.softmax(logits, dim=1)
