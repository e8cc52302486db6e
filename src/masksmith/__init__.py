"""masksmith: image segmentation with deep learning, from images + masks to a deployable model.

    import masksmith
    run = masksmith.train("data/membrane", foreground=0, epochs=20)
    metrics = masksmith.evaluate(run.bundle, "data/membrane")
    mask = masksmith.load(run.bundle).predict("image.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "load", "__version__"]

if TYPE_CHECKING:
    from masksmith.evaluation import evaluate
    from masksmith.predict import Predictor
    from masksmith.training import train


def load(path: str, device: str = "auto") -> "Predictor":
    """Load a model bundle for prediction: `masksmith.load("runs/train/model.msb").predict(image)`."""
    from masksmith.predict import Predictor

    return Predictor.load(path, device=device)


def __getattr__(name: str) -> Any:
    # Imported on first use so `import masksmith` stays fast (torch and Lightning load lazily).
    if name == "train":
        from masksmith.training import train

        return train
    if name == "evaluate":
        from masksmith.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'masksmith' has no attribute {name!r}")
