"""Freeze-then-fine-tune and discriminative learning rates on the built-in U-Net (no smp needed),
and local weights files for built-in models."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

import masksmith
from masksmith.config import TrainConfig
from masksmith.errors import ConfigError
from masksmith.models import build_model
from masksmith.models.weights import load_weights
from masksmith.training.engine import SegmentationModule
from tests.helpers import make_shapes_dataset

TINY_UNET = {"base_channels": 4, "depth": 2}


class RandomBatches(Dataset):
    """Random images and 2-class masks, fixed by the seed."""

    def __init__(self, count: int = 8, size: int = 16):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.masks = (self.images[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index]}


class Snapshots(L.Callback):
    """The network's state (parameters and BatchNorm buffers) at the start and after every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.requires_grad: list[bool] = []

    def on_train_start(self, trainer: L.Trainer, module: SegmentationModule) -> None:
        self.states.append(copy.deepcopy(module.network.state_dict()))

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        # The encoder's BatchNorm must be in eval mode for every frozen step, validation runs included.
        if module.encoder_frozen:
            assert not any(layer.training for layer in module.encoder.modules()
                           if isinstance(layer, torch.nn.BatchNorm2d))

    def on_train_epoch_end(self, trainer: L.Trainer, module: SegmentationModule) -> None:
        self.states.append(copy.deepcopy(module.network.state_dict()))
        self.requires_grad.append(all(p.requires_grad for p in module.encoder.parameters()))


def _fit(config: TrainConfig) -> tuple[SegmentationModule, Snapshots]:
    torch.manual_seed(0)
    module = SegmentationModule(build_model("unet", 3, 2, **TINY_UNET), config, 2)
    snapshots = Snapshots()
    loader = DataLoader(RandomBatches(), batch_size=2)
    # Validation twice per epoch: Lightning calls module.train() after each run, mid-epoch.
    trainer = L.Trainer(max_epochs=config.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[snapshots],
                        val_check_interval=0.5, num_sanity_val_steps=0)
    trainer.fit(module, loader, DataLoader(RandomBatches(4), batch_size=2))
    return module, snapshots


