"""ONNX export (fp32 or static int8) of a model bundle, verified against PyTorch before it is written.

The exported graph takes a normalized N x C x H x W float batch whose H and W are multiples of the
network's input multiple (recorded as `input_multiple`); backends.OnnxBackend pads any other size the
same way the PyTorch network does and crops the logits back, so both backends give the same logits.
The bundle's metadata travels inside the ONNX file (metadata_props key "masksmith", see bundle.py).
Uses bundle and backends, never predict.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from masksmith.bundle import BundleMeta, OnnxHeader, load_network, onnx_header
from masksmith.core.fileio import atomic_path, refuse_overwrite, require_writable
from masksmith.errors import MasksmithError
from masksmith.inference.backends import DEFAULT_OPSET, OnnxBackend, network_to_onnx, quiet_exporter, set_onnx_header
from masksmith.models.base import input_multiple, pad_to_multiple
from masksmith.models.heads import logits_to_classes

# Logits of an fp32 export must match PyTorch to this fraction of the largest logit magnitude.
FP32_TOLERANCE = 1e-4
# An int8 export whose masks agree with PyTorch's on at least this share of its validation split's pixels is
# said to in serve's model card; below it the card says it changes masks.
INT8_AGREEMENT_CLAIM = 0.995
# Validation images an int8 export is measured on (each is one forward pass of both models).
VALIDATION_LIMIT = 256


@dataclass
class ExportCheck:
    """One verification input: its shape and how far ONNX logits are from PyTorch's."""

    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    agreement: float  # share of pixels with the same predicted class
    real: bool = False  # a real (calibration) image rather than random noise


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how closely the ONNX model reproduces PyTorch."""

    path: Path
    precision: str
    opset: int
    input_multiple: int
    size_bytes: int = 0
    seconds: float = 0.0
    calibration_images: int = 0
    checks: list[ExportCheck] = field(default_factory=list)
    validation_agreement: float | None = None  # int8: share of the validation split's pixels PyTorch agrees on
    validation_images: int = 0

    @property
    def max_abs_diff(self) -> float:
        """Largest absolute logit difference over all checks."""
        return max((check.max_abs for check in self.checks), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        """Largest difference relative to the largest reference logit magnitude."""
        return max((check.max_rel for check in self.checks), default=0.0)

    @property
    def agreement(self) -> float:
        """Smallest share of pixels whose class agrees with PyTorch (real images only, when there are any)."""
        real = [check.agreement for check in self.checks if check.real]
        return min(real or [check.agreement for check in self.checks], default=1.0)

    def summary(self) -> str:
        """One line for the CLI."""
        line = (f"{self.path} ({self.precision}, opset {self.opset}, {self.size_bytes / 1e6:.2f} MB): "
                f"max |logit diff| vs PyTorch {self.max_abs_diff:.2e} (relative {self.max_rel_diff:.2e}), "
                f"{100 * self.agreement:.2f}% pixels agree")
        if self.validation_agreement is not None:
            line += (f"; on the validation split ({self.validation_images} images) "
                     f"{100 * self.validation_agreement:.2f}% of mask pixels agree with PyTorch's")
        return line


def calibration_batches(meta: BundleMeta, inputs: Sequence[str | Path], limit: int = 32) -> list[torch.Tensor]:
    """Normalized 1 x C x H x W tensors from real images (the first `limit` that predict would read from `inputs`,
    folders with their subfolders), preprocessed as prediction would see them."""
    from masksmith.data.images import read_image
    from masksmith.data.transforms import preprocess_image
    from masksmith.inference.inputs import expand_inputs
    from masksmith.inference.tiling import auto_tile_limit, network_input_size

    found, _ = expand_inputs(list(inputs))  # entries that cannot be read are left out, as predict skips them
    paths = [item.path for item in found][:limit]
    if not paths:
        raise MasksmithError(f"no calibration images found in {', '.join(map(str, inputs))}")
    batches = []
    for path in paths:
        image = read_image(path, channels=meta.in_channels)
        size = network_input_size(meta)
        if size is not None:
            batches.append(preprocess_image(image, size, meta.mean, meta.std))
            continue
        # Crop-trained models predict images up to the automatic tiling limit whole: calibrate on such views.
        side = auto_tile_limit(meta)
        top, left = max(0, (image.shape[0] - side) // 2), max(0, (image.shape[1] - side) // 2)
        batches.append(preprocess_image(image[top:top + side, left:left + side], None, meta.mean, meta.std))
    return batches


def int8_note(header: OnnxHeader) -> str | None:
    """What an int8 model's masks are worth, in one line (None for fp32): its measured validation agreement."""
    if header.precision != "int8":
        return None
    agreement, images = header.validation_agreement, header.validation_images
    if agreement is None:
        return "int8 model: quantization can change masks; its agreement with PyTorch was not measured (at export, " \
               "no config.yaml beside the bundle led to its training data's validation split)"
    measured = f"{100 * agreement:.2f}% of the validation split's mask pixels ({images} images)"
    if agreement >= INT8_AGREEMENT_CLAIM:
        return f"int8 model: its masks agree with PyTorch's on {measured}, at least {100 * INT8_AGREEMENT_CLAIM:g}%"
    return f"int8 model: its masks agree with PyTorch's on only {measured}, under {100 * INT8_AGREEMENT_CLAIM:g}%"


