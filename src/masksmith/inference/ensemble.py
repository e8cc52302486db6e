"""Ensembles: several models (bundles, ONNX files, the folds of a cross-validation run) predicting as one,
their class probabilities averaged at each image's original size (as nnU-Net averages its folds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from masksmith.bundle import BundleMeta
from masksmith.errors import BundleError, ConfigError, MasksmithError
from masksmith.inference.predictor import ImageInput, Predictor

MODEL_SUFFIXES = (".msb", ".onnx")
CV_MARKERS = ("cv_summary.json", "splits.json")  # what makes a folder a cross-validation run
# What members must share to be averaged: the same classes in the same order, read from the same input.
AGREEMENT = (("class_names", "classes"), ("in_channels", "input channels"), ("mask_encoding", "mask encoding"),
             ("ignore_index", "ignore value"))


def is_cv_run(path: str | Path) -> bool:
    """True for a cross-validation run folder (RUN/splits.json or RUN/cv_summary.json)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in CV_MARKERS)


def looks_like_model(argument: str | Path) -> bool:
    """A model file (.msb, .onnx) or a cross-validation run folder: how predict tells models from inputs."""
    path = Path(argument)
    return (path.suffix.lower() in MODEL_SUFFIXES and path.is_file()) or is_cv_run(path)


def split_models(first: str | Path, rest: Sequence[str]) -> tuple[list[str], list[str]]:
    """(models, inputs) of `predict MODEL [MODEL...] INPUT...`: the first argument is a model, and so is each
    following one while it is a model file or a CV run folder; the rest are inputs."""
    models, rest = [str(first)], list(rest)
    while rest and looks_like_model(rest[0]):
        models.append(rest.pop(0))
    return models, rest


