"""derive_plan: fingerprint → TrainConfig values, each with one line of reason and the numbers behind it."""

from __future__ import annotations

import json

import pytest

from masksmith.config import make_config
from masksmith.data.check import check_dataset, fingerprint
from masksmith.errors import ConfigError, DataError
from masksmith.planning.plan import (
    MAX_CLASS_WEIGHT,
    PlanChoice,
    class_weights,
    derive_plan,
    memory_mb,
    plan_text,
    plan_to_dict,
)
from tests.helpers import make_shapes_dataset


def _fp(width: float = 550, height: float = 825, *, min_side: int | None = None, frequency=None,
        train_images: int = 1000, channels: int = 3, names=None) -> dict:
    frequency = frequency if frequency is not None else [0.7, 0.2, 0.1]
    return {
        "train_images": train_images,
        "image_size": {"median_width": width, "median_height": height,
                       "min_width": min_side or width, "min_height": min_side or height,
                       "max_width": width, "max_height": height},
        "channels": channels,
        "image_modes": {"RGB" if channels == 3 else "L": train_images},
        "num_classes": len(frequency),
        "class_names": names or [f"c{i}" for i in range(len(frequency))],
        "class_pixel_frequency": frequency,
        "foreground_share": 1 - frequency[0],
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
        "stats_images": 200,
    }


def _plan(fp: dict, **kwargs) -> dict[str, PlanChoice]:
    return {c.option: c for c in derive_plan(fp, **kwargs)}


def test_large_photos_on_cpu():
    plan = _plan(_fp(550, 825))
    assert plan["size"].value == 256
    assert plan["size"].reason.startswith("size 256: median image 550x825, short side 550")
    assert "4096 MB" in plan["size"].reason
    assert plan["resize"].value == "random_crop" and "2.1x" in plan["resize"].reason
    batch = plan["batch_size"].value
    assert memory_mb(256, batch, 3) <= 4096 and (batch == 16 or memory_mb(256, 2 * batch, 3) > 4096)
    many = _plan(_fp(frequency=[0.5] + [0.5 / 58] * 58))  # 59 classes: bigger logits, smaller batch
    assert many["batch_size"].value == 8
    assert memory_mb(256, 8, 59) <= 4096 < memory_mb(256, 16, 59)
    assert plan["channels"].value == 3
    assert plan["mean"].value == [0.5, 0.5, 0.5] and plan["std"].value == [0.25, 0.25, 0.25]
    for choice in plan.values():
        assert "\n" not in choice.reason and any(ch.isdigit() for ch in choice.reason)


def test_cuda_allows_larger_inputs_and_resizes_when_close():
    plan = _plan(_fp(550, 825), device="cuda", memory_budget_mb=16000)
    assert plan["size"].value == 512
    assert plan["resize"].value == "resize"


def test_small_images_are_resized_to_a_multiple_of_32():
    plan = _plan(_fp(100, 75))
    assert plan["size"].value == 64
    assert plan["resize"].value == "resize"
    tiny = _plan(_fp(20, 20))
    assert tiny["size"].value == 32 and "minimum 32" in tiny["size"].reason


@pytest.mark.parametrize("side, resize", [(512, "random_crop"), (480, "resize")])
def test_images_twice_the_input_side_train_on_crops(side, resize):
    # ISBI membranes: 512² slices at a 256 input; resizing would halve their 2-4 px membranes.
    plan = _plan(_fp(side, side, channels=1), given={"size": 256})
    assert plan["resize"].value == resize
    assert ("≥ 2x" if resize == "random_crop" else "< 2x") in plan["resize"].reason


def test_structures_that_resizing_would_thin_out_train_on_crops():
    # The ISBI membranes: 5.4 px wide, 2.7 px after 512 -> 256: crops. The clothing photos: 34 px, 16 px
    # after 550 -> 256: the whole photo, resized. Without a measured width the size ratio decides alone.
    thin = _plan({**_fp(512, 512), "structure_width": 5.4}, given={"size": 256})
    assert thin["resize"].value == "random_crop" and "5.4 px wide, would be 2.7 px resized" in thin["resize"].reason
    wide = _plan({**_fp(550, 825), "structure_width": 34.0}, given={"size": [384, 256]})
    assert wide["resize"].value == "resize" and "would be 15.8 px resized (≥ 8)" in wide["resize"].reason
    assert _plan(_fp(550, 825), given={"size": [384, 256]})["resize"].value == "random_crop"
    assert _plan({**_fp(550, 825), "structure_width": None}, given={"size": [384, 256]})["resize"].value == "random_crop"


def test_random_crop_needs_every_image_at_least_the_size():
    plan = _plan(_fp(800, 800, min_side=200))
    assert plan["size"].value == 256 and plan["resize"].value == "resize"
    assert "smallest side 200" in plan["resize"].reason


def test_memory_budget_lowers_batch_then_size():
    assert _plan(_fp(), memory_budget_mb=1500)["batch_size"].value == 4
    small = _plan(_fp(), memory_budget_mb=500)
    assert small["size"].value < 256 and small["batch_size"].value == 2
    assert memory_mb(small["size"].value, 2, 3) <= 500


def test_batch_is_not_larger_than_the_training_set():
    assert _plan(_fp(64, 64, train_images=5))["batch_size"].value == 4