def validation_images(bundle_path: str | Path, meta: BundleMeta, limit: int = VALIDATION_LIMIT) -> list[Path]:
    """The model's validation images, found through config.yaml beside the bundle (its training data); [] if gone.

    The split is the data's val folder, or the random (or fold) split recorded in the bundle.
    """
    import warnings

    import yaml

    from masksmith.data.discover import discover

    try:
        config = yaml.safe_load((Path(bundle_path).parent / "config.yaml").read_text(encoding="utf-8"))
        data = Path(str(config["data"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # left-out files are the training's business, not the export's
            splits = discover(data, mask_suffix=config.get("mask_suffix"), skip_unpaired=True)
    except (OSError, yaml.YAMLError, KeyError, TypeError, MasksmithError):
        return []
    wanted = set(meta.split.get("val", [])) if meta.split.get("kind") in ("random", "fold") else set()
    if wanted:
        pool = [sample for samples in splits.values() for sample in samples]
        images = [sample.image for sample in pool if sample.name in wanted]
    else:
        images = [sample.image for sample in splits.get("val", [])]
    return sorted(images)[:limit]


def pixel_agreement(network: nn.Module, backend: OnnxBackend, batches: Sequence[torch.Tensor]) -> float:
    """Share of all pixels (every batch weighted by its size) whose class the backend and the network agree on."""
    checks = verify(network, backend, batches)
    pixels = [batch.shape[0] * batch.shape[-2] * batch.shape[-1] for batch in batches]
    return sum(check.agreement * n for check, n in zip(checks, pixels)) / max(1, sum(pixels))


def _head_conv(model: Any) -> str | None:
    """Name of the Conv node producing the graph output (through slices/reshapes), if any."""
    producers = {output: node for node in model.graph.node for output in node.output}
    node = producers.get(model.graph.output[0].name)
    for _ in range(16):
        if node is None:
            return None
        if node.op_type == "Conv":
            return node.name
        node = producers.get(node.input[0]) if node.input else None
    return None


# Operators quantized to int8. Quantizing the pooling, joins and activations too (not only Conv) keeps
# the whole network in uint8 between convolutions, so onnxruntime runs it as one NHWC int8 chain without
# a dequantize/quantize round-trip around every non-conv node (5-20% faster than Conv only, AVX2 CPU).
# Clip is ReLU6, the activation of the EfficientNet-Lite and MobileNetV2 encoders (left out, every one of their
# activations ran between a dequantize/quantize pair).
INT8_OPS = ["Conv", "Relu", "Clip", "MaxPool", "Concat", "DepthToSpace"]


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _is_patch_upsampling(node: Any, initializers: dict[str, Any]) -> bool:
    """A ConvTranspose whose stride equals its square kernel, unpadded, ungrouped, with constant weights."""
    if node.op_type != "ConvTranspose" or node.input[1] not in initializers:
        return False
    attributes = _attributes(node)
    kernel = list(attributes.get("kernel_shape", []))
    bias = node.input[2] if len(node.input) > 2 else ""
    return (len(kernel) == 2 and kernel[0] == kernel[1] and list(attributes.get("strides", [])) == kernel
            and attributes.get("group", 1) == 1 and not any(attributes.get("pads", []))
            and not any(attributes.get("output_padding", [])) and set(attributes.get("dilations", [1])) == {1}
            and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and (not bias or bias in initializers))


def upsampling_as_depth_to_space(model: Any) -> Any:
    """Rewrite each k x k, stride-k ConvTranspose of an onnx.ModelProto as a 1x1 Conv + DepthToSpace (in place).

    Such a transposed convolution maps every input pixel to its own k x k output patch, which is
    exactly a 1x1 convolution to k*k times the channels followed by a pixel shuffle (DepthToSpace,
    CRD order). onnxruntime has no int8 ConvTranspose on the CPU, so the U-Net's upsampling would
    otherwise run in fp32 between a dequantize and a quantize; rewritten, it stays int8.
    """
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    nodes, replaced = [], set()
    for node in model.graph.node:
        if not _is_patch_upsampling(node, initializers):
            nodes.append(node)
            continue
        replaced.update(node.input[1:])
        weight = numpy_helper.to_array(initializers[node.input[1]])  # in x out x k x k
        channels_in, channels_out, kernel, _ = weight.shape
        # Output channel c*k*k + i*k + j of the 1x1 conv is pixel (i, j) of channel c's patch (CRD order).
        conv_weight = weight.transpose(1, 2, 3, 0).reshape(channels_out * kernel * kernel, channels_in, 1, 1)
        name = node.name or node.output[0]
        inputs = [node.input[0], f"{name}.patch_weight"]
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(conv_weight), inputs[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]])
            inputs.append(f"{name}.patch_bias")
            model.graph.initializer.append(numpy_helper.from_array(np.repeat(bias, kernel * kernel), inputs[2]))
        patches = f"{node.output[0]}.patches"
        nodes.append(helper.make_node("Conv", inputs, [patches], name=f"{name}.patches", kernel_shape=[1, 1]))
        nodes.append(helper.make_node("DepthToSpace", [patches], list(node.output), name=f"{name}.shuffle",
                                      blocksize=kernel, mode="CRD"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Drop the old transposed-conv weights unless another node still reads them.
    used = {name for node in model.graph.node for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used or tensor.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def quantize_int8(fp32: bytes, batches: Sequence[torch.Tensor], multiple: int) -> bytes:
    """Static int8 quantization (QDQ, uint8 activations, per-channel 7-bit int8 weights), calibrated on `batches`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, input_name: str):
            self.items = iter([{input_name: pad_to_multiple(b, multiple).numpy()} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    model = upsampling_as_depth_to_space(onnx.load_from_string(fp32))
    head = _head_conv(model)
    with tempfile.TemporaryDirectory(prefix="masksmith-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model.SerializeToString())
        with quiet_exporter():
            # uint8 activations x int8 weights is the fast kernel on x86. Without AVX-512 VNNI it multiplies
            # pairs with VPMADDUBSW, whose 16-bit sums saturate with full 8-bit weights (5% of pixels
            # flipped on the membrane demo); 7-bit weights (reduce_range) cannot overflow, cost no speed,
            # and give the same logits on every CPU. The classifier stays fp32: its logits decide every
            # pixel and it is a tiny share of the work. Relu is folded into the conv's output range.
            quantize_static(str(source), str(target), Reader(model.graph.input[0].name),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OPS, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=[head] if head else [], calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return target.read_bytes()


def _verification_inputs(meta: BundleMeta, multiple: int, real: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Batch 1 at the training size and batch 3 at an odd size (exercises padding), plus real images."""
    generator = torch.Generator().manual_seed(0)
    side = max(multiple, -(-max(meta.input_shape) // multiple) * multiple)
    odd_h, odd_w = side + multiple // 2 + 3, max(3, side - 5)
    inputs = [torch.randn(1, meta.in_channels, side, side, generator=generator),
              torch.randn(3, meta.in_channels, odd_h, odd_w, generator=generator)]
    return inputs + [batch for batch in real[:4]]


def verify(network: nn.Module, backend: OnnxBackend, inputs: Sequence[torch.Tensor],
           real_from: int | None = None) -> list[ExportCheck]:
    """Compare ONNX and PyTorch logits on each input."""
    checks = []
    network = network.eval()
    for index, batch in enumerate(inputs):
        with torch.inference_mode():
            expected = network(batch).float()
        got = backend(batch)
        if got.shape != expected.shape:
            raise MasksmithError(f"{backend.source}: ONNX output shape {tuple(got.shape)} differs from "
                                 f"PyTorch's {tuple(expected.shape)} for input {tuple(batch.shape)}")
        difference = float((got - expected).abs().max())
        scale = float(expected.abs().max()) or 1.0
        same = (logits_to_classes(got) == logits_to_classes(expected)).float().mean()
        checks.append(ExportCheck(tuple(batch.shape), difference, difference / scale, float(same),
                                  real=real_from is not None and index >= real_from))
    return checks


def verified_onnx(network: nn.Module, meta: BundleMeta, *, source: str, opset: int = DEFAULT_OPSET,
                  int8: bool = False, real: Sequence[torch.Tensor] = ()) -> tuple[bytes, ExportReport]:
    """The network as ONNX (fp32, or int8 calibrated on `real`) and its parity report against PyTorch.

    An fp32 graph whose logits stray more than FP32_TOLERANCE of their range from PyTorch's is refused
    (MasksmithError naming `source`); int8 ones are reported, since quantization changes logits by design.
    """
    model = network_to_onnx(network, meta, opset=opset)
    multiple = input_multiple(network)  # the one the graph's header records (network_to_onnx reads the same)
    precision = "int8" if int8 else "fp32"
    if int8:
        import onnx

        quantized = onnx.load_from_string(quantize_int8(model, real, multiple))
        set_onnx_header(quantized, onnx_header(meta, multiple, "int8", opset))
        model = quantized.SerializeToString()
    backend = OnnxBackend(model, source=source)
    report = ExportReport(Path(source), precision, opset, multiple, len(model), calibration_images=len(real))
    report.checks = verify(network, backend, _verification_inputs(meta, multiple, real), real_from=2)
    if not int8 and report.max_rel_diff > FP32_TOLERANCE:
        raise MasksmithError(f"{source}: ONNX logits differ from PyTorch by {report.max_rel_diff:.2e} of their "
                             f"range (limit {FP32_TOLERANCE:.0e})")
    return model, report


def export_onnx(bundle_path: str | Path, out_path: str | Path, *, opset: int = DEFAULT_OPSET, int8: bool = False,
                calibration: str | Path | Sequence[str | Path] | None = None,
                calibration_limit: int = 32) -> ExportReport:
    """Export a bundle to ONNX (fp32, or int8 calibrated on real images) and verify it against PyTorch."""
    started = time.perf_counter()
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise MasksmithError(f"{out_path}: the exported model's name must end in .onnx")
    if int8 and not calibration:
        raise MasksmithError("int8 export needs calibration images (--calibration FOLDER or glob)")
    meta, network = load_network(bundle_path)
    real: list[torch.Tensor] = []
    if calibration:
        items = [calibration] if isinstance(calibration, (str, Path)) else list(calibration)
        real = calibration_batches(meta, items, calibration_limit)
    try:
        model, report = verified_onnx(network, meta, source=str(out_path), opset=opset, int8=int8, real=real)
    except MasksmithError as error:
        raise MasksmithError(f"{error}; not written") from None
    validation = validation_images(bundle_path, meta) if int8 else []
    if validation:
        import onnx

        agreement = pixel_agreement(network, OnnxBackend(model, source=str(out_path)),
                                    calibration_batches(meta, validation, len(validation)))
        report.validation_agreement, report.validation_images = agreement, len(validation)
        quantized = onnx.load_from_string(model)
        set_onnx_header(quantized, onnx_header(meta, report.input_multiple, "int8", opset,
                                               validation_agreement=agreement, validation_images=len(validation)))
        model = quantized.SerializeToString()
        report.size_bytes = len(model)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(model)
    report.seconds = time.perf_counter() - started
    return report


def export(bundle: str | Path, out: str | Path | None = None, *, export_format: str = "onnx", opset: int = DEFAULT_OPSET,
           int8: bool = False, calibration: str | Path | Sequence[str | Path] | None = None) -> ExportReport:
    """Export a bundle to ONNX (fp32, or int8 calibrated on real images), verified against PyTorch; default
    OUT: the bundle's name with .onnx (.int8.onnx with int8)."""
    if export_format != "onnx":
        raise MasksmithError(f"format {export_format!r}: only 'onnx' is supported")
    bundle = Path(bundle)
    target = Path(out) if out is not None else bundle.with_suffix(".int8.onnx" if int8 else ".onnx")
    refuse_overwrite([bundle], [target])
    require_writable(target.parent)
    return export_onnx(bundle, target, opset=opset, int8=int8, calibration=calibration)
