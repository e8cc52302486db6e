"""What produced a prediction folder: OUT/.masksmith-predict.json, and the lock a prediction holds on OUT.

`predict` records the models (their files' SHA-256), the options that decide what is written for an image and
the inputs, before it writes anything. `--resume` continues only what the same models with the same options
wrote, so a folder never silently holds two models' masks; a run without --resume replaces the masks of the
images it predicts and records its own models (a warning says when another model's masks were there).
While a prediction writes into OUT it holds OUT/.lock (both engines: the Ray driver holds it), so a second
prediction into the same folder fails at once instead of redoing the same images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from masksmith.core.fileio import folder_lock, require_writable, write_text_atomic
from masksmith.core.version import __version__
from masksmith.errors import BundleError, ConfigError
from masksmith.inference.ensemble import expand_models

RECORD_NAME = ".masksmith-predict.json"
RECORD_FORMAT = "masksmith-predictions"
# A record is a few lines; anything far larger is not one of ours, and is not read whole.
MAX_RECORD_BYTES = 1 << 20
# Options that change the bytes written for an image (masks, annotation files). --overlay is recorded but may
# change on resume: an image whose overlay is missing is predicted again (predict_io.plan_predictions).
COMPARED_OPTIONS = ("--threshold", "--tta", "--tile", "--overlap", "--blend", "--mask-format", "--format",
                    "--polygon-tolerance")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a model file, read in chunks; a BundleError naming it when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise BundleError(f"{path}: cannot read the model: {error.strerror or error}") from None


@dataclass(frozen=True)
class PredictionRecord:
    """The models (file, SHA-256) of a prediction, its options by flag, and its input arguments."""

    models: tuple[tuple[str, str], ...]
    options: Mapping[str, Any]
    inputs: tuple[str, ...]

    @classmethod
    def of(cls, models: Sequence[str | Path], options: Mapping[str, Any], inputs: Sequence[str | Path]
           ) -> "PredictionRecord":
        """The record of predicting `inputs` with `models` (bundles, ONNX files, CV run folders) and `options`."""
        members = expand_models(list(models))
        return cls(tuple((str(path), file_sha256(path)) for path in members), dict(options),
                   tuple(os.path.abspath(str(item)) for item in inputs))

    def to_json(self) -> str:
        """The record as written to OUT/.masksmith-predict.json."""
        return json.dumps({"format": RECORD_FORMAT, "masksmith_version": __version__,
                           "models": [{"path": path, "sha256": digest} for path, digest in self.models],
                           "options": dict(self.options), "inputs": list(self.inputs)}, indent=1) + "\n"

    def describe_models(self) -> str:
        """The models as one short text: each file's name and the start of its checksum."""
        return " + ".join(f"{Path(path).name} (sha256 {digest[:12]})" for path, digest in self.models)

    def model_digests(self) -> list[str]:
        """The models' checksums, in a fixed order (an ensemble's members average in any order)."""
        return sorted(digest for _, digest in self.models)


def read_record(out_dir: Path) -> PredictionRecord | None:
    """The record in OUT, or None when there is none; a ConfigError naming the file when it is not one."""
    path = out_dir / RECORD_NAME
    if not path.is_file() or path.is_symlink():
        return None
    problem = "not a masksmith prediction record"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise ValueError("wrong format")
        models = tuple((str(item["path"]), str(item["sha256"])) for item in data["models"])
        options, inputs = data["options"], tuple(str(item) for item in data["inputs"])
        if not isinstance(options, dict) or not models:
            raise ValueError("no models or options")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the prediction record: {error.strerror or error}") from None
    except (ValueError, KeyError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: {problem} ({reason}); remove it, or predict into another --out") from None
    return PredictionRecord(models, options, inputs)


def _option_text(flag: str, value: Any) -> str:
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {'(default)' if value is None else value}"


def resume_problem(previous: PredictionRecord, current: PredictionRecord) -> str | None:
    """Why `current` may not continue what `previous` wrote (other models, other options), or None."""
    if previous.model_digests() != current.model_digests():
        return (f"its predictions were made by {previous.describe_models()}, not by "
                f"{current.describe_models()}")
    for flag in COMPARED_OPTIONS:
        before, now = previous.options.get(flag), current.options.get(flag)
        if before != now:
            return f"its predictions were made with {_option_text(flag, before)}, not {_option_text(flag, now)}"
    return None


def _holds_outputs(out_dir: Path) -> bool:
    """Whether OUT holds anything but masksmith's own lock and record."""
    return any(entry.name not in (".lock", RECORD_NAME) for entry in out_dir.iterdir())


@contextlib.contextmanager
def prediction_output(out_dir: str | Path, record: PredictionRecord, *, resume: bool) -> Iterator[Path]:
    """Claim OUT for a prediction: writable, locked against another prediction, and recorded.

    With `resume`, a record of other models or options is a ConfigError naming both, before anything is
    written. The lock is held until the block ends."""
    out_dir = require_writable(out_dir)
    with folder_lock(out_dir, kind="prediction"):
        previous = read_record(out_dir) if resume else _readable_record(out_dir)
        problem = resume_problem(previous, record) if previous is not None else None
        written = _holds_outputs(out_dir)  # a record alone: an earlier run stopped before its first mask
        if resume and problem is not None and written:
            raise ConfigError(f"{out_dir}: cannot --resume: {problem}; predict into another --out, "
                              "or without --resume to replace its masks")
        if resume and previous is None and written:
            warnings.warn(f"{out_dir}: no record of the model that wrote its files ({RECORD_NAME}); resuming "
                          "as asked, the masks already there are kept as they are", stacklevel=2)
        if not resume and problem is not None and written:
            warnings.warn(f"{out_dir}: held predictions of {previous.describe_models()}; the masks of the "
                          "images predicted now are replaced, any others are still that model's", stacklevel=2)
        inputs = record.inputs
        if resume and previous is not None and problem is None:  # the folder holds the earlier runs' outputs too
            inputs = tuple(dict.fromkeys(previous.inputs + record.inputs))
        # Written before the first mask: a run stopped half-way leaves a folder that says what it holds.
        write_text_atomic(out_dir / RECORD_NAME,
                          PredictionRecord(record.models, record.options, inputs).to_json())
        yield out_dir


def _readable_record(out_dir: Path) -> PredictionRecord | None:
    """The record in OUT, or None also when it cannot be read: a run without --resume replaces it anyway."""
    try:
        return read_record(out_dir)
    except ConfigError:
        return None
