"""Soft Dice and cross-entropy of a softmax head from one softmax, with their gradient written out.

`dice+ce` is what the plan gives imbalanced data, and with many classes autograd made it the costliest part
of a CPU training step: every elementwise step of the softmax, the per-class sums and the gather kept its own
N x K x H x W tensor and ran its own backward pass. For 8 x 59 x 384 x 256 logits on two threads, the loss
took 0.82 s forward and backward, a third of the Lite2 U-Net's whole step (2.6 s); plain cross-entropy 0.25 s
(benchmarks/loss_speed.py). Here the forward pass makes one probability tensor, which the backward pass
reuses, and the backward pass is one broadcast product and a scatter along the true classes: 0.31 s.

The values are those of losses.DiceLoss and losses.CrossEntropyLoss (their docs state the definitions), and
so are the gradients (tests/training/test_losses.py checks both against autograd through a one-hot reference):

    p = softmax(z); with v_i = 1 on counted pixels, t_ik = 1 for the true class y_i, w the class weights,
    per class: I_k = sum_i v_i p_ik t_ik, M_k = sum_i v_i p_ik, T_k = sum_i v_i t_ik, D_k = M_k + T_k + s,
    dice_k = (2 I_k + s) / D_k; u_k = w_k if class k is in the truth or the argmax of the counted pixels, else 0;
    U = sum_k u_k; dice loss = 1 - sum_k u_k dice_k / U.
    ce = sum_i c_i (logsumexp_i - z_iy) / C with c_i = v_i w_y and C = sum_i c_i.

    d(dice loss)/dp_ik = v_i (a_k t_ik + b_k) with a_k = -2 u_k / (U D_k), b_k = u_k (2 I_k + s) / (U D_k^2);
    through the softmax, d/dz_ij = p_ij (g_ij - sum_k p_ik g_ik). With e_i = c_i / C (cross-entropy's share):
    d/dz_ij = p_ij (b_j - q_i) + t_ij (a_j p_ij - e_i), q_i = v_i (a_y p_iy + sum_k p_ik b_k) - e_i.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

TINY = 1e-12


class SoftmaxDiceCrossEntropy(torch.autograd.Function):
    """(dice loss, cross-entropy) of float32 logits N x K x H x W (K >= 2); see the module doc."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, valid: Tensor,  # type: ignore[override]
                class_weights: Tensor | None, smooth: float) -> tuple[Tensor, Tensor]:
        k = logits.shape[1]
        # One pass for the largest logit and its class (the argmax, first on ties), one for exp in place.
        largest, predicted = logits.max(dim=1)
        probs = torch.sub(logits, largest[:, None]).exp_()
        total = probs.sum(dim=1)
        log_sum_exp = largest + total.log()
        probs.mul_(total.reciprocal_()[:, None])
        if not bool(valid.all()):
            probs.masked_fill_(~valid[:, None], 0.0)  # ignored pixels count nowhere, nor get a gradient
        p_true = probs.gather(1, target[:, None])[:, 0]  # 0 at ignored pixels
        true_bin = torch.where(valid, target, k).flatten()  # ignored pixels go to an extra bin K, dropped
        intersection = probs.new_zeros(k + 1).index_add_(0, true_bin, p_true.flatten())[:k]
        truth_count = torch.bincount(true_bin, minlength=k + 1)[:k].to(probs.dtype)
        predicted_count = torch.bincount(torch.where(valid, predicted, k).flatten(), minlength=k + 1)[:k]
        mass = probs.sum(dim=(0, 2, 3))
        raw_denominator = mass + truth_count + smooth
        denominator = raw_denominator.clamp_min(TINY)
        dice = (2.0 * intersection + smooth) / denominator
        used = ((truth_count > 0) | (predicted_count > 0)).to(probs.dtype)
        if class_weights is not None:
            used = used * class_weights
        used_total = used.sum()
        any_used = (used_total > 0).to(probs.dtype)
        scale = any_used / used_total.clamp_min(TINY)  # 1 / U, or 0 when no class is used (loss 0)
        dice_loss = (1.0 - (dice * used).sum() * scale) * any_used
        # Cross-entropy, the weighted mean over counted pixels (0 when none is counted).
        pixel_weight = valid.to(probs.dtype)
        if class_weights is not None:
            pixel_weight = pixel_weight * class_weights[target]
        weight_total = pixel_weight.sum().clamp_min(torch.finfo(probs.dtype).tiny)
        true_logit = logits.gather(1, target[:, None])[:, 0]
        per_pixel = torch.where(pixel_weight > 0, (log_sum_exp - true_logit) * pixel_weight, 0.0)
        ce_loss = per_pixel.sum() / weight_total
        # The gradient's per-class factors (module doc); 0 where the denominator was clamped.
        kept = (raw_denominator > TINY).to(probs.dtype)
        a = -2.0 * used * scale / denominator * kept
        b = used * scale * (2.0 * intersection + smooth) / denominator.square() * kept
        ctx.save_for_backward(probs, target, p_true, a, b, pixel_weight / weight_total)
        return dice_loss, ce_loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dice_grad: Tensor | None,  # type: ignore[override]
                 ce_grad: Tensor | None) -> tuple[Tensor | None, ...]:
        probs, target, p_true, a, b, ce_share = ctx.saved_tensors
        n, k, height, width = probs.shape
        a = a * dice_grad if dice_grad is not None else torch.zeros_like(a)
        b = b * dice_grad if dice_grad is not None else torch.zeros_like(b)
        e = ce_share * ce_grad if ce_grad is not None else torch.zeros_like(ce_share)
        b_mass = torch.matmul(b, probs.reshape(n, k, height * width)).view(n, height, width)  # sum_k p_ik b_k
        a_true = a[target] * p_true  # a_y p_iy, 0 at ignored pixels
        q = a_true + b_mass - e
        grad = torch.sub(b.view(1, k, 1, 1), q[:, None]).mul_(probs)
        grad.scatter_add_(1, target[:, None], (a_true - e)[:, None])
        return grad, None, None, None, None


def softmax_dice_cross_entropy(logits: Tensor, target: Tensor, valid: Tensor, class_weights: Tensor | None,
                               smooth: float) -> tuple[Tensor, Tensor]:
    """(soft Dice loss, weighted cross-entropy) of float32 softmax logits, `target` with ignored pixels set to
    any class and `valid` False there; the gradient flows to `logits` only."""
    return SoftmaxDiceCrossEntropy.apply(logits, target, valid, class_weights, smooth)
