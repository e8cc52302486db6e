"""The options of `masksmith convert labelme|coco|yolo|labelstudio|cvat`: the options every converter takes, and
each converter's own; the source of their flags, help and docs tables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from masksmith.core.command_config import CommandConfig, extra
from masksmith.data.convert.paint import MAX_INSTANCE_ID


class ConvertConfig(CommandConfig):
    """The options of every converter (`convert coco` and `convert cvat` have no others)."""

    COMMAND = "convert"

    instances: bool = Field(True, description=f"write SegmentationObject/ (at most {MAX_INSTANCE_ID} instances an image)")
    visualize: bool = Field(True, description="write `*Visualization/` overlays", json_schema_extra=extra("--viz/--no-viz"))
    quiet: bool = Field(False, description="no progress bar", json_schema_extra=extra("-q", cli_only=True))


class LabelmeConvertConfig(ConvertConfig):
    """`masksmith convert labelme`."""

    COMMAND = "convert labelme"

    labels: Path | None = Field(None, description="labels.txt: `__ignore__`, `_background_`, then the classes",
                                json_schema_extra=extra(default_text="`_background_`, then the labels used, sorted"))


class YoloConvertConfig(ConvertConfig):
    """`masksmith convert yolo`."""

    COMMAND = "convert yolo"

    data: Path | None = Field(None, description="the dataset YAML with the class names",
                              json_schema_extra=extra(default_text="SRC/data.yaml"))


class LabelStudioConvertConfig(ConvertConfig):
    """`masksmith convert labelstudio`."""

    COMMAND = "convert labelstudio"

    labels: Path | None = Field(None, description="labels file, one label a line, in class order",
                                json_schema_extra=extra(default_text="the labels used, sorted"))