def cv_members(run_dir: Path) -> list[Path]:
    """The fold bundles of a cross-validation run folder, in fold order; BundleError naming an unfinished fold."""
    for marker in CV_MARKERS:
        try:
            record = json.loads((run_dir / marker).read_text(encoding="utf-8"))
            count = int(record["folds"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if 2 <= count <= 100:
            break
    else:
        raise BundleError(f"{run_dir}: a cross-validation folder whose {' and '.join(CV_MARKERS)} "
                          "do not say how many folds it has")
    members = [run_dir / f"fold_{fold}" / "model.msb" for fold in range(count)]
    for bundle in members:
        if not bundle.is_file():
            raise BundleError(f"{bundle}: missing: that fold has not finished; continue the run with "
                              f"masksmith train --resume {run_dir}")
    return members


def expand_models(paths: Sequence[str | Path]) -> list[Path]:
    """Model files as given, and each cross-validation run folder as its fold bundles."""
    members: list[Path] = []
    for item in paths:
        path = Path(item)
        if is_cv_run(path):
            members += cv_members(path)
        elif path.is_dir() and (path / "model.msb").is_file():
            members.append(path / "model.msb")  # a plain run folder: its bundle
        elif path.is_dir():
            raise ConfigError(f"{path}: a folder that is neither a run (model.msb) nor a cross-validation run "
                              f"({' or '.join(CV_MARKERS)})")
        else:
            members.append(path)
    return members


def check_members(metas: Sequence[BundleMeta], names: Sequence[str]) -> None:
    """ConfigError naming the first member whose classes, channels, encoding or ignore value differ from the first's."""
    first = metas[0]
    for meta, name in zip(metas[1:], names[1:]):
        for field, label in AGREEMENT:
            if getattr(meta, field) != getattr(first, field):
                raise ConfigError(f"{name}: its {label} ({getattr(meta, field)}) differ from those of {names[0]} "
                                  f"({getattr(first, field)}); an ensemble averages models of the same classes")


def shared_split(members: Sequence[Predictor], names: Sequence[str]) -> dict[str, Any]:
    """The ensemble's recorded split: the members' random validation split when they all recorded the same one
    (models trained side by side on one seeded split), so that `evaluate --split val` scores the images none of
    them trained on; otherwise no split of its own (a fold ensemble's members each held out other images)."""
    splits = [member.meta.split for member in members]
    if splits[0].get("kind") == "random" and all(split == splits[0] for split in splits[1:]):
        return dict(splits[0])
    return {"kind": "ensemble", "members": list(names)}


class EnsemblePredictor:
    """Several Predictors as one: the Predictor API (to_array, probabilities, decide, predict, meta, colors)
    with each image's class probabilities averaged over the members."""

    def __init__(self, members: Sequence[Predictor], names: Sequence[str] | None = None):
        if len(members) < 1:
            raise MasksmithError("an ensemble needs at least one model")
        self.names = [str(name) for name in names] if names is not None else [f"model {i}" for i in range(len(members))]
        if len(self.names) != len(members):
            raise MasksmithError(f"{len(self.names)} names for {len(members)} ensemble members")
        check_members([member.meta for member in members], self.names)
        self.members = list(members)
        first = self.members[0]
        self.meta: BundleMeta = first.meta.model_copy(update={"split": shared_split(members, self.names)})
        self.colors = first.colors
        self.device = first.device
        self.network = None
        self.tta = first.tta

    @property
    def tta_passes(self) -> int:
        """Forward passes per image over all members (each with its own TTA views)."""
        return sum(member.tta_passes for member in self.members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def class_names(self) -> list[str]:
        """Class names, index order (shared by every member)."""
        return self.meta.class_names

    @property
    def backend_name(self) -> str:
        """'ensemble of N torch' (or onnx, or both)."""
        kinds = sorted({member.backend_name for member in self.members})
        return f"ensemble of {len(self.members)} {'+'.join(kinds)}"

    def to_array(self, image: ImageInput) -> np.ndarray:
        """Any accepted input as an HxWxC uint8 array (members share the channel count)."""
        return self.members[0].to_array(image)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Class probabilities (K x H x W) per image at its own size: the members' mean."""
        total: list[torch.Tensor] | None = None
        for member in self.members:
            # Each member preprocesses for itself (its size, normalization, tiles), so members may differ there.
            probabilities = member.probabilities(images)
            total = probabilities if total is None else [a + b for a, b in zip(total, probabilities)]
        assert total is not None
        return [p / len(self.members) for p in total]

    def decide(self, probabilities: torch.Tensor, threshold: float | None = None) -> np.ndarray:
        """Class-index mask from probabilities: the first member's threshold for binary (or `threshold`), argmax otherwise."""
        return self.members[0].decide(probabilities, threshold)

    def predict(self, image: ImageInput, threshold: float | None = None) -> np.ndarray:
        """Predict one image: an HxW uint8 class-index mask at its original size."""
        return self.predict_batch([image], threshold)[0]

    def predict_batch(self, images: Sequence[ImageInput], threshold: float | None = None) -> list[np.ndarray]:
        """Predict several images."""
        arrays = [self.to_array(image) for image in images]
        return [self.decide(p, threshold) for p in self.probabilities(arrays)]


def load_models(paths: str | Path | Sequence[str | Path], device: str = "auto",
                **options: Any) -> Predictor | EnsemblePredictor:
    """One model as a Predictor; several (or a CV run folder) as an EnsemblePredictor."""
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not given:
        raise MasksmithError("no model given")
    members = expand_models(given)
    if len(members) == 1:
        return Predictor.load(members[0], device=device, **options)
    return EnsemblePredictor([Predictor.load(path, device=device, **options) for path in members],
                             [str(path) for path in members])


def models_home(paths: str | Path | Sequence[str | Path]) -> Path:
    """Where outputs about these models go by default: a CV run folder itself, else the first model's folder."""
    first = Path(paths if isinstance(paths, (str, Path)) else paths[0])
    return first if first.is_dir() else first.parent