def _split(module: SegmentationModule, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """State entries of the encoder (stem + down path) and of the rest."""
    encoder = {k: v for k, v in state.items() if k.startswith(("stem.", "down."))}
    rest = {k: v for k, v in state.items() if k not in encoder}
    return encoder, rest


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unet_encoder_is_its_contracting_path():
    model = build_model("unet", 3, 2, **TINY_UNET)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    expected = {id(p) for name, p in model.named_parameters() if name.startswith(("stem.", "down."))}
    assert encoder_ids == expected and encoder_ids
    # The property must not register a second path to the same weights.
    assert not any(key.startswith("encoder.") for key in model.state_dict())


@pytest.mark.slow
def test_frozen_encoder_and_its_batchnorm_statistics_stay_fixed_then_train():
    config = TrainConfig(data="d", epochs=3, freeze_encoder_epochs=2, lr=0.01, scheduler="none",
                         early_stopping=0, monitor="val_loss")
    module, snapshots = _fit(config)
    start, epoch0, epoch1, epoch2 = snapshots.states
    enc_start, rest_start = _split(module, start)
    for frozen_state in (epoch0, epoch1):
        encoder, rest = _split(module, frozen_state)
        # Weights and BatchNorm running statistics (and batch counters) all unchanged while frozen.
        assert _equal(encoder, enc_start)
        assert any(k.endswith("running_mean") for k in encoder)
        assert not _equal(rest, rest_start)
    enc_final, _ = _split(module, epoch2)
    changed = [k for k in enc_final if not torch.equal(enc_final[k], enc_start[k])]
    assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    assert snapshots.requires_grad == [False, False, True]
    assert all(layer.training for layer in module.encoder.modules()) or not module.training


def test_without_freezing_the_encoder_trains_from_the_first_epoch():
    config = TrainConfig(data="d", epochs=1, lr=0.01, scheduler="none", early_stopping=0, monitor="val_loss")
    module, snapshots = _fit(config)
    enc_start, _ = _split(module, snapshots.states[0])
    enc_after, _ = _split(module, snapshots.states[1])
    assert not _equal(enc_start, enc_after)


@pytest.mark.parametrize("options, encoder_lr", [
    ({"lr": 0.01}, 0.01),
    ({"lr": 0.01, "freeze_encoder_epochs": 2}, 0.001),
    ({"lr": 0.01, "freeze_encoder_epochs": 2, "encoder_lr": 0.0005}, 0.0005),
    ({"lr": 0.01, "encoder_lr": 0.002}, 0.002),
])
def test_encoder_parameter_group_gets_its_own_learning_rate(options, encoder_lr):
    config = TrainConfig(data="d", scheduler="cosine", epochs=10, **options)
    model = build_model("unet", 3, 2, **TINY_UNET)
    module = SegmentationModule(model, config, 2)
    module.set_encoder_frozen(True)  # frozen parameters still belong to the optimizer
    optimizer = module.configure_optimizers()["optimizer"]
    decoder, encoder = optimizer.param_groups
    assert decoder["lr"] == 0.01 and encoder["lr"] == pytest.approx(encoder_lr)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(encoder["params"]) + len(decoder["params"]) == len(list(model.parameters()))


def test_freezing_a_model_without_encoder_is_a_clear_error(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    with pytest.raises(ConfigError, match="has no encoder"):
        masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2,
                        model="fcn-lite", freeze_encoder_epochs=1, out=str(tmp_path / "run"), quiet=True)


@pytest.mark.parametrize("model", ["unet", "fcn-lite"])
def test_frozen_stages_without_a_pretrained_encoder_is_a_clear_error(model, tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    with pytest.raises(ConfigError, match="frozen_stages needs one of masksmith's pretrained encoders"):
        masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2, model=model,
                        frozen_stages=1, out=str(tmp_path / "run"), quiet=True)


@pytest.mark.slow
def test_train_with_a_frozen_start_runs_and_records_the_schedule(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=2, batch_size=2,
                             model_options=TINY_UNET, freeze_encoder_epochs=1, encoder_lr=0.0003,
                             out=str(tmp_path / "run"), quiet=True)
    assert result.epochs_run == 2
    text = (result.run_dir / "config.yaml").read_text()
    assert "freeze_encoder_epochs: 1" in text and "encoder_lr: 0.0003" in text
    # The written config is a valid config again (YAML round trip).
    assert masksmith.config.resolve_config(result.run_dir / "config.yaml").freeze_encoder_epochs == 1


# --- local weights files for built-in models ----------------------------------------------------------

def test_whole_model_weights_file_is_loaded_exactly(tmp_path):
    torch.manual_seed(1)
    source = build_model("unet", 3, 2, **TINY_UNET).eval()
    path = tmp_path / "unet.safetensors"
    # A Lightning-style "network." prefix is stripped on loading.
    save_file({f"network.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(2)
    target = build_model("unet", 3, 2, **TINY_UNET).eval()
    report = load_weights(target, path)
    assert report.part == "model" and report.clean
    assert _equal(source.state_dict(), target.state_dict())
    image = torch.randn(1, 3, 16, 16)
    assert torch.equal(source(image), target(image))


def test_pth_encoder_weights_load_into_the_encoder_only(tmp_path):
    torch.manual_seed(1)
    source = build_model("unet", 3, 2, **TINY_UNET)
    path = tmp_path / "encoder.pth"
    torch.save({"state_dict": source.encoder.state_dict()}, path)
    torch.manual_seed(2)
    target = build_model("unet", 3, 2, **TINY_UNET)
    decoder_before = copy.deepcopy(target.head.state_dict())
    report = load_weights(target, path)
    assert report.part == "encoder" and report.clean
    assert _equal(source.encoder.state_dict(), target.encoder.state_dict())
    assert _equal(decoder_before, target.head.state_dict())


def test_mismatched_weights_are_reported_by_key(tmp_path):
    state = {k: v.clone() for k, v in build_model("unet", 3, 2, **TINY_UNET).state_dict().items()}
    state["head.weight"] = torch.zeros(5, 4, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    target = build_model("unet", 3, 2, **TINY_UNET)
    with pytest.raises(ConfigError) as error:
        load_weights(target, path, part="model")
    message = str(error.value)
    assert "head.bias" in message and "extra.weight" in message and "head.weight" in message
    report = load_weights(target, path, part="model", strict=False)
    assert report.missing == ["head.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(target.stem[0].weight, state["stem.0.weight"])


def test_a_pickle_that_is_not_plain_tensors_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": RandomBatches(1)}, path)
    with pytest.raises(ConfigError, match="not a readable weights file"):
        load_weights(build_model("unet", 3, 2, **TINY_UNET), path)


def test_train_from_a_weights_file_and_hub_names_need_smp(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    torch.manual_seed(3)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("unet", 3, 3, **TINY_UNET).state_dict().items()},
              str(path))
    common = dict(classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2, model_options=TINY_UNET,
                  quiet=True)
    result = masksmith.train(data, weights=str(path), out=str(tmp_path / "run"), **common)
    assert "weights:" in (result.run_dir / "train.log").read_text()
    with pytest.raises(ConfigError, match="not a local file"):
        masksmith.train(data, weights="imagenet", out=str(tmp_path / "run2"), **common)
    with pytest.raises(ConfigError, match="takes no encoder"):
        masksmith.train(data, encoder="resnet18", out=str(tmp_path / "run3"), **common)


def test_freezing_has_one_owner_in_models():
    # models/freeze.py decides what a frozen encoder is; training, the budget's timer and DDP call it.
    import ast
    from pathlib import Path

    src = Path(masksmith.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        where = str(path.relative_to(src))
        if where.startswith("models/"):
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in ("set_frozen", "stage_modules", "requires_grad_"):
                    found.append(f"{where}:{node.lineno}: {name}")
        found += [f"{where}: freeze condition" for line in text.splitlines()
                  if "freeze_encoder_epochs" in line and "frozen_stages" in line and " or " in line]
    assert found == []


def test_freeze_encoder_freezes_the_encoder_and_keeps_its_stages_frozen():
    from masksmith.models.freeze import freeze_encoder, freezes_encoder, frozen_stage_layers

    network = build_model("unet", 3, 2, encoder="mobilenet_v2")
    stages = frozen_stage_layers(network, 2)
    assert stages and all(any(layer is module for module in network.encoder.modules()) for layer in stages)
    staged = {id(p) for layer in stages for p in layer.parameters()}
    freeze_encoder(network, True, stages=2)
    assert not any(p.requires_grad for p in network.encoder.parameters())
    assert all(p.requires_grad for name, p in network.named_parameters() if not name.startswith("encoder."))
    freeze_encoder(network, False, stages=2)
    assert all(p.requires_grad == (id(p) not in staged) for p in network.encoder.parameters())
    assert not any(m.training for layer in stages for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert frozen_stage_layers(build_model("unet", 3, 2, **TINY_UNET), 2) == []  # no pretrained encoder: no stages
    assert [freezes_encoder(e, s) for e, s in ((0, 0), (2, 0), (0, 3))] == [False, True, True]
