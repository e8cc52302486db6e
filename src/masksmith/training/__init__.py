"""Training as stages: prepare data → plan → build network → fit → write the bundle (`masksmith.train`)."""

from masksmith.training.outputs import TrainResult
from masksmith.training.run import next_run_dir, train

__all__ = ["TrainResult", "next_run_dir", "train"]
