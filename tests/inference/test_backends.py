"""Inference backends: one interface over PyTorch and onnxruntime, opened by file type, no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from masksmith.bundle import BundleMeta, load_network, save_bundle
from masksmith.errors import MasksmithError
from masksmith.inference.backends import (
    Backend,
    OnnxBackend,
    TorchBackend,
    fold_batchnorm,
    network_to_onnx,
    open_backend,
)
from masksmith.inference.predictor import Predictor
from masksmith.models import build_model
from masksmith.models.base import input_multiple

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "masksmith"


def _meta(**changes) -> BundleMeta:
    values = dict(model="unet", model_options={"depth": 2, "base_channels": 8}, in_channels=3, out_channels=3,
                  class_names=["bg", "a", "b"], colors=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], size=32,
                  resize="random_crop", mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"})
    return BundleMeta(**{**values, **changes})


def _network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = build_model("unet", 3, 3, depth=2, base_channels=8).eval()
    for module in network.modules():
        # Non-trivial running statistics, so folding BatchNorm has something to fold.
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    return network


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return save_bundle(tmp_path / "model.msb", _network().state_dict(), _meta())


def _imports(module: str) -> set[str]:
    """masksmith modules `module` imports anywhere in its source (function-level imports included)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("masksmith.")}


@pytest.mark.slow
def test_export_and_predict_do_not_import_each_other():
    # Regression: export imported predict (Predictor.load) and predict imported export (OnnxBackend).
    assert not {"masksmith.inference.predictor"} & _imports("masksmith.inference.export")
    assert not {"masksmith.inference.export"} & _imports("masksmith.inference.predictor")
    for low in ("masksmith.inference.backends", "masksmith.bundle", "masksmith.models.base"):
        upper = {"masksmith.inference.predictor", "masksmith.inference.export", "masksmith.serve.model"}
        assert not upper & _imports(low), low
    # And in a fresh interpreter: loading export (and backends) brings no Predictor along.
    code = ("import sys, masksmith.inference.export, masksmith.inference.backends; "
            "assert 'masksmith.inference.predictor' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_bundles_network_loads_without_a_predictor(bundle):
    meta, network = load_network(bundle)
    assert meta == _meta() and not network.training
    image = torch.randn(1, 3, 37, 45)
    with torch.inference_mode():
        expected = _network()(image)
        got = network(image)
    assert torch.equal(got, expected)


class Plain(torch.nn.Module):
    """A network that declares no input multiple (and pads nothing): it takes any size as it is."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.slow
def test_the_input_multiple_is_the_same_everywhere():
    pytest.importorskip("onnxruntime")
    # Regression: the ONNX export fell back to 32 for a network without `multiple`, the Predictor to 1, so
    # the ONNX backend padded inputs the PyTorch network never padded and tiles were aligned differently.
    for network, wanted in ((Plain().eval(), 1), (_network(), 4)):
        meta = _meta(model_options={}, size=16) if wanted == 1 else _meta()
        onnx = OnnxBackend(network_to_onnx(network, meta))
        torch_backend = TorchBackend(network, optimize=False)
        assert input_multiple(network) == wanted
        assert onnx.multiple == torch_backend.multiple == wanted
        assert Predictor(network, meta).multiple == Predictor(onnx, meta).multiple == wanted
        image = torch.randn(1, 3, 21, 30)  # no multiple of 4 (nor of 32)
        expected = torch_backend(image)
        assert float((onnx(image) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


@pytest.mark.slow
def test_open_backend_picks_by_file_type(bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    torch_backend = open_backend(bundle)
    assert isinstance(torch_backend, TorchBackend) and torch_backend.meta == _meta()
    onnx = open_backend(bundle, kind="onnx", threads=1)
    # Regression: a bundle run on the onnx backend ignored the thread count asked for (serve --threads).
    assert isinstance(onnx, OnnxBackend) and onnx.threads == 1
    assert onnx.session.get_session_options().intra_op_num_threads == 1
    path = tmp_path / "model.onnx"
    path.write_bytes(network_to_onnx(load_network(bundle)[1], _meta()))
    from_file = open_backend(path)
    assert isinstance(from_file, OnnxBackend) and from_file.meta == _meta() and from_file.multiple == 4
    image = torch.randn(2, 3, 24, 36)
    backends: list[Backend] = [torch_backend, onnx, from_file]
    logits = [backend(image) for backend in backends]
    for other in logits[1:]:
        assert float((other - logits[0]).abs().max()) <= 1e-4 * float(logits[0].abs().max())
    with pytest.raises(MasksmithError, match="onnx backend only"):
        open_backend(path, kind="torch")
    with pytest.raises(MasksmithError, match="backend must be one of torch, onnx"):
        open_backend(bundle, kind="tflite")


def test_folded_batchnorm_gives_the_same_logits_and_leaves_the_original_alone():
    network = _network()
    folded = fold_batchnorm(network)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    image = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        expected = network(image)
    got = TorchBackend(network, optimize=True)(image)
    assert float((got - expected).abs().max()) < 1e-5 * max(1.0, float(expected.abs().max()))
    with torch.no_grad():
        assert float((folded(image) - expected).abs().max()) < 1e-5 * max(1.0, float(expected.abs().max()))


def test_torch_backend_sets_the_thread_count_it_reports():
    before = torch.get_num_threads()
    try:
        backend = TorchBackend(_network(), threads=1)
        assert backend.threads == torch.get_num_threads() == 1
        assert np.isfinite(backend(torch.randn(1, 3, 16, 16)).numpy()).all()
    finally:
        torch.set_num_threads(before)


def test_cuda_without_a_gpu_is_a_one_line_error(bundle, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    for device in ("cuda", "cuda:0"):
        with pytest.raises(MasksmithError, match=rf"^device {device}: no CUDA GPU found") as error:
            open_backend(bundle, device=device)
        assert "\n" not in str(error.value)
    assert open_backend(bundle, device="auto").device.type == "cpu"
