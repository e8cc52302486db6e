"""Inference backends: the PyTorch network or an onnxruntime session behind one interface.

A backend maps a normalized N x C x H x W float batch (any H, W) to N x K x H x W float logits on the
CPU. Pre- and post-processing, tiling and TTA are the Predictor's (masksmith.inference.predictor); the server,
export verification and batch engines use backends directly. `open_backend` picks one by file type:
`.onnx` runs on onnxruntime, anything else is a masksmith bundle run by PyTorch (or, asked for,
exported to ONNX in memory).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch import nn

from masksmith.bundle import METADATA_KEY, BundleMeta, OnnxHeader, load_network, onnx_header, parse_onnx_header
from masksmith.core.cpu_memory import keep_freed_memory
from masksmith.core.devices import torch_device
from masksmith.errors import BundleError, MasksmithError
from masksmith.models.base import input_multiple, pad_to_multiple

BACKENDS = ("torch", "onnx")
# Opset 18 is the lowest the torch.export-based exporter implements natively (17 needs a conversion pass).
DEFAULT_OPSET = 18


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads share one core's arithmetic units)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        physical_id = core_id = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical_id = value.strip()
            elif key == "core id":
                core_id = value.strip()
                cores.add((physical_id, core_id))
    except OSError:
        pass
    # Containers often see every host core in cpuinfo but may run on fewer: take the smaller.
    return max(1, min(len(cores), available) if cores else available)


class Backend(Protocol):
    """Maps a normalized N x C x H x W float batch (any H, W) to N x K x H x W float logits on the CPU."""

    name: str  # 'torch' or 'onnx'
    multiple: int  # the multiple the input sides are padded to (models.base.input_multiple)
    threads: int  # compute threads it runs with
    meta: BundleMeta | None  # the bundle's metadata, when opened from a file

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """A copy of `network` (eval mode) with every Conv→BatchNorm pair inside a Sequential merged into one conv.

    Inference-only: the BatchNorm becomes Identity, so the copy computes the same function with
    one layer fewer per pair; the original module is left untouched for training.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, layer), (next_name, follower) in zip(children, children[1:]):
            # Exact types only: a subclass (quantized, custom) may not compute a plain convolution.
            if type(follower) is nn.BatchNorm2d and follower.track_running_stats and \
                    type(layer) in (nn.Conv2d, nn.ConvTranspose2d):
                fused = fuse_conv_bn_eval(layer, follower, transpose=isinstance(layer, nn.ConvTranspose2d))
                setattr(module, name, fused)
                setattr(module, next_name, nn.Identity())
    return folded


