"""masksmith: image segmentation with deep learning, from images + masks to a deployable model.

    import masksmith
    masksmith.check("data/membrane", foreground=0)               # a CheckResult (report + files)
    run = masksmith.train("data/membrane", foreground=0, epochs=20)
    scores = masksmith.evaluate(run.bundle, "data/membrane")      # an EvaluationResult (scores.miou)
    mask = masksmith.load(run.bundle).predict("image.png")
    masksmith.export(run.bundle)                                   # an ExportReport (model.onnx)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from masksmith.core.version import __version__

__all__ = ["train", "evaluate", "load", "check", "export", "convert_labelme", "convert_coco", "TrainConfig",
           "__version__"]

if TYPE_CHECKING:
    from masksmith.config import TrainConfig
    from masksmith.data.check.step import check
    from masksmith.data.convert import convert_coco, convert_labelme
    from masksmith.evaluation.scoring import evaluate
    from masksmith.inference.export import export
    from masksmith.inference.predictor import Predictor
    from masksmith.training import train

# Imported on first use so `import masksmith` stays fast (torch and Lightning load lazily).
_LAZY = {"train": "masksmith.training", "evaluate": "masksmith.evaluation.scoring",
         "check": "masksmith.data.check.step", "export": "masksmith.inference.export",
         "convert_labelme": "masksmith.data.convert", "convert_coco": "masksmith.data.convert",
         "TrainConfig": "masksmith.config"}


def load(path: str, device: str = "auto") -> "Predictor":
    """Load a model bundle for prediction: `masksmith.load("runs/train/model.msb").predict(image)`."""
    from masksmith.inference.predictor import Predictor

    return Predictor.load(path, device=device)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'masksmith' has no attribute {name!r}")
