"""The options of `masksmith label`: one model, the source of its flags, help and docs table; the label server's
own defaults (its port, its upload limit) live here."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from masksmith.core.command_config import CommandConfig, RgbColor, extra
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MAX_PIXEL_VALUE
from masksmith.inference.work_budget import MB
from masksmith.serve.label.store import LabelOptions
from masksmith.serve.options import ServeOptions

DEFAULT_PORT = 8001  # beside serve's, so both can run at once
DEFAULT_MAX_UPLOAD_BYTES = 64 * MB  # a mask upload: a large 16-bit PNG fits


class LabelConfig(CommandConfig):
    """Every option of `masksmith label`."""

    COMMAND = "label"

    model: Path | None = Field(None, description="model bundle (model.msb) or ONNX export: its predictions start "
                               "each mask, rank the queue and drive the region assist")
    classes: str | None = Field(None, description="classes.txt, one name per line, background first",
                                json_schema_extra=extra(default_text="DATA/classes.txt"))
    foreground: int | None = Field(None, ge=0, le=MAX_PIXEL_VALUE,
                                   description="binary masks: the pixel value meaning foreground")
    palette: str | None = Field(None, description="RGB color masks: palette file (labelmap.txt, name,r,g,b)")
    ignore_color: RgbColor | None = Field(
        None, description="RGB color masks: ignored color as R,G,B", json_schema_extra=extra(kind="color"))
    ignore_index: int | None = Field(None, ge=0, le=255, description="mask value that marks pixels to ignore",
                                     json_schema_extra=extra(default_text=str(DEFAULT_IGNORE_INDEX)))
    mask_suffix: str | None = Field(None, description="mask file suffix, e.g. _mask")
    host: str = Field(ServeOptions().host, description="address to listen on; anything but loopback needs --token")
    port: int = Field(DEFAULT_PORT, description="TCP port (0: a free one)")
    token: str | None = Field(None, description="bearer token required on every route (in a browser, open "
                              "/?token=TOKEN once)", json_schema_extra=extra(envvar="MASKSMITH_LABEL_TOKEN"))
    threads: int | None = Field(None, description="compute threads of the model",
                                json_schema_extra=extra(default_text="one per core"))
    max_upload_mb: float = Field(DEFAULT_MAX_UPLOAD_BYTES / MB, description="largest mask upload in MiB (413 above)")
    quiet: bool = Field(False, description="no access log", json_schema_extra=extra("-q"))

    def label_options(self) -> LabelOptions:
        """How DATA's masks are read."""
        return LabelOptions(classes=self.classes, foreground=self.foreground, palette=self.palette,
                            ignore_color=tuple(self.ignore_color) if self.ignore_color else None,  # type: ignore[arg-type]
                            ignore_index=self.ignore_index, mask_suffix=self.mask_suffix)
