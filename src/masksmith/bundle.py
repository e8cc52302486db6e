"""The model bundle: one file with the weights (safetensors) and everything a prediction needs (JSON).

The file is a plain safetensors file whose header metadata holds the JSON under the key
`masksmith`. Loading never unpickles anything, and any safetensors reader can open the weights.
An exported ONNX model carries the same metadata (plus how to feed its graph) under the same key,
read and validated here by the same code; `load_network` is how anyone gets a bundle's network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from masksmith.config import InputSize, check_model_options
from masksmith.core.fileio import atomic_path
from masksmith.core.version import __version__
from masksmith.data.classes import class_names_problem
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MAX_CLASSES
from masksmith.data.sizes import ResizeMode, as_size
from masksmith.errors import BundleError, MasksmithError
from masksmith.models.base import DEFAULT_MULTIPLE, MAX_MULTIPLE

FlipAxis = Literal["horizontal", "vertical"]
FLIP_AXES: tuple[FlipAxis, ...] = ("horizontal", "vertical")

FORMAT_NAME = "masksmith-bundle"
FORMAT_VERSION = 1
ONNX_FORMAT_NAME = "masksmith-onnx"
ONNX_FORMAT_VERSION = 1
METADATA_KEY = "masksmith"  # the metadata key in both the safetensors header and the ONNX metadata_props
MIN_STD = 1e-6  # normalized inputs stay far inside float32's range

Parsed = TypeVar("Parsed")
Count = Annotated[int, Field(strict=True)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
ColorValue = Annotated[int, Field(strict=True, ge=0, le=255)]


def validation_reason(error: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one line: 'field: what is wrong; ...' for the first few problems."""
    parts = []
    for item in error.errors()[:limit]:
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class BundleMeta(BaseModel):
    """Everything besides the weights that turns an image into a mask."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Annotated[str, Field(min_length=1)]
    model_options: dict[str, Any]
    in_channels: Literal[1, 3]
    out_channels: Annotated[Count, Field(ge=1, le=MAX_CLASSES)]
    class_names: Annotated[list[str], Field(min_length=1, max_length=MAX_CLASSES)]
    colors: list[Annotated[list[ColorValue], Field(min_length=3, max_length=3)]]
    size: InputSize
    resize: ResizeMode
    mean: list[Finite]
    std: list[Annotated[Finite, Field(ge=MIN_STD)]]
    threshold: Annotated[Finite, Field(gt=0, lt=1)] = 0.5
    mask_encoding: dict[str, Any]
    ignore_index: Annotated[Count, Field(ge=0, le=255)] = DEFAULT_IGNORE_INDEX  # bundles from before the field
    split: dict[str, Any] = {}
    # The flips the training augmentation made, the only ones `--tta` may average over (nnU-Net mirrors along
    # the axes it trained with). Bundles from before the field get both, as TTA always did then.
    tta_flips: list[FlipAxis] = list(FLIP_AXES)
    masksmith_version: str = __version__

    @field_validator("model_options")
    @classmethod
    def _small_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        # Bounded before any network is built: base_channels=200000 would ask for terabytes.
        return check_model_options(options)

    @field_validator("class_names")
    @classmethod
    def _valid_class_names(cls, names: list[str]) -> list[str]:
        # Predict writes them into labels.txt and coco.json, evaluate into legends and reports: one line each.
        problem = class_names_problem(names)
        if problem is not None:
            raise ValueError(problem)
        return names

    @field_validator("tta_flips")
    @classmethod
    def _distinct_flips(cls, flips: list[str]) -> list[str]:
        if len(set(flips)) != len(flips):
            raise ValueError(f"repeated flip in {flips}")
        return flips

    @field_validator("mask_encoding")
    @classmethod
    def _known_encoding(cls, encoding: dict[str, Any]) -> dict[str, Any]:
        from masksmith.data.encoding import MaskEncoding

        try:
            MaskEncoding.from_dict(encoding)
        except MasksmithError as error:
            raise ValueError(str(error)) from None
        return encoding

    @model_validator(mode="after")
    def _consistent(self) -> "BundleMeta":
        # Every count must agree with the network and with the others, or prediction fails (or lies) later.
        classes = self.num_classes
        if not (self.out_channels == classes or (self.out_channels == 1 and classes == 2)):
            raise ValueError(f"{self.out_channels} output channels cannot give {classes} classes "
                             "(needs one channel per class, or 1 sigmoid channel for 2 classes)")
        if len(self.colors) != classes:
            raise ValueError(f"{len(self.colors)} colors for {classes} classes")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels:
                raise ValueError(f"{name} has {len(values)} values for {self.in_channels} input channel(s)")
        from masksmith.data.encoding import MaskEncoding, ignore_index_problem

        # The one rule (data/encoding.py): any 0..255 value that is not a class index, e.g. void = K.
        problem = ignore_index_problem(self.ignore_index, classes, self.class_names)
        if problem is not None:
            raise ValueError(problem)

        fixed = MaskEncoding.from_dict(self.mask_encoding).num_classes
        if fixed is not None and fixed != classes:
            raise ValueError(f"the {self.mask_encoding['kind']} mask encoding has {fixed} classes, "
                             f"the class names {classes}")
        return self

    @property
    def input_shape(self) -> tuple[int, int]:
        """The network's training input as (height, width)."""
        return as_size(self.size)

    @property
    def num_classes(self) -> int:
        """Number of classes, background included (2 for binary)."""
        return len(self.class_names)


