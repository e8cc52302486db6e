"""masksmith: image segmentation with deep learning, from images + masks to a deployable model."""

__version__ = "0.1.0"
