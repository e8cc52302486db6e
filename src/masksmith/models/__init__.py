"""Segmentation models behind one factory: `build_model("unet", in_channels=3, out_channels=2)`."""

from masksmith.models.heads import best_class, logits_to_classes, logits_to_probabilities
from masksmith.models.registry import MODELS, build_model, model_options

# Imported for their side effect: each module registers its architecture in MODELS.
from masksmith.models import fcn, smp, unet  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "build_model", "model_options", "best_class", "logits_to_classes", "logits_to_probabilities"]