class TorchBackend:
    """The PyTorch network, optionally optimized for inference (BN folded, channels_last, threads)."""

    name = "torch"

    def __init__(self, network: nn.Module, device: str | torch.device = "cpu", optimize: bool = True, *,
                 threads: int | None = None, meta: BundleMeta | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MasksmithError(f"device {device}: no CUDA GPU found (torch.cuda.is_available() is False); "
                                 "use --device cpu or auto")
        self.optimize = optimize
        self.meta = meta
        # Read from the network as given: folding copies the module, and the multiple is the network's contract.
        self.multiple = input_multiple(network)
        network = network.eval()
        if optimize:
            network = fold_batchnorm(network)
        if self.device.type == "cpu":
            keep_freed_memory()  # a batch's feature maps would otherwise be unmapped and faulted in anew per layer
        if self.device.type == "cpu" and (optimize or threads):
            # torch's thread count is per process: this sets it for every network, which is what a
            # process serving one model wants. One per physical core: hyper-threads share vector units.
            torch.set_num_threads(threads or physical_cores())
        self.threads = torch.get_num_threads()
        self.network = network.to(self.device)
        if optimize:
            # NHWC lets oneDNN/cuDNN pick their fastest convolution kernels without layout reorders.
            self.network = self.network.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a normalized batch."""
        batch = batch.to(self.device)
        if self.optimize:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.network(batch).float().contiguous().cpu()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and version-conversion warnings (the report says what matters)."""
    # The root logger too: onnxruntime.quantization warns through it.
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def set_onnx_header(model: object, header: str) -> None:
    """Replace the masksmith entry of an onnx.ModelProto's metadata_props."""
    props = model.metadata_props  # type: ignore[attr-defined]
    kept = [prop for prop in props if prop.key != METADATA_KEY]
    del props[:]
    props.extend(kept)
    entry = props.add()
    entry.key, entry.value = METADATA_KEY, header


def network_to_onnx(network: nn.Module, meta: BundleMeta, *, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialized fp32 ONNX model (metadata embedded) with dynamic batch, height and width."""
    from torch.export import Dim

    network = network.eval()
    multiple = input_multiple(network)
    # At least 2 blocks per side (and 2 images): the exporter would freeze a dimension traced at size 1.
    side = max(2 * multiple, -(-max(meta.input_shape) // multiple) * multiple)
    sample = torch.randn(2, meta.in_channels, side, side)
    # H and W declared as multiples of the downsampling factor: the network's own padding then
    # provably does nothing and is traced away, instead of being frozen at the sample's size.
    shapes = {"x": {0: Dim("batch", min=1, max=4096),
                    2: multiple * Dim("height_blocks", min=1, max=65536 // multiple),
                    3: multiple * Dim("width_blocks", min=1, max=65536 // multiple)}}
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(network, (sample,), None, dynamo=True, opset_version=opset,
                                        input_names=["image"], output_names=["logits"],
                                        dynamic_shapes=shapes, verbose=False)
    except Exception as error:  # the exporter raises many types; the user needs the model and the reason
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MasksmithError(f"model {meta.model!r} could not be exported to ONNX ({reason})") from None
    model = program.model_proto
    set_onnx_header(model, onnx_header(meta, multiple, "fp32", opset))
    return model.SerializeToString()


class OnnxBackend:
    """An onnxruntime CPU session producing the same logits as the PyTorch network."""

    name = "onnx"

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, source: str | None = None):
        import onnxruntime as ort

        if isinstance(model, (str, Path)):
            path = Path(model)
            source = source or str(path)
            if not path.is_file():
                raise BundleError(f"{path}: no such ONNX model")
            if path.stat().st_size == 0:
                raise BundleError(f"{path}: empty file, not an ONNX model")
            model = path.read_bytes()
        source = source or "ONNX model"
        options = ort.SessionOptions()
        # One thread per physical core: hyper-threads only contend for the same vector units.
        self.threads = threads or physical_cores()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for protobuf and graph errors
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise BundleError(f"{source}: not a readable ONNX model ({reason})") from None
        self.source = source
        self.header: OnnxHeader = parse_onnx_header(
            self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), source)
        self.meta: BundleMeta = self.header.meta
        self.multiple = self.header.input_multiple
        self.precision = self.header.precision
        self.input_name = self.session.get_inputs()[0].name
        self._check_channels()

    @classmethod
    def from_network(cls, network: nn.Module, meta: BundleMeta, *, threads: int | None = None,
                     source: str | None = None) -> "OnnxBackend":
        """A session on `network` exported to fp32 ONNX in memory."""
        return cls(network_to_onnx(network.eval(), meta), threads=threads, source=source)

    def _check_channels(self) -> None:
        """The graph's (static) channel counts must be the ones the metadata promises."""
        graph_in, graph_out = self.session.get_inputs(), self.session.get_outputs()
        for role, values, wanted in (("input", graph_in, self.meta.in_channels),
                                     ("output", graph_out, self.meta.out_channels)):
            shape = values[0].shape if values else []
            if len(values) != 1 or len(shape) != 4:
                raise BundleError(f"{self.source}: expected one 4-D (N x C x H x W) {role}, "
                                  f"got {len(values)} with shape {shape}")
            if isinstance(shape[1], int) and shape[1] != wanted:
                raise BundleError(f"{self.source}: the graph's {role} has {shape[1]} channels but its masksmith "
                                  f"metadata says {wanted}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N x K x H x W) for a normalized batch of any height and width."""
        height, width = batch.shape[-2:]
        # The same padding the PyTorch network applies inside its forward.
        padded = pad_to_multiple(batch.detach().float().cpu(), self.multiple)
        feed = np.ascontiguousarray(padded.numpy(), dtype=np.float32)
        logits = self.session.run(None, {self.input_name: feed})[0]
        return torch.from_numpy(logits[:, :, :height, :width].copy())


def read_onnx_meta(path: str | Path) -> BundleMeta:
    """The BundleMeta embedded in a masksmith ONNX file (the graph is checked against it too)."""
    return OnnxBackend(path).meta


def open_backend(source: str | Path | nn.Module, *, kind: str | None = None, device: str = "cpu",
                 optimize: bool = True, threads: int | None = None, meta: BundleMeta | None = None) -> Backend:
    """A backend for a network, an `.onnx` file or a bundle; `kind` 'torch'/'onnx' (default: by file type).

    `kind="onnx"` on a bundle (or a network with its `meta`) exports it to ONNX in memory first.
    `device="auto"` takes CUDA when there is one (PyTorch only: the ONNX backend runs on the CPU).
    """
    if kind is not None and kind not in BACKENDS:
        raise MasksmithError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if device == "auto":
        device = torch_device(device)
    if isinstance(source, nn.Module):
        network, label = source, "network"
    else:
        path = Path(source)
        if path.suffix.lower() == ".onnx":
            if kind == "torch":
                raise MasksmithError(f"{path}: an ONNX model runs on the onnx backend only; "
                                     "give the .msb bundle for --backend torch")
            return OnnxBackend(path, threads=threads)
        meta, network = load_network(path)  # shapes checked before the network is allocated
        label = f"{path} (exported)"
    if kind == "onnx":
        if meta is None:
            raise MasksmithError("an ONNX backend for a network needs its BundleMeta (meta=...)")
        return OnnxBackend.from_network(network, meta, threads=threads, source=label)
    return TorchBackend(network, device, optimize=optimize, threads=threads, meta=meta)
