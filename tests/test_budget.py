"""The compute plan: input sizes keep the aspect ratio, and the candidate that fits the budget wins."""

from __future__ import annotations

import pytest

from masksmith import budget
from masksmith.budget import MIN_EPOCHS, MIN_STEPS, aspect_sizes, plan_for_budget, time_training_step


def test_aspect_sizes_keep_the_ratio_with_sides_multiples_of_32() -> None:
    sizes = aspect_sizes(480, 360, cap=256)  # street scenes: landscape 4:3
    assert sizes[0] == (256, 352)  # height, width: 256 * 4/3 = 341 -> 352
    assert sizes[-1][0] == budget.MIN_SHORT_SIDE
    assert all(h % 32 == 0 and w % 32 == 0 and w >= h for h, w in sizes)
    portrait = aspect_sizes(550, 825, cap=256)  # clothing photos: portrait 2:3
    assert portrait[0] == (384, 256)


def test_aspect_sizes_cap_panoramas_and_small_images() -> None:
    assert aspect_sizes(4000, 500, cap=256)[0] == (256, 512)  # at most MAX_LONG_RATIO longer
    assert aspect_sizes(100, 100, cap=256) == [(128, 128)]  # never below the smallest input


def _linear_timer(per_megapixel: dict[str | None, float]):
    calls = []

    def timer(encoder, size, batch, channels, num_classes):
        calls.append((encoder, size))
        return per_megapixel[encoder] * batch * size[0] * size[1] / 1e6

    return timer, calls


def test_the_largest_input_that_fits_the_budget_wins() -> None:
    sizes = aspect_sizes(480, 360, cap=256)
    timer, calls = _linear_timer({"small": 2.0, "big": 4.0})
    best, fits = plan_for_budget(["small", "big"], sizes, budget_seconds=15 * 60, train_images=367, batch=8,
                                 channels=3, num_classes=11, timer=timer)
    # Each encoder is timed at two sizes only; the others are interpolated.
    assert len(calls) == 4 and {size for _, size in calls} == {sizes[0], sizes[-1]}
    assert best.fits and best.steps >= MIN_STEPS and best.epochs >= MIN_EPOCHS
    larger = [f for f in fits if f.candidate.size[0] * f.candidate.size[1] >
              best.candidate.size[0] * best.candidate.size[1]]
    assert larger and not any(f.fits for f in larger)  # everything bigger misses the budget
    # The slower encoder fits only smaller inputs, so the cheap one wins at a larger input here.
    assert best.candidate.encoder == "small"


def test_a_generous_budget_prefers_the_larger_encoder_at_equal_size() -> None:
    sizes = aspect_sizes(480, 360, cap=256)
    timer, _ = _linear_timer({"small": 0.01, "big": 0.02})
    best, _ = plan_for_budget(["small", "big"], sizes, budget_seconds=3600, train_images=367, batch=8,
                              channels=3, num_classes=11, timer=timer)
    assert best.candidate == budget.Candidate("big", sizes[0])


def test_nothing_fits_gives_the_cheapest_candidate() -> None:
    sizes = aspect_sizes(480, 360, cap=256)
    timer, _ = _linear_timer({"small": 50.0, "big": 80.0})
    best, fits = plan_for_budget(["small", "big"], sizes, budget_seconds=60, train_images=367, batch=8,
                                 channels=3, num_classes=11, timer=timer)
    assert not any(f.fits for f in fits)
    assert best.candidate == budget.Candidate("small", sizes[-1])
    assert "nothing fits" in budget.budget_reason(best, fits, 60, 8)


def test_a_real_step_is_timed() -> None:
    seconds = time_training_step(None, (32, 64), 2, 1, 2)
    assert 0 < seconds < 60