def test_given_options_are_left_alone_and_their_values_used():
    plan = _plan(_fp(), given={"size": 512, "loss": "ce"})
    assert "size" not in plan and "loss" not in plan
    assert plan["batch_size"].value == 4  # 512² costs 4x the memory of 256² (batch 16 there)
    assert _plan(_fp())["batch_size"].value == 16
    assert "512x512" in plan["batch_size"].reason
    names_only = _plan(_fp(), given={"batch_size", "mean", "std"})
    assert set(names_only) == {"size", "resize", "channels", "augment", "loss"}
    assert "assumed" in names_only["size"].reason  # the given batch size is not known here


def test_loss_and_weights_for_imbalanced_classes():
    frequency = [0.9, 0.0999, 0.0001, 0.0]
    plan = _plan(_fp(frequency=frequency, names=["bg", "shirt", "ring", "clogs"]))
    assert plan["loss"].value == "dice+ce"
    weights = plan["class_weights"].value
    assert weights[3] == 1.0  # never seen: 1, not 0
    assert weights[0] < weights[1] < weights[2]
    reason = plan["class_weights"].reason
    assert "'clogs'" in reason and "get 1" in reason and "capped at 10" in reason


def test_class_weights_cap():
    weights, capped, unseen = class_weights([0.5] + [0.05] * 10 + [1e-6, 0.0])
    assert weights[11] == MAX_CLASS_WEIGHT and capped == [11]
    assert weights[12] == 1.0 and unseen == [12]


def test_balanced_data_gets_plain_ce_and_no_weights():
    plan = _plan(_fp(frequency=[0.55, 0.45]))
    assert plan["loss"].value == "ce" and "45.0%" in plan["loss"].reason
    assert "class_weights" not in plan


def test_small_foreground_gets_dice():
    plan = _plan(_fp(frequency=[0.95, 0.05]))
    assert plan["loss"].value == "dice+ce" and "5.0%" in plan["loss"].reason


def test_class_weights_are_inverse_sqrt_with_a_pixel_mean_of_one():
    frequency = [0.64, 0.16, 0.16, 0.04]
    weights, capped, unseen = class_weights(frequency)
    # 1/sqrt(f) = 1.25, 2.5, 2.5, 5; the pixel-weighted mean of those is 0.8 + 0.4 + 0.4 + 0.2 = 1.8.
    assert weights == pytest.approx([1.25 / 1.8, 2.5 / 1.8, 2.5 / 1.8, 5 / 1.8], abs=1e-4)
    assert sum(f * w for f, w in zip(frequency, weights)) == pytest.approx(1.0, abs=1e-3)
    assert capped == [] and unseen == []


def test_a_dominant_background_keeps_a_real_weight_beside_very_rare_classes():
    # The clothing data's shape: background 77%, a few common classes, many classes near 1e-5.
    frequency = [0.77, 0.08, 0.06, 0.04, 0.03, 0.02] + [1e-5] * 40
    frequency[0] += 1 - sum(frequency)
    weights, capped, _ = class_weights(frequency)
    assert weights[0] > 0.25  # a mean of 1 over the classes gave it about 0.01
    assert len(capped) == 40


def test_channels_given_differently_skips_mean_and_std():
    plan = _plan(_fp(), given={"channels": 1})
    assert "mean" not in plan and "std" not in plan and "channels" not in plan


def test_augmentation_follows_the_channels():
    colour, gray = _plan(_fp(channels=3)), _plan(_fp(channels=1))
    assert colour["augment"].value == "upright" and "up at the top" in colour["augment"].reason
    assert gray["augment"].value == "default" and "no up" in gray["augment"].reason
    # The channels the model will see decide, given or measured; a given preset is left alone.
    assert _plan(_fp(channels=3), given={"channels": 1})["augment"].value == "default"
    assert "augment" not in _plan(_fp(channels=3), given={"augment": "light"})


def test_text_and_dict_forms():
    choices = derive_plan(_fp(frequency=[0.9] + [0.1 / 20] * 20))
    text = plan_text(choices)
    assert len(text.splitlines()) == len(choices)
    assert text.splitlines()[0].startswith("size")
    assert "… 21 values]" in text
    data = json.loads(json.dumps(plan_to_dict(choices)))
    assert list(data["config"]) == [c.option for c in choices]
    assert data["choices"][0]["reason"] == choices[0].reason
    assert plan_text([]).startswith("nothing to plan")


def test_bad_inputs():
    with pytest.raises(DataError, match="no readable training images"):
        derive_plan({"train_images": 0, "image_size": {}})
    with pytest.raises(ConfigError, match="device"):
        derive_plan(_fp(), device="tpu")
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        derive_plan(_fp(), memory_budget_mb=100)


def test_check_fingerprint_plan_gives_a_valid_train_config(tmp_path):
    make_shapes_dataset(tmp_path, count=6)
    report = check_dataset(tmp_path, classes=tmp_path / "classes.txt", progress=False)
    choices = derive_plan(fingerprint(report))
    config = plan_to_dict(choices)["config"]
    assert config["size"] == 32 and config["resize"] == "resize"  # 56x40 images
    cfg = make_config({"data": str(tmp_path), **config})
    assert cfg.size == 32 and cfg.channels == 3 and cfg.augment == "upright"
    assert cfg.mean == pytest.approx(report.mean, abs=1e-4)
