"""Confusion-matrix metrics: hand-computed cases, edge cases, accumulation, torchmetrics agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from masksmith.evaluation.metrics import ConfusionMatrix, per_image_dice

IGNORE = 255


def metrics_of(pred, target, num_classes: int, **compute_args) -> dict:
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    cm.update(np.array(pred), np.array(target))
    result = cm.compute(**compute_args)
    json.dumps(result)  # must always be serialisable as-is
    return result


def column(result: dict, key: str) -> list:
    return [row[key] for row in result["per_class"]]


def test_hand_computed_three_classes() -> None:
    target = [[0, 1, 1], [2, 2, 0]]
    pred = [[0, 1, 2], [2, 1, 0]]
    # Rows truth, columns prediction:
    #   truth 0: (0,0)->0, (1,2)->0          -> [2, 0, 0]
    #   truth 1: (0,1)->1, (0,2)->2          -> [0, 1, 1]
    #   truth 2: (1,0)->2, (1,1)->1          -> [0, 1, 1]
    # tp = [2, 1, 1], support = predicted = [2, 2, 2]
    # iou = tp / (support + predicted - tp) = [2/2, 1/3, 1/3]; dice = 2tp / (s + p) = [1, 1/2, 1/2]
    # precision = recall = [1, 1/2, 1/2]; pixel accuracy = 4/6
    cm = ConfusionMatrix(3, ignore_index=IGNORE)
    cm.update(np.array(pred), np.array(target))
    assert cm.matrix.dtype == np.int64
    assert cm.matrix.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    result = cm.compute(class_names=["bg", "cat", "dog"])
    assert column(result, "iou") == pytest.approx([1, 1 / 3, 1 / 3])
    assert column(result, "dice") == pytest.approx([1, 0.5, 0.5])
    assert column(result, "precision") == pytest.approx([1, 0.5, 0.5])
    assert column(result, "recall") == pytest.approx([1, 0.5, 0.5])
    assert column(result, "support") == [2, 2, 2]
    assert column(result, "predicted") == [2, 2, 2]
    assert column(result, "name") == ["bg", "cat", "dog"]
    assert column(result, "index") == [0, 1, 2]
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)
    assert result["miou"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)  # 5/9
    assert result["mean_dice"] == pytest.approx(2 / 3)
    assert result["miou_no_background"] == pytest.approx(1 / 3)
    assert result["mean_dice_no_background"] == pytest.approx(0.5)
    assert result["mean_precision"] == pytest.approx(2 / 3)
    assert result["mean_recall"] == pytest.approx(2 / 3)
    assert result["pixels"] == 6
    assert all(type(v) is float for v in column(result, "iou"))


def test_hand_computed_with_ignore_and_absent_classes() -> None:
    target = [[0, 0, IGNORE], [1, 1, 0]]
    pred = [[0, 1, 3], [1, 0, 0]]
    # The ignored pixel (0,2) is skipped, so its prediction 3 counts nowhere.
    #   truth 0: (0,0)->0, (0,1)->1, (1,2)->0 -> [2, 1, 0, 0]
    #   truth 1: (1,0)->1, (1,1)->0          -> [1, 1, 0, 0]
    # tp = [2, 1, 0, 0], support = predicted = [3, 2, 0, 0]
    # iou = [2/4, 1/3, None, None]; dice = [4/6, 2/4, None, None]
    # classes 2 and 3 (no truth, no prediction) are left out of every mean:
    # miou = (1/2 + 1/3) / 2 = 5/12; mean dice = (2/3 + 1/2) / 2 = 7/12; accuracy = 3/5
    result = metrics_of(pred, target, 4)
    assert result["per_class"][3]["predicted"] == 0
    assert column(result, "iou")[:2] == pytest.approx([0.5, 1 / 3])
    assert column(result, "iou")[2:] == [None, None]
    assert column(result, "dice")[:2] == pytest.approx([2 / 3, 0.5])
    assert column(result, "dice")[2:] == [None, None]
    assert column(result, "precision")[2:] == [None, None]
    assert column(result, "recall")[2:] == [None, None]
    assert result["miou"] == pytest.approx(5 / 12)
    assert result["mean_dice"] == pytest.approx(7 / 12)
    assert result["miou_no_background"] == pytest.approx(1 / 3)
    assert result["mean_dice_no_background"] == pytest.approx(0.5)
    assert result["pixel_accuracy"] == pytest.approx(3 / 5)
    assert result["pixels"] == 5


def test_class_in_truth_never_predicted() -> None:
    target = [[0, 2, 2], [0, 0, 0]]
    pred = [[0, 0, 0], [0, 0, 0]]
    # truth 0: [4, 0, 0]; truth 2: [2, 0, 0]; tp = [4, 0, 0]; support = [4, 0, 2]; predicted = [6, 0, 0]
    # iou = [4/6, None, 0/2 = 0]; dice = [8/10, None, 0]
    # precision = [4/6, None (never predicted), None (never predicted)]; recall = [1, None, 0]
    result = metrics_of(pred, target, 3)
    assert column(result, "iou") == [pytest.approx(2 / 3), None, 0.0]
    assert column(result, "dice") == [pytest.approx(0.8), None, 0.0]
    assert column(result, "precision") == [pytest.approx(2 / 3), None, None]
    assert column(result, "recall") == [1.0, None, 0.0]
    assert result["miou"] == pytest.approx(1 / 3)
    assert result["mean_dice"] == pytest.approx(0.4)
    assert result["miou_no_background"] == 0.0
    assert result["mean_precision"] == pytest.approx(2 / 3)
    assert result["mean_recall"] == pytest.approx(0.5)


def test_empty_masks_all_background() -> None:
    zeros = np.zeros((2, 3), dtype=np.uint8)
    result = metrics_of(zeros, zeros, 2)
    assert result["pixel_accuracy"] == 1.0
    assert result["miou"] == 1.0 and result["mean_dice"] == 1.0
    # Only background is present, so the foreground-only means are undefined.
    assert result["miou_no_background"] is None
    assert result["mean_dice_no_background"] is None
    assert per_image_dice(zeros, zeros, num_classes=2, ignore_index=IGNORE) == 1.0


def test_nothing_counted_yet() -> None:
    cm = ConfusionMatrix(3, ignore_index=IGNORE)
    cm.update(np.zeros((2, 2), np.int64), np.full((2, 2), IGNORE))
    result = cm.compute()
    json.dumps(result)
    assert result["pixel_accuracy"] is None and result["miou"] is None
    assert result["pixels"] == 0
    assert column(result, "name") == ["class_0", "class_1", "class_2"]
    assert all(value is None for value in column(result, "iou"))


def test_background_index_choices() -> None:
    target = [[0, 1, 1], [2, 2, 0]]
    pred = [[0, 1, 2], [2, 1, 0]]
    # iou = [1, 1/3, 1/3] (first hand case): without class 2 the mean is (1 + 1/3) / 2.
    assert metrics_of(pred, target, 3, background_index=2)["miou_no_background"] == pytest.approx(2 / 3)
    everything = metrics_of(pred, target, 3, background_index=None)
    assert everything["miou_no_background"] == pytest.approx(everything["miou"])
    with pytest.raises(ValueError, match="class names"):
        metrics_of(pred, target, 3, class_names=["a", "b"])


def test_per_image_dice_hand_computed() -> None:
    # First hand case: foreground dice = [1/2, 1/2] -> 0.5; with background kept (1 + 1/2 + 1/2) / 3.
    target = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 2], [2, 1, 0]])
    assert per_image_dice(pred, target, 3, ignore_index=IGNORE) == pytest.approx(0.5)
    assert per_image_dice(pred, target, 3, background_index=None, ignore_index=IGNORE) == pytest.approx(2 / 3)
    # Truth has class 2 (2 pixels), prediction all background: class 2 dice 0, class 1 absent -> 0.
    assert per_image_dice(np.zeros((2, 3), int), np.array([[0, 2, 2], [0, 0, 0]]), 3, ignore_index=IGNORE) == 0.0
    # Empty truth but a false-positive pixel: class 1 dice = 0 / (0 + 1) = 0.
    false_positive = np.zeros((2, 3), int)
    false_positive[0, 0] = 1
    assert per_image_dice(false_positive, np.zeros((2, 3), int), 2, ignore_index=IGNORE) == 0.0
    # Ignored pixels are skipped: pred [[1, 1, 0], ...] vs truth [[ignore, 1, 0], ...] counts only
    # the agreeing class-1 pixel, dice 2*1 / (1 + 1) = 1 (it would be 2/3 if (0,0) were counted).
    both = false_positive.copy()
    both[0, 1] = 1
    assert per_image_dice(both, np.array([[IGNORE, 1, 0], [0, 0, 0]]), 2, ignore_index=IGNORE) == 1.0
    assert per_image_dice(both, np.array([[0, 1, 0], [0, 0, 0]]), 2, ignore_index=IGNORE) == pytest.approx(2 / 3)
    assert isinstance(per_image_dice(pred, target, 3, ignore_index=IGNORE), float)


def test_accumulation_equals_one_shot_and_merge() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(6, 9, 11))
    target[rng.random(target.shape) < 0.1] = IGNORE
    pred = rng.integers(0, 4, size=(6, 9, 11))
    one_shot = ConfusionMatrix(4, ignore_index=IGNORE)
    one_shot.update(pred, target)
    batched = ConfusionMatrix(4, ignore_index=IGNORE)
    for start in range(0, 6, 2):
        batched.update(torch.from_numpy(pred[start : start + 2]), torch.from_numpy(target[start : start + 2]))
    assert np.array_equal(batched.matrix, one_shot.matrix)
    first, second = ConfusionMatrix(4, ignore_index=IGNORE), ConfusionMatrix(4, ignore_index=IGNORE)
    for i in range(6):
        (first if i % 2 else second).update(pred[i], target[i])  # 2-D (H, W) inputs
    assert np.array_equal(first.merge(second).matrix, one_shot.matrix)
    assert one_shot.compute() == batched.compute()
    assert one_shot.matrix.sum() == (target != IGNORE).sum()
    one_shot.reset()
    assert one_shot.matrix.sum() == 0
    with pytest.raises(ValueError, match="merge"):
        first.merge(ConfusionMatrix(5, ignore_index=IGNORE))


def test_uint8_inputs_do_not_overflow() -> None:
    # 19 * 20 + 19 = 399 does not fit in uint8; counting must still be exact.
    target = np.arange(20, dtype=np.uint8).reshape(4, 5)
    cm = ConfusionMatrix(20, ignore_index=IGNORE)
    cm.update(target, target)
    assert np.array_equal(cm.matrix, np.eye(20, dtype=np.int64))


def test_input_errors() -> None:
    cm = ConfusionMatrix(3, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="pred holds class 3"):
        cm.update(np.array([[0, 3]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="pred holds class -1"):
        cm.update(np.array([[0, -1]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="target holds class 4"):
        cm.update(np.array([[0, 1]]), np.array([[0, 4]]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 2), int))
    assert cm.matrix.sum() == 0  # a rejected batch adds nothing
    # An out-of-range prediction under an ignored truth pixel is not looked at.
    cm.update(np.array([[0, 9]]), np.array([[0, IGNORE]]))
    assert cm.matrix.sum() == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics(seed: int) -> None:
    k = 5
    generator = torch.Generator().manual_seed(seed)
    # Class 4 never appears in truth and class 3 is never predicted, to exercise absent classes.
    target = torch.randint(0, 4, (3, 17, 23), generator=generator)
    pred = torch.randint(0, 5, (3, 17, 23), generator=generator)
    pred[pred == 3] = 4 if seed else 0
    target[torch.rand(target.shape, generator=generator) < 0.15] = IGNORE
    cm = ConfusionMatrix(k, ignore_index=IGNORE)
    cm.update(pred[:2], target[:2])
    cm.update(pred[2:], target[2:])
    result = cm.compute()
    ours = {key: column(result, key) for key in ("iou", "dice", "precision", "recall")}
    reference = {
        "iou": MulticlassJaccardIndex(num_classes=k, average=None, ignore_index=IGNORE),
        "dice": MulticlassF1Score(num_classes=k, average=None, ignore_index=IGNORE),
        "precision": MulticlassPrecision(num_classes=k, average=None, ignore_index=IGNORE),
        "recall": MulticlassRecall(num_classes=k, average=None, ignore_index=IGNORE),
    }
    for key, metric in reference.items():
        metric.update(pred[:2], target[:2])
        metric.update(pred[2:], target[2:])
        theirs = metric.compute().tolist()
        for index, (mine, other) in enumerate(zip(ours[key], theirs)):
            if mine is None:
                # torchmetrics scores undefined (0/0) entries as 0; we report None instead.
                assert other == 0.0, (key, index)
            else:
                assert mine == pytest.approx(other, abs=1e-6), (key, index)
    assert None in ours["precision"]  # class 3 is never predicted
    assert None in ours["recall"] or seed == 0  # class 4: no truth, predicted only when seed=1
    accuracy = (pred == target)[target != IGNORE].float().mean().item()
    assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-6)
