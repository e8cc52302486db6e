"""The options of `masksmith evaluate` and the keywords of `masksmith.evaluate`: one model, the source of the
flags, help and docs table."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from masksmith.core.command_config import CommandConfig, extra
from masksmith.data.discover import VOC_SPLITS
from masksmith.inference.backend_choice import BACKEND_HELP, DEFAULT_BACKEND
from masksmith.inference.backend_choice import CHOICES as BACKEND_CHOICES

SPLITS = (*VOC_SPLITS, "all")  # the split folders a dataset may have, and every image


class EvaluateConfig(CommandConfig):
    """Every option of `masksmith evaluate`."""

    COMMAND = "evaluate"

    split: str = Field("val", description="the images scored: a split (val, train: the split recorded at training "
                       "when DATA has no such folder) or all", json_schema_extra=extra(choices=SPLITS))
    out: Path | None = Field(None, description="where metrics.json and the reports go",
                             json_schema_extra=extra("--out", "-o", default_text="MODEL's folder/evaluate-SPLIT"))
    mask_suffix: str | None = Field(None, description="mask file suffix, e.g. _mask")
    threshold: float | None = Field(None, description="binary: foreground probability threshold",
                                    json_schema_extra=extra(default_text="the model's"))
    html: bool = Field(False, description="also write OUT/report.html: one self-contained page (metrics, per-class "
                       "bars, confusion matrix, curves, sortable per-image table)")
    tta: bool = Field(False, description="average each prediction over flipped copies, as predict --tta")
    backend: str = Field(DEFAULT_BACKEND, description=BACKEND_HELP, json_schema_extra=extra(choices=BACKEND_CHOICES))
    quiet: bool = Field(False, description="no progress bar or tables", json_schema_extra=extra("-q", cli_only=True))
