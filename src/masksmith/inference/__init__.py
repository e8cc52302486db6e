"""Inference: the Predictor (tiles, TTA) over a backend (Torch, ONNX Runtime), its files (inputs, manifests,
writing), several models as one (ensemble), Ray Data batch prediction and ONNX export."""
