"""The compute plan: input sizes keep the aspect ratio, and the candidate that fits the budget wins."""

from __future__ import annotations

import pytest
import torch

from masksmith.models import build_model
from masksmith.planning import budget
from masksmith.planning.budget import (
    BF16_MIN_SPEEDUP,
    BFLOAT16,
    FLOAT32,
    MIN_EPOCHS,
    MIN_STEPS,
    aspect_sizes,
    plan_for_budget,
    time_training_step,
)


def test_aspect_sizes_keep_the_ratio_with_sides_multiples_of_32() -> None:
    sizes = aspect_sizes(480, 360, cap=256)  # street scenes: landscape 4:3
    assert sizes[0] == (256, 352)  # height, width: 256 * 4/3 = 341 -> 352
    assert sizes[-1][0] == budget.MIN_SHORT_SIDE
    assert all(h % 32 == 0 and w % 32 == 0 and w >= h for h, w in sizes)
    portrait = aspect_sizes(550, 825, cap=256)  # clothing photos: portrait 2:3
    assert portrait[0] == (384, 256)


def test_aspect_sizes_cap_panoramas_and_small_images() -> None:
    assert aspect_sizes(4000, 500, cap=256)[0] == (256, 512)  # at most MAX_LONG_RATIO longer
    assert aspect_sizes(100, 100, cap=256) == [(96, 96)]  # small images are never upscaled


def _linear_timer(per_megapixel: dict[str | None, float], bf16_speedup: float = 1.0):
    """A step timer linear in pixels; bfloat16 steps `bf16_speedup` times faster. Records each call."""
    calls = []

    def timer(encoder, size, batch, channels, num_classes, precision, model_options=None, frozen_stages=0,
              device="cpu"):
        calls.append((encoder, size, precision))
        timer.options.append(model_options)
        timer.frozen_stages.append(frozen_stages)
        seconds = per_megapixel[encoder] * batch * size[0] * size[1] / 1e6
        return seconds / bf16_speedup if precision == BFLOAT16 else seconds

    timer.options, timer.frozen_stages = [], []
    return timer, calls


def test_the_largest_input_that_fits_the_budget_wins() -> None:
    sizes = aspect_sizes(480, 360, cap=256)
    timer, calls = _linear_timer({"small": 2.0, "big": 4.0})
    best, fits = plan_for_budget(["small", "big"], sizes, budget_seconds=15 * 60, train_images=367, batch=8,
                                 channels=3, num_classes=11, timer=timer)
    # Each encoder is timed at two sizes only; the others are interpolated.
    assert len(calls) == 4 and {size for _, size, _ in calls} == {sizes[0], sizes[-1]}
    assert best.fits and best.steps >= MIN_STEPS and best.epochs >= MIN_EPOCHS
    larger = [f for f in fits if f.candidate.size[0] * f.candidate.size[1] >
              best.candidate.size[0] * best.candidate.size[1]]
    assert larger and not any(f.fits for f in larger)  # everything bigger misses the budget
    # The slower encoder fits only smaller inputs, so the cheap one wins at a larger input here.
    assert best.candidate.encoder == "small"


@pytest.mark.parametrize("big_seconds", [0.02, 0.009])  # the larger encoder, even where it timed faster (noise)
def test_a_generous_budget_prefers_the_larger_encoder_at_equal_size(big_seconds) -> None:
    sizes = aspect_sizes(480, 360, cap=256)
    timer, _ = _linear_timer({"small": 0.01, "big": big_seconds})
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


@pytest.mark.slow
def test_a_real_step_is_timed_in_the_precision_asked_for(monkeypatch) -> None:
    built = []

    def recording_model(*args, **kwargs):
        network = build_model(*args, **kwargs)
        first_convolution = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
        first_convolution.register_forward_hook(lambda module, inputs, output: built.append(output.dtype))
        return network

    monkeypatch.setattr(budget, "build_model", recording_model)
    for precision, dtype in ((FLOAT32, torch.float32), (BFLOAT16, torch.bfloat16)):
        built.clear()
        assert time_training_step(None, (32, 64), 2, 1, 2, precision) > 0
        assert built and set(built) == {dtype}  # every timed forward pass ran in that precision


def _fingerprint(width: int = 480, height: int = 360, images: int = 367, channels: int = 3) -> dict:
    return {"train_images": images, "splits": {"train": images}, "channels": channels, "num_classes": 11,
            "image_size": {"median_width": width, "median_height": height}}