def save_bundle(path: str | Path, state_dict: dict[str, torch.Tensor], meta: BundleMeta) -> Path:
    """Write weights + metadata to `path` atomically and return the path."""
    path = Path(path)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": meta.model_dump(mode="json")}
    # Serialized in memory and written by Python: a full disk is then an OSError naming the file, where
    # safetensors' own writer raises an error of its own type.
    data = save(tensors, metadata={METADATA_KEY: json.dumps(header)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_meta(path: str | Path) -> BundleMeta:
    """Read only the metadata of a bundle (fast: the weights are not loaded)."""
    return _open(path, load_weights=False)[0]


def load_bundle(path: str | Path) -> tuple[BundleMeta, dict[str, torch.Tensor]]:
    """Read a bundle's metadata and weights, with a clear BundleError for anything that is not one."""
    meta, weights = _open(path, load_weights=True)
    assert weights is not None
    return meta, weights


def _open(path: str | Path, load_weights: bool) -> tuple[BundleMeta, dict[str, torch.Tensor] | None]:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such model bundle")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            weights = {key: handle.get_tensor(key) for key in handle.keys()} if load_weights else None
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BundleError(f"{path}: not a readable model bundle ({reason})") from None
    if raw is None:
        raise BundleError(f"{path}: a safetensors file but not a masksmith bundle (no '{METADATA_KEY}' metadata)")
    meta = _parse_header(raw, str(path), FORMAT_NAME, FORMAT_VERSION, "bundle format", "damaged masksmith metadata",
                         lambda header: BundleMeta.model_validate(header["meta"]))
    return meta, weights


def _parse_header(raw: str, source: str, format_name: str, version: int, format_label: str, damaged: str,
                  validate: Callable[[dict[str, Any]], Parsed]) -> Parsed:
    """The one reader of masksmith's JSON headers (bundle and ONNX): format, version, then `validate`.

    Every way the text can be wrong becomes a one-line BundleError naming `source`.
    """
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError(f"a JSON {type(header).__name__}, not an object")
        if header.get("format") != format_name:
            raise ValueError("wrong format name")
        if header.get("format_version", 0) > version:
            raise BundleError(f"{source}: {format_label} {header['format_version']} is newer than this masksmith "
                              f"({__version__}) reads; upgrade masksmith")
        return validate(header)
    except BundleError:
        raise
    except ValidationError as error:
        raise BundleError(f"{source}: {damaged} ({validation_reason(error)})") from None
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BundleError(f"{source}: {damaged} ({reason})") from None


class OnnxHeader(BaseModel):
    """The masksmith entry of an exported ONNX model's metadata: how to feed the graph, and the bundle's meta."""

    model_config = ConfigDict(extra="allow")

    # A header without one predates the field; such graphs were exported without padding requirements.
    input_multiple: Annotated[int, Field(strict=True, ge=1, le=MAX_MULTIPLE)] = DEFAULT_MULTIPLE
    precision: Literal["fp32", "int8"] = "fp32"
    # An int8 export's share of pixels whose class PyTorch's network gives too, on the model's validation split.
    validation_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    validation_images: Annotated[int, Field(ge=0)] | None = None
    meta: BundleMeta


def onnx_header(meta: BundleMeta, multiple: int, precision: str, opset: int, **measured: Any) -> str:
    """The JSON stored under METADATA_KEY in an exported ONNX model's metadata_props (`measured`: OnnxHeader's
    optional fields, such as an int8 export's validation agreement)."""
    return json.dumps({"format": ONNX_FORMAT_NAME, "format_version": ONNX_FORMAT_VERSION, "input_multiple": multiple,
                       "precision": precision, "opset": opset, "exported_by": __version__, **measured,
                       "meta": meta.model_dump(mode="json")})


def parse_onnx_header(raw: str | None, source: str) -> OnnxHeader:
    """The validated masksmith header of an ONNX model (BundleMeta checked as a bundle's is); BundleError if bad."""
    if raw is None:
        raise BundleError(f"{source}: an ONNX model but not one exported by masksmith "
                          f"(no '{METADATA_KEY}' metadata); export it with `masksmith export`")
    return _parse_header(raw, source, ONNX_FORMAT_NAME, ONNX_FORMAT_VERSION, "ONNX metadata format",
                         "damaged masksmith metadata in ONNX model", OnnxHeader.model_validate)


def restore_network(meta: BundleMeta, weights: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """The network the metadata describes, holding `weights`; BundleError unless every tensor shape matches.

    The architecture is first built on the meta device (no memory) and compared with the weights, so
    metadata that asks for an absurdly large network is refused before anything is allocated.
    """
    from masksmith.models import build_model

    def build(device: str) -> nn.Module:
        try:
            with torch.device(device):
                return build_model(meta.model, meta.in_channels, meta.out_channels, **meta.model_options)
        except Exception as error:  # a bad option surfaces as any type from inside an architecture
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BundleError(f"{source}: cannot build the {meta.model!r} network its metadata describes "
                              f"({reason})") from None

    expected = {name: tuple(t.shape) for name, t in build("meta").state_dict().items()}
    found = {name: tuple(t.shape) for name, t in weights.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [name for name in expected if name in found and expected[name] != found[name]]  # network order
    if missing or unexpected or wrong:
        details = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + (
            [f"{name} is {list(found[name])} in the file but {list(expected[name])} in the "
             "metadata's architecture" for name in wrong[:2]])
        raise BundleError(f"{source}: weights do not fit the {meta.model} architecture its metadata describes "
                          f"({'; '.join(details)})")
    network = build("cpu")
    network.load_state_dict(weights)
    return network


def load_network(path: str | Path) -> tuple[BundleMeta, nn.Module]:
    """A bundle's metadata and its network (CPU, eval mode), shapes checked before anything is allocated."""
    meta, weights = load_bundle(path)
    return meta, restore_network(meta, weights, path).eval()
