"""The options of `masksmith predict` and `masksmith export` (and the keywords of `masksmith.export`): one model
each, the source of their flags, help and docs tables. Each default reads the constant of the module that owns it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from masksmith.annotations import ANNOTATION_FORMATS, DEFAULT_TOLERANCE
from masksmith.core.command_config import CommandConfig, extra
from masksmith.core.devices import DEVICES
from masksmith.inference.backend_choice import BACKEND_HELP, DEFAULT_BACKEND
from masksmith.inference.backend_choice import CHOICES as BACKEND_CHOICES
from masksmith.inference.backends import DEFAULT_OPSET
from masksmith.inference.files import MASK_FORMATS, PREDICT_BATCH_SIZE
from masksmith.inference.predictor import BLENDS
from masksmith.inference.ray_engine import RayOptions

ENGINES = ("local", "ray")
EXPORT_FORMATS = ("onnx",)
MAX_BATCH_SIZE = 4096
MAX_TILE = 65536
MAX_ACTORS = 100_000
MAX_THREADS = 1024
_RAY = RayOptions()  # the Ray engine's defaults


class PredictConfig(CommandConfig):
    """Every option of `masksmith predict`."""

    COMMAND = "predict"

    out: Path = Field(..., description="output folder for <name>.png masks", json_schema_extra=extra("--out", "-o"))
    overlay: bool = Field(False, description="also write blended overlays to OUT/overlays/")
    threshold: float | None = Field(None, description="binary: foreground probability threshold",
                                    json_schema_extra=extra(default_text="the model's"))
    mask_format: str = Field(MASK_FORMATS[0], description="palette: indexed PNG of class indices; dataset: the "
                             "training masks' own encoding (0/255, RGB colors, ...)",
                             json_schema_extra=extra(choices=MASK_FORMATS))
    batch_size: int = Field(PREDICT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, description="images predicted together",
                            json_schema_extra=extra("-b"))
    device: str = Field("auto", description="where the model runs", json_schema_extra=extra(choices=DEVICES))
    backend: str = Field(DEFAULT_BACKEND, description=BACKEND_HELP, json_schema_extra=extra(choices=BACKEND_CHOICES))
    tile: int | None = Field(None, ge=1, le=MAX_TILE, description="predict in tiles of this many pixels",
                             json_schema_extra=extra(default_text="automatic for crop-trained models on images "
                                                                  "over 2x the training size"))
    overlap: int | None = Field(None, ge=0, le=MAX_TILE, description="tile overlap in pixels",
                                json_schema_extra=extra(default_text="tile/4"))
    blend: str = Field(BLENDS[0], description="how overlapping tiles are blended", json_schema_extra=extra(choices=BLENDS))
    tta: bool = Field(False, description="average over flipped copies: the flips the model was trained with "
                      "(default/light/elastic: 4 forward passes per image, upright: 2)")
    annotation_format: str = Field(ANNOTATION_FORMATS[0], description="png: the masks only; labelme: also "
                                   "OUT/<name>.json per image (polygons to correct in Labelme) and OUT/labels.txt; "
                                   "coco: also OUT/coco.json (RLE regions with scores)",
                                   json_schema_extra=extra("--format", choices=ANNOTATION_FORMATS))
    polygon_tolerance: float = Field(DEFAULT_TOLERANCE, description="labelme: how far (pixels) a simplified polygon "
                                     "may stray from the mask's outline; 0: exact")
    rank: bool = Field(False, description="also write OUT/ranking.csv: images by uncertainty, most uncertain first "
                       "(the ones to label next)")
    resume: bool = Field(False, description="skip images whose outputs are already in OUT")
    engine: str = Field(ENGINES[0], description="local: this process; ray: a Ray Data pipeline with an actor pool "
                        "(pip install 'masksmith[ray]')", json_schema_extra=extra(choices=ENGINES))
    address: str | None = Field(_RAY.address, description="ray: the cluster to join (auto, or HOST:PORT)",
                                json_schema_extra=extra(default_text="a local Ray instance"))
    actors: int | None = Field(_RAY.actors, ge=1, le=MAX_ACTORS, description="ray: model replicas",
                               json_schema_extra=extra(default_text="the cluster's CPUs / --threads"))
    threads: int = Field(_RAY.threads, ge=1, le=MAX_THREADS, description="ray: CPUs (and torch threads) per actor")
    gpus_per_actor: float = Field(_RAY.gpus_per_actor, description="ray: GPUs per actor (with --device cuda)")
    quiet: bool = Field(False, description="no progress bar", json_schema_extra=extra("-q", cli_only=True))

    def load_options(self) -> dict[str, object]:
        """How each model loads (Predictor and the Ray actors alike)."""
        return dict(device=self.device, backend=self.backend, tile=self.tile, overlap=self.overlap,
                    blend=self.blend, tta=self.tta)


class ExportConfig(CommandConfig):
    """Every option of `masksmith export`, and the keywords of `masksmith.export`."""

    COMMAND = "export"

    out: Path | None = Field(None, description="where the exported model goes", json_schema_extra=extra(
        "--out", "-o", default_text="the bundle's name with .onnx (.int8.onnx with --int8)"))
    # Checked by export() itself, whose message says what is supported.
    export_format: str = Field(EXPORT_FORMATS[0], description=f"export format: {', '.join(EXPORT_FORMATS)}",
                               json_schema_extra=extra("--format"))
    int8: bool = Field(False, description="static int8 quantization of the convolutions")
    calibration: list[str] | None = Field(None, description="images for int8 calibration (files, folders or globs; "
                                          "real images); repeat the flag for more")
    opset: int = Field(DEFAULT_OPSET, ge=7, le=30, description="ONNX opset")
