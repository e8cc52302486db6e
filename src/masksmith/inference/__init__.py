"""Inference: what running a trained model on images takes and costs."""