def test_the_plan_picks_an_installed_pretrained_encoder_and_its_schedule() -> None:
    timer, _ = _linear_timer({"efficientnet_lite0": 2.0, "efficientnet_lite2": 4.0})
    choices, timed = budget.plan_network(_fingerprint(), given=set(), known={}, device="cpu", max_time=15,
                                         epochs=50, timer=timer, encoders=["efficientnet_lite0", "efficientnet_lite2"])
    chosen = {c.option: c.value for c in choices}
    assert chosen["encoder"] == "efficientnet_lite0" and chosen["weights"] == "imagenet"
    assert chosen["mean"] == [0.498] * 3 and chosen["std"] == [0.502] * 3  # TF-Lite's (x - 127) / 128
    assert 1 <= chosen["freeze_encoder_epochs"] <= budget.MAX_FREEZE_EPOCHS
    height, width = chosen["size"]
    assert width > height and abs(width / height - 480 / 360) < 0.25  # landscape kept, not squashed
    assert "367 training images" in next(c.reason for c in choices if c.option == "encoder")
    assert len(timed) == 2 * len(aspect_sizes(480, 360, 256)) and any(row["fits"] for row in timed)


@pytest.mark.parametrize("given, lr, encoder_lr", [({}, budget.FINE_TUNE_LR, budget.FINE_TUNE_LR / 2),
                                                    ({"lr": 4e-3}, None, 2e-3),
                                                    ({"encoder_lr": 3e-4}, budget.FINE_TUNE_LR, None),
                                                    ({"lr": 1e-2, "encoder_lr": 3e-4}, None, None)])
