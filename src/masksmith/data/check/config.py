"""The options of `masksmith check` and `masksmith.check`: one model, the source of the flags, help and docs table."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from masksmith.core.command_config import CommandConfig, RgbColor, extra
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MAX_PIXEL_VALUE
from masksmith.data.limits import MAX_WORKERS


class CheckConfig(CommandConfig):
    """Every option of `masksmith check`."""

    COMMAND = "check"

    # The Python API also takes the names as a list.
    classes: Path | list[str] | None = Field(None, description="classes.txt, one name per line, background first",
                                            json_schema_extra=extra(kind="str"))
    foreground: int | None = Field(None, ge=0, le=MAX_PIXEL_VALUE,
                                   description="binary masks: the pixel value meaning foreground")
    palette: Path | None = Field(None, description="RGB color masks: palette file (labelmap.txt, name,r,g,b)")
    ignore_color: RgbColor | None = Field(
        None, description="RGB color masks: ignored color as R,G,B", json_schema_extra=extra(kind="color"))
    mask_suffix: str | None = Field(None, description="mask file suffix, e.g. _mask")
    ignore_index: int = Field(DEFAULT_IGNORE_INDEX, ge=0, le=255, description="mask value that marks pixels to ignore")
    workers: int | None = Field(None, ge=1, le=MAX_WORKERS, description="worker processes",
                                json_schema_extra=extra(default_text="all cores"))
    out: Path | None = Field(None, description="where report.json and fingerprint.json go",
                             json_schema_extra=extra("--out", "-o", default_text="runs/check-DATANAME"))
    json_output: bool = Field(False, description="print the report as JSON instead of tables",
                              json_schema_extra=extra("--json", cli_only=True))
    strict: bool = Field(False, description="exit 1 when there are warnings", json_schema_extra=extra(cli_only=True))
    quiet: bool = Field(False, description="no progress bar or tables", json_schema_extra=extra("-q", cli_only=True))
