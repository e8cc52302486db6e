"""Losses: agreement with torch, ignore_index invariance, class weights, weighted sums, bad specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masksmith.errors import ConfigError, DataError
from masksmith.training.losses import LOSSES, build_loss, parse_loss_spec

IGNORE = 255


def make_batch(channels: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits N x C x H x W and a target with some ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 6, 7, generator=generator)
    target = torch.randint(0, num_classes, (2, 6, 7), generator=generator)
    target[0, :2] = IGNORE
    target[1, :, 0] = IGNORE
    return logits, target


# (loss name, logits channels, num_classes): every head each loss accepts.
CASES = [
    ("ce", 4, 4),
    ("ce", 2, 2),
    ("dice", 4, 4),
    ("dice", 1, 2),
    ("focal", 4, 4),
    ("focal", 1, 2),
    ("bce", 1, 2),
    ("bce", 2, 2),
]


def test_registry_names() -> None:
    assert LOSSES.names() == ["bce", "ce", "dice", "focal"]


@pytest.mark.parametrize("name,channels,num_classes", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_ignored_pixels_change_neither_value_nor_gradient(
    name: str, channels: int, num_classes: int, weighted: bool
) -> None:
    logits, target = make_batch(channels, num_classes)
    weights = [0.5 + i for i in range(num_classes)] if weighted else None
    loss_fn = build_loss(name, num_classes=num_classes, ignore_index=IGNORE, class_weights=weights)
    first = logits.clone().requires_grad_(True)
    value = loss_fn(first, target)
    value.backward()
    ignored = (target == IGNORE)[:, None].expand_as(logits)
    assert first.grad is not None and first.grad[ignored].abs().max() == 0
    assert first.grad[~ignored].abs().max() > 0
    # Wild values (including +-1e4) at ignored pixels only: the loss must not move at all.
    changed = logits.clone()
    wild = torch.randn(int(ignored.sum())) * 50
    wild[::3] = 1e4
    wild[1::3] = -1e4
    changed[ignored] = wild
    assert torch.equal(loss_fn(changed, target), value.detach())


@pytest.mark.parametrize("name,channels,num_classes", CASES)
def test_all_ignored_gives_zero_not_nan(name: str, channels: int, num_classes: int) -> None:
    logits = torch.randn(1, channels, 3, 3, requires_grad=True)
    value = build_loss(name, num_classes=num_classes, ignore_index=IGNORE)(logits, torch.full((1, 3, 3), IGNORE))
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("weights", [None, [0.2, 1.0, 3.0, 0.7]])
def test_ce_equals_torch_cross_entropy(weights: list[float] | None) -> None:
    logits, target = make_batch(4, 4)
    ours = build_loss("ce", num_classes=4, class_weights=weights, ignore_index=IGNORE)(logits, target)
    weight = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    torch.testing.assert_close(ours, expected)


def test_ce_with_one_channel_is_a_clear_config_error() -> None:
    logits, target = make_batch(1, 2)
    with pytest.raises(ConfigError, match="bce"):
        build_loss("ce", num_classes=2, ignore_index=IGNORE)(logits, target)


def test_bce_one_channel_equals_torch_on_counted_pixels() -> None:
    logits, target = make_batch(1, 2)
    valid = target != IGNORE
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].float())
    torch.testing.assert_close(build_loss("bce", num_classes=2, ignore_index=IGNORE)(logits, target), expected)


def test_bce_class_weights_are_a_normalised_pos_weight() -> None:
    logits, target = make_batch(1, 2)
    valid = target != IGNORE
    x, y = logits[:, 0][valid], target[valid].float()
    # pos_weight = w1 / w0; dividing by the summed pixel weights (in units of w0) normalises it.
    summed = F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.tensor(3.0), reduction="sum")
    expected = summed / (y.numel() + 2.0 * y.sum())
    ours = build_loss("bce", num_classes=2, class_weights=[1.0, 3.0], ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(ours, expected)


def test_bce_two_channels_equals_two_class_ce() -> None:
    logits, target = make_batch(2, 2)
    torch.testing.assert_close(
        build_loss("bce", num_classes=2, ignore_index=IGNORE)(logits, target),
        F.cross_entropy(logits, target, ignore_index=IGNORE),
    )


def test_focal_matches_definition_and_gamma_zero_is_ce() -> None:
    logits, target = make_batch(4, 4)
    valid = target != IGNORE
    log_p = torch.log_softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0][valid]
    expected = (-(1 - log_p.exp()) ** 2 * log_p).mean()
    torch.testing.assert_close(build_loss("focal", num_classes=4, ignore_index=IGNORE)(logits, target), expected)
    gamma_zero = LOSSES.get("focal")(4, ignore_index=IGNORE, gamma=0.0)
    expected_ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(gamma_zero(logits, target), expected_ce)


def test_focal_sigmoid_gamma_zero_is_bce() -> None:
    logits, target = make_batch(1, 2)
    torch.testing.assert_close(
        LOSSES.get("focal")(2, ignore_index=IGNORE, gamma=0.0)(logits, target),
        build_loss("bce", num_classes=2, ignore_index=IGNORE)(logits, target),
    )
    # Focusing only ever lowers each pixel's loss.
    focal = build_loss("focal", num_classes=2, ignore_index=IGNORE)(logits, target)
    assert focal < build_loss("bce", num_classes=2, ignore_index=IGNORE)(logits, target)


@pytest.mark.parametrize("channels,num_classes", [(4, 4), (1, 2)])
def test_dice_perfect_prediction_is_near_zero_and_wrong_is_near_one(channels: int, num_classes: int) -> None:
    _, target = make_batch(channels, num_classes)
    safe = target.clamp(max=num_classes - 1)
    if channels == 1:
        perfect = (safe[:, None].float() * 2 - 1) * 30
    else:
        perfect = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * 30
    dice = build_loss("dice", num_classes=num_classes, ignore_index=IGNORE)
    assert dice(perfect, target).item() < 1e-4
    # Every pixel confidently wrong -> Dice ~ 0 for every present class -> loss ~ 1.
    assert dice(-perfect if channels == 1 else perfect.roll(1, dims=1), target).item() > 0.95


def test_dice_hand_computed_two_classes() -> None:
    # Two pixels of class 0, two of class 1, one ignored. Logits [0, log 3] -> p(class 1) = 0.75
    # on every pixel. Class 0: I = 0.25 + 0.25 = 0.5, sum p = 4 * 0.25 = 1, sum t = 2.
    # Class 1: I = 0.75 * 2 = 1.5, sum p = 3, sum t = 2. With smooth = 1:
    # dice0 = (1 + 1) / (3 + 1) = 0.5, dice1 = (3 + 1) / (5 + 1) = 2/3, loss = 1 - (0.5 + 2/3) / 2.
    target = torch.tensor([[[0, 0, 1, 1, IGNORE]]])
    logits = torch.zeros(1, 2, 1, 5)
    logits[:, 1] = torch.log(torch.tensor(3.0))
    value = build_loss("dice", num_classes=2, ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(value, torch.tensor(1 - (0.5 + 2 / 3) / 2))
    # Weights [1, 3]: 1 - (0.5 + 3 * 2/3) / 4.
    weighted = build_loss("dice", num_classes=2, class_weights=[1.0, 3.0], ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(weighted, torch.tensor(1 - (0.5 + 2.0) / 4))


def test_dice_leaves_out_classes_absent_from_truth_and_prediction() -> None:
    # Classes 2 and 3 never appear in truth nor argmax; they must not change the value.
    target = torch.tensor([[[0, 1, 1, 0]]])
    logits = torch.tensor([[[[2.0, -1, -1, 2]], [[-1.0, 2, 2, -1]], [[0.0, 0, 0, 0]], [[1.0, 1, 1, 1]]]])
    four = build_loss("dice", num_classes=4, class_weights=[1, 1, 5, 5], ignore_index=IGNORE)(logits, target)
    probs = torch.softmax(logits, 1)[0, :, 0]
    truth = F.one_hot(target[0, 0], 4).T.float()
    per_class = (2 * (probs * truth).sum(1) + 1) / (probs.sum(1) + truth.sum(1) + 1)
    torch.testing.assert_close(four, 1 - per_class[:2].mean())


def test_dice_sigmoid_empty_truth_and_prediction_is_zero() -> None:
    logits = torch.full((1, 1, 4, 4), -5.0)
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert build_loss("dice", num_classes=2, ignore_index=IGNORE)(logits, empty).item() == 0.0


@pytest.mark.parametrize("name,channels,num_classes", [c for c in CASES if c[0] != "bce"] + [("bce", 1, 2)])
def test_class_weights_change_the_value(name: str, channels: int, num_classes: int) -> None:
    logits, target = make_batch(channels, num_classes, seed=3)
    plain = build_loss(name, num_classes=num_classes, ignore_index=IGNORE)(logits, target)
    weights = [1.0] * (num_classes - 1) + [10.0]
    weighted = build_loss(name, num_classes=num_classes, class_weights=weights, ignore_index=IGNORE)(logits, target)
    if name == "dice" and channels == 1:
        # Documented: a 1-channel Dice has a single (foreground) term, so weights cannot matter.
        torch.testing.assert_close(weighted, plain)
    else:
        assert abs(weighted.item() - plain.item()) > 1e-4


def test_weighted_sum_equals_sum_of_parts() -> None:
    logits, target = make_batch(4, 4)
    combined = build_loss("0.5*dice + 2 * ce+focal", num_classes=4, class_weights=[1, 2, 3, 4], ignore_index=IGNORE)
    parts = {
        name: build_loss(name, num_classes=4, class_weights=[1, 2, 3, 4], ignore_index=IGNORE)(logits, target)
        for name in ("dice", "ce", "focal")
    }
    value = combined(logits, target)
    torch.testing.assert_close(value, 0.5 * parts["dice"] + 2 * parts["ce"] + parts["focal"])
    assert set(combined.last_parts) == {"dice", "ce", "focal"}
    torch.testing.assert_close(combined.last_parts["ce"], parts["ce"])


def test_single_name_and_spacing() -> None:
    logits, target = make_batch(1, 2)
    torch.testing.assert_close(
        build_loss(" bce + dice ", num_classes=2, ignore_index=IGNORE)(logits, target),
        build_loss("bce", num_classes=2, ignore_index=IGNORE)(logits, target)
        + build_loss("dice", num_classes=2, ignore_index=IGNORE)(logits, target),
    )
    assert parse_loss_spec("dice+ce") == [(1.0, "dice"), (1.0, "ce")]
    assert parse_loss_spec("0.5*dice+1*ce") == [(0.5, "dice"), (1.0, "ce")]
    assert parse_loss_spec(".25*Focal") == [(0.25, "focal")]


BAD_SPECS = ["", "dise", "dice+", "dice++ce", "*ce", "0.5*", "-1*ce", "dice*0.5", "ce+ce", "dice ce"]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_specs_are_config_errors_listing_names(spec: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_loss(spec, num_classes=3, ignore_index=IGNORE)
    if spec != "ce+ce":
        assert "bce, ce, dice, focal" in str(error.value)


def test_bad_construction_and_shapes() -> None:
    with pytest.raises(ConfigError, match="num_classes=3"):
        build_loss("bce", num_classes=3, ignore_index=IGNORE)
    with pytest.raises(ConfigError, match="class_weights"):
        build_loss("ce", num_classes=3, class_weights=[1.0, 2.0], ignore_index=IGNORE)
    with pytest.raises(ConfigError, match="class_weights"):
        build_loss("ce", num_classes=2, class_weights=[1.0, -2.0], ignore_index=IGNORE)
    with pytest.raises(ConfigError, match="num_classes"):
        build_loss("dice", num_classes=1, ignore_index=IGNORE)
    loss = build_loss("ce", num_classes=3, ignore_index=IGNORE)
    with pytest.raises(ConfigError, match="channels"):
        loss(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(DataError, match=r"\[7\]"):
        loss(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 7], [IGNORE, 1]]]))


def test_uint8_target_and_half_logits_are_accepted() -> None:
    logits, target = make_batch(3, 3)
    expected = build_loss("dice+ce", num_classes=3, ignore_index=IGNORE)(logits, target)
    got = build_loss("dice+ce", num_classes=3, ignore_index=IGNORE)(logits.bfloat16(), target.to(torch.uint8))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0.02, rtol=0.02)


def _one_hot_dice(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, smooth: float = 1.0,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """The textbook soft Dice loss with one-hot tensors, classes present in truth or prediction (weighted)."""
    valid = (target != ignore_index)[:, None].float()
    safe = torch.where(target == ignore_index, torch.zeros_like(target), target)
    probs = torch.softmax(logits, 1) * valid
    truth = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    predicted = F.one_hot(logits.argmax(1), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dice = (2 * (probs * truth).sum((0, 2, 3)) + smooth) / (probs.sum((0, 2, 3)) + truth.sum((0, 2, 3)) + smooth)
    present = ((truth.sum((0, 2, 3)) + predicted.sum((0, 2, 3))) > 0).to(dice.dtype)
    if weights is not None:
        present = present * weights
    return 1 - (dice * present).sum() / present.sum()


def test_dice_equals_the_one_hot_formula_in_value_and_gradient() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 9, 12, 10, generator=generator, requires_grad=True)
    target = torch.randint(0, 6, (3, 12, 10), generator=generator)  # classes 6..8 absent from the truth
    target[0, :4] = 255
    loss = build_loss("dice", num_classes=9, ignore_index=IGNORE)(logits, target)
    (gradient,) = torch.autograd.grad(loss, logits)
    reference = _one_hot_dice(logits, target, 255)
    (reference_gradient,) = torch.autograd.grad(reference, logits)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(gradient, reference_gradient, atol=1e-8)
    assert gradient[0, :, :4].abs().max() == 0  # ignored pixels get no gradient


@pytest.mark.parametrize("scale,ignored", [(1.0, 0.2), (10.0, 0.5), (60.0, 0.0), (1.0, 0.95)])
def test_dice_plus_ce_equals_the_one_hot_formulas_in_value_and_gradient(scale: float, ignored: float) -> None:
    """`dice+ce` of a softmax head runs one softmax with its gradient written out (softmax_dice.py): value and
    gradient must be those of the textbook Dice (one-hot, float64) plus torch's weighted cross-entropy, with class
    weights, ignored pixels, classes absent from truth and prediction, and logits large enough to saturate."""
    generator = torch.Generator().manual_seed(int(scale) + int(100 * ignored))
    logits = (scale * torch.randn(3, 9, 12, 10, generator=generator, dtype=torch.float64)).float().requires_grad_()
    target = torch.randint(0, 6, (3, 12, 10), generator=generator)  # classes 6..8 absent from the truth
    target[torch.rand(3, 12, 10, generator=generator) < ignored] = IGNORE
    weights = torch.rand(9, generator=generator, dtype=torch.float64) * 3 + 0.1
    loss = build_loss("0.7*dice + 1.5*ce", num_classes=9, ignore_index=IGNORE, class_weights=weights.tolist())
    value = loss(logits, target)
    (gradient,) = torch.autograd.grad(value, logits)
    exact = logits.detach().double().requires_grad_()
    dice = _one_hot_dice(exact, target, IGNORE, weights=weights)
    ce = F.cross_entropy(exact, target, weight=weights, ignore_index=IGNORE)
    reference = 0.7 * dice + 1.5 * ce
    (reference_gradient,) = torch.autograd.grad(reference, exact)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    assert loss.last_parts["dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    assert loss.last_parts["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    # float32 against float64: autograd's own float32 gradient of the reference is off by as much (~1e-7 of the max)
    tolerance = 1e-6 * reference_gradient.abs().max().item()
    torch.testing.assert_close(gradient.double(), reference_gradient, rtol=0, atol=tolerance)
    assert not gradient[(target == IGNORE)[:, None].expand_as(gradient)].any()


def test_dice_plus_ce_of_channels_last_logits_equals_contiguous() -> None:
    """`--channels-last on` (the CUDA default) hands the loss channels_last logits."""
    logits, target = make_batch(5, 5)
    loss = build_loss("dice+ce", num_classes=5, ignore_index=IGNORE)
    gradients = []
    for layout in (torch.contiguous_format, torch.channels_last):
        leaf = logits.clone().contiguous(memory_format=layout).requires_grad_()
        value = loss(leaf, target)
        gradients.append(torch.autograd.grad(value, leaf)[0])
    torch.testing.assert_close(gradients[0], gradients[1])


def test_dice_plus_ce_with_every_pixel_ignored_is_zero_with_a_zero_gradient() -> None:
    logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE)
    value = build_loss("dice+ce", num_classes=5, ignore_index=IGNORE, class_weights=[1, 2, 3, 4, 5])(logits, target)
    (gradient,) = torch.autograd.grad(value, logits)
    assert value.item() == 0 and gradient.abs().max() == 0


def test_dice_plus_ce_needs_a_softmax_head_as_its_terms_do() -> None:
    logits, target = make_batch(1, 2)
    with pytest.raises(ConfigError, match="'ce' needs a softmax head"):
        build_loss("dice+ce", num_classes=2, ignore_index=IGNORE)(logits, target)
    logits, target = make_batch(3, 4)
    with pytest.raises(ConfigError, match="logits have 3 channels but num_classes is 4"):
        build_loss("ce+dice", num_classes=4, ignore_index=IGNORE)(logits, target)