def test_a_planned_pretrained_encoder_gets_the_fine_tuning_rates(given, lr, encoder_lr) -> None:
    timer, _ = _linear_timer({"efficientnet_lite0": 2.0})
    choices, _ = budget.plan_network(_fingerprint(), given=set(given), known=given, device="cpu", max_time=15,
                                     epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    chosen = {c.option: c for c in choices}
    # Planned only where not given; the encoder's rate follows the decoder's, given or planned.
    assert (chosen["lr"].value if "lr" in chosen else None) == lr
    assert (chosen["encoder_lr"].value if "encoder_lr" in chosen else None) == pytest.approx(encoder_lr)
    used = given.get("encoder_lr") or encoder_lr
    assert chosen["freeze_encoder_epochs"].reason.endswith(f"fine-tuned at {used:g}")


@pytest.mark.parametrize("channels, given, planned, timed_with", [
    (3, {}, budget.FROZEN_STAGES, budget.FROZEN_STAGES),  # photos: planned, and every candidate timed with it
    (1, {}, budget.FROZEN_STAGES, budget.FROZEN_STAGES),  # grayscale too (the first convolution summed from RGB)
    (3, {"frozen_stages": 0}, None, 0),  # the user's choice stands, also when it is none
    (1, {"frozen_stages": 3}, None, 3),
    (3, {"model": "unet"}, None, 0),  # the classic U-Net has no pretrained stages
])
def test_frozen_stages_are_planned_for_a_planned_encoder_and_timed_as_they_train(channels, given, planned,
                                                                               timed_with) -> None:
    timer, calls = _linear_timer({"efficientnet_lite0": 2.0, None: 4.0}, bf16_speedup=1.5)
    choices, _ = budget.plan_network(_fingerprint(channels=channels), given=set(given), known=given, device="cpu",
                                     max_time=15, epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    chosen = {c.option: c for c in choices}
    assert (chosen["frozen_stages"].value if "frozen_stages" in chosen else None) == planned
    assert calls and set(timer.frozen_stages) == {timed_with}  # the precision probe included
    if planned:
        assert f"down to stride {2 ** planned}" in chosen["frozen_stages"].reason


@pytest.mark.slow
def test_a_step_timed_with_frozen_stages_trains_only_the_rest(monkeypatch) -> None:
    built = []

    def recording_model(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(budget, "build_model", recording_model)
    assert time_training_step("efficientnet_lite0", (64, 64), 2, 3, 2, frozen_stages=2) > 0
    encoder = built[0].encoder
    frozen = {id(p) for layer in encoder.stage_modules(2) for p in layer.parameters()}
    assert frozen and all(not p.requires_grad and p.grad is None for p in encoder.parameters() if id(p) in frozen)
    assert all(p.grad is not None for p in built[0].parameters() if id(p) not in frozen)


def test_a_given_encoder_or_the_classic_unet_keeps_the_default_rates() -> None:
    timer, _ = _linear_timer({"efficientnet_lite0": 2.0, None: 2.0})
    for given in ({"encoder": "efficientnet_lite0"}, {"model": "unet"}):
        choices, _ = budget.plan_network(_fingerprint(), given=set(given), known=given, device="cpu", max_time=15,
                                         epochs=50, timer=timer, encoders=["efficientnet_lite0"])
        assert not {"lr", "encoder_lr"} & {c.option for c in choices}


def test_model_unet_alone_keeps_the_classic_unet_and_other_models_plan_nothing() -> None:
    timer, _ = _linear_timer({None: 2.0})
    choices, _ = budget.plan_network(_fingerprint(), given={"model"}, known={"model": "unet"}, device="cpu",
                                     max_time=15, epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    options = {c.option for c in choices}
    assert "encoder" not in options and "weights" not in options and "size" in options
    assert budget.plan_network(_fingerprint(), given={"model"}, known={"model": "fcn-lite"}, device="cpu",
                               max_time=15, epochs=50, timer=timer) == ([], [])
    assert budget.plan_network(_fingerprint(), given={"model_options"}, known={"model_options": {"depth": 3}},
                               device="cpu", max_time=15, epochs=50, timer=timer) == ([], [])


def test_a_given_decoder_stride_keeps_the_planned_encoder_and_is_timed() -> None:
    timer, calls = _linear_timer({"efficientnet_lite0": 2.0}, bf16_speedup=1.6)
    options = {"decoder_stride": 4}
    choices, _ = budget.plan_network(_fingerprint(), given={"model_options"}, known={"model_options": options},
                                     device="cpu", max_time=15, epochs=50, timer=timer,
                                     encoders=["efficientnet_lite0"])
    chosen = {c.option: c.value for c in choices}
    assert chosen["encoder"] == "efficientnet_lite0" and chosen["weights"] == "imagenet"
    assert calls and timer.options == [options] * len(calls)  # the probe and every candidate: with the stride
    assert "efficientnet_lite0 U-Net -m decoder_stride=4 at" in next(c.reason for c in choices if c.option == "size")
    # Options of the classic U-Net alone (no stride) still leave the network to the user.
    assert budget.plan_network(_fingerprint(), given={"model_options"}, known={"model_options": {"base_channels": 16}},
                               device="cpu", max_time=15, epochs=50, timer=timer) == ([], [])


@pytest.mark.slow
def test_a_real_step_is_timed_with_the_given_decoder_stride(monkeypatch) -> None:
    built = []

    def recording_model(*args, **kwargs):
        built.append(kwargs)
        return build_model(*args, **kwargs)

    monkeypatch.setattr(budget, "build_model", recording_model)
    assert time_training_step("efficientnet_lite0", (64, 64), 2, 3, 2, model_options={"decoder_stride": 4}) > 0
    assert built == [{"decoder_stride": 4, "encoder": "efficientnet_lite0"}]


def _stride_timer():
    """A linear step timer (the stride-4 decoder 0.7x the cost) that records the decoder stride of each call."""
    strides = []

    def timer(encoder, size, batch, channels, num_classes, precision, model_options=None, frozen_stages=0):
        stride = (model_options or {}).get("decoder_stride", 1)
        strides.append((size, stride))
        return 2.0 * (0.7 if stride == 4 else 1.0) * batch * size[0] * size[1] / 1e6

    return timer, strides


def test_wide_structures_get_a_decoder_that_stops_at_stride_4() -> None:
    timer, strides = _stride_timer()
    clothing = {**_fingerprint(550, 825, 803), "structure_width": 33.5}  # 15.6 px at 384x256: 3.9 px at stride 4
    choices, timed = budget.plan_network(clothing, given=set(), known={}, device="cpu", max_time=40, epochs=50,
                                         timer=timer, encoders=["efficientnet_lite0"])
    chosen = {c.option: c for c in choices}
    height, width = chosen["size"].value
    assert chosen["model_options"].value == {"decoder_stride": 4}
    assert "decoder to stride 4" in chosen["size"].reason and "(≥ 2)" in chosen["model_options"].reason
    # Each size gets the stride its structures allow: 128 px short side leaves 7.8 px, under 2 px at stride 4.
    by_size = {tuple(row["size"]): row["decoder_stride"] for row in timed}
    assert by_size[(384, 256)] == 4 and by_size[(192, 128)] == 1
    assert {stride for size, stride in strides if size == (192, 128)} == {1}
    assert {stride for size, stride in strides if size == (384, 256)} == {4}
    assert by_size[(height, width)] == 4


@pytest.mark.parametrize("given, known", [
    (set(), {}),  # narrow structures: the membranes, 5.4 px at 512, 2.7 px at 256
    ({"encoder"}, {"encoder": "efficientnet_lite0"}),  # wide, but the user chose the network
    ({"model_options"}, {"model_options": {"decoder_stride": 2}}),
])
def test_narrow_structures_or_a_chosen_network_keep_the_full_decoder(given, known) -> None:
    timer, strides = _stride_timer()
    membranes = {**_fingerprint(512, 512, 24), "structure_width": 5.4}
    clothing = {**_fingerprint(550, 825, 803), "structure_width": 33.5}
    fingerprint = clothing if given else membranes
    choices, timed = budget.plan_network(fingerprint, given=given, known=known, device="cpu", max_time=25,
                                         epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    assert "model_options" not in {c.option for c in choices}
    assert {row["decoder_stride"] for row in timed} == {1}
    assert {stride for _, stride in strides} == {known.get("model_options", {}).get("decoder_stride", 1)}


def test_without_a_budget_the_stride_follows_the_largest_input() -> None:
    clothing = {**_fingerprint(550, 825, 803), "structure_width": 33.5}
    choices, _ = budget.plan_network(clothing, given=set(), known={}, device="cpu", max_time=None, epochs=50,
                                     encoders=["efficientnet_lite0"])
    chosen = {c.option: c.value for c in choices}
    assert chosen["size"] == [384, 256] and chosen["model_options"] == {"decoder_stride": 4}


@pytest.mark.parametrize("bf16_speedup, planned", [(1.6, BFLOAT16), (BF16_MIN_SPEEDUP - 0.05, FLOAT32),
                                                    (0.4, FLOAT32)])
def test_the_budget_plan_times_bfloat16_and_takes_it_only_when_clearly_faster(bf16_speedup, planned) -> None:
    timer, calls = _linear_timer({"efficientnet_lite0": 2.0, "efficientnet_lite2": 4.0}, bf16_speedup)
    choices, timed = budget.plan_network(_fingerprint(), given=set(), known={}, device="cpu", max_time=15,
                                         epochs=50, timer=timer, encoders=["efficientnet_lite0", "efficientnet_lite2"])
    chosen = {c.option: c for c in choices}
    assert chosen["precision"].value == planned
    # The probe: the cheapest candidate at the largest input, once in each precision, before anything else.
    largest = aspect_sizes(480, 360, 256)[0]
    assert calls[:2] == [("efficientnet_lite0", largest, FLOAT32), ("efficientnet_lite0", largest, BFLOAT16)]
    # Then every candidate is timed in the planned precision, and plan.json's rows say which; the probe's step
    # in that precision is used, not timed again.
    assert {precision for _, _, precision in calls[2:]} == {planned}
    assert calls.count(("efficientnet_lite0", largest, planned)) == 1
    assert {row["precision"] for row in timed} == {planned}
    reason = chosen["precision"].reason
    assert f"({bf16_speedup:.2f}x)" in reason and "float32" in reason and "bfloat16" in reason
    assert ("in bfloat16" in chosen["size"].reason) == (planned == BFLOAT16)


def test_a_faster_precision_buys_a_larger_input() -> None:
    sizes = {}
    for speedup in (1.0, 2.0):
        timer, _ = _linear_timer({"efficientnet_lite0": 2.0}, speedup)
        choices, _ = budget.plan_network(_fingerprint(), given=set(), known={}, device="cpu", max_time=15,
                                         epochs=50, timer=timer, encoders=["efficientnet_lite0"])
        height, width = {c.option: c.value for c in choices}["size"]
        sizes[speedup] = height * width
    assert sizes[2.0] > sizes[1.0]


@pytest.mark.parametrize("given", ["32", "bf16-mixed"])
def test_a_given_precision_is_not_probed_and_the_candidates_are_timed_in_it(given) -> None:
    timer, calls = _linear_timer({"efficientnet_lite0": 2.0}, bf16_speedup=1.6)
    choices, _ = budget.plan_network(_fingerprint(), given={"precision"}, known={"precision": given}, device="cpu",
                                     max_time=15, epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    assert "precision" not in {c.option for c in choices}
    assert len(calls) == 2 and {precision for _, _, precision in calls} == {given}


def test_no_precision_is_planned_on_cuda() -> None:
    timer, calls = _linear_timer({"efficientnet_lite0": 2.0}, bf16_speedup=1.6)
    choices, _ = budget.plan_network(_fingerprint(), given=set(), known={}, device="cuda", max_time=15, epochs=50,
                                     timer=timer, encoders=["efficientnet_lite0"])
    assert "precision" not in {c.option for c in choices}  # auto: 16-bit mixed on CUDA
    assert BFLOAT16 not in {precision for _, _, precision in calls}


@pytest.mark.parametrize("given, precision", [({}, budget.FLOAT16), ({"precision": "auto"}, budget.FLOAT16),
                                               ({"precision": "32"}, FLOAT32), ({"precision": BFLOAT16}, BFLOAT16)])
def test_on_a_gpu_the_candidates_are_timed_there_in_the_precision_it_trains_with(given, precision) -> None:
    calls = []

    def timer(encoder, size, batch, channels, num_classes, precision, model_options=None, frozen_stages=0,
              device="cpu"):
        calls.append((device, precision))
        return 0.05 * batch * size[0] * size[1] / 1e6  # a GPU's step: every size fits the budget

    choices, timed = budget.plan_network(_fingerprint(550, 825, 803), given=set(given), known=given, device="cuda",
                                         max_time=15, epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    assert calls and set(calls) == {("cuda", precision)}
    assert {row["precision"] for row in timed} == {precision}
    chosen = {c.option: c.value for c in choices}
    assert chosen["size"] == [768, 512] and "precision" not in chosen  # the GPU cap: short side 512
    cpu_calls = len(calls)
    budget.plan_network(_fingerprint(550, 825, 803), given={"precision"}, known={"precision": "32"}, device="cpu",
                        max_time=15, epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    assert {device for device, _ in calls[cpu_calls:]} == {"cpu"}


def test_a_budget_raises_the_epochs_cap_so_that_the_budget_ends_training() -> None:
    timer, _ = _linear_timer({"efficientnet_lite0": 0.2})  # small data, fast steps: hundreds of epochs fit
    small = _fingerprint(512, 512, images=24, channels=1)
    choices, timed = budget.plan_network(small, given=set(), known={}, device="cpu", max_time=25, epochs=50,
                                         timer=timer, encoders=["efficientnet_lite0"])
    chosen = {c.option: c for c in choices}
    best = max(row["epochs"] for row in timed if row["fits"] and row["size"] == [256, 256])
    assert chosen["epochs"].value >= budget.EPOCH_HEADROOM * best > 50
    assert "default 50" in chosen["epochs"].reason
    assert chosen["early_stopping"].value == 0  # patience would end the run before the budget and the schedule
    given, _ = budget.plan_network(small, given={"epochs"}, known={"epochs": 50}, device="cpu", max_time=25,
                                   epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    assert "epochs" not in {c.option for c in given}  # the user's cap stays
    kept, _ = budget.plan_network(small, given={"early_stopping"}, known={"early_stopping": 5}, device="cpu",
                                  max_time=25, epochs=50, timer=timer, encoders=["efficientnet_lite0"])
    assert "early_stopping" not in {c.option for c in kept}
    slow, _ = _linear_timer({"efficientnet_lite0": 20.0})
    short, _ = budget.plan_network(small, given=set(), known={}, device="cpu", max_time=1, epochs=50,
                                   timer=slow, encoders=["efficientnet_lite0"])
    assert "epochs" not in {c.option for c in short}  # fewer than 50 fit: the default cap is not the limit


def test_without_a_budget_nothing_is_timed() -> None:
    def refuse(*args):
        raise AssertionError("timed without a budget")

    choices, timed = budget.plan_network(_fingerprint(550, 825, 803), given=set(), known={}, device="cpu",
                                         max_time=None, epochs=50, timer=refuse, encoders=["efficientnet_lite0"])
    chosen = {c.option: c.value for c in choices}
    assert timed == [] and chosen["size"] == [384, 256] and not {"precision", "epochs", "early_stopping"} & set(chosen)


def test_a_non_square_input_trains_and_predicts_at_the_original_size(tmp_path, make_image_mask_pairs) -> None:
    import numpy as np

    import masksmith
    from masksmith.bundle import read_meta

    make_image_mask_pairs(tmp_path / "data" / "images", tmp_path / "data" / "masks", [f"p{i}" for i in range(6)],
                          size=(40, 72), num_classes=2)
    run = masksmith.train(tmp_path / "data", size=[32, 64], epochs=1, batch_size=2, auto=False, quiet=True,
                          model_options={"base_channels": 4}, num_workers=0, out=str(tmp_path / "run"))
    meta = read_meta(run.bundle)
    assert meta.size == [32, 64] and meta.input_shape == (32, 64)
    mask = masksmith.load(run.bundle).predict(np.zeros((40, 72, 3), np.uint8))
    assert mask.shape == (40, 72)
