"""The ONNX cache: each bundle exported to fp32 ONNX once, parity-checked, and kept where any later run finds it.

Entries live in $MASKSMITH_CACHE/onnx (else $XDG_CACHE_HOME/masksmith/onnx, else ~/.cache/masksmith/onnx), never
beside the bundle, whose folder may be read-only. An entry is named by the bundle's SHA-256 and a key of
everything else that shapes the exported graph or its check (opset, the torch, onnx, onnxscript and
onnxruntime versions, masksmith's version), so a retrained bundle or an upgraded exporter gets a new entry.

Each entry is two files: NAME.onnx and NAME.json, the record that certifies it (the ONNX file's SHA-256, the
bundle's, the key, the parity check's numbers). The record is written last, so an ONNX file without a valid
record is never used: a truncated, damaged or foreign file (one copied from another bundle's entry) fails
its record's checks and is exported again. A bundle whose export fails its parity check gets a record of
that refusal, so later runs fall back at once instead of exporting again.

Processes exporting the same bundle at once take turns through an flock on NAME.lock: the first exports,
the others then read its entry. A process waits at most LOCK_WAIT_S for the lock: a holder stuck mid-export
(stopped, or hung on a slow disk) makes the others' cache unavailable for that run, never a stalled server.
Both files are written to temporary names and renamed (fileio.atomic_path), so a reader never sees half a
file, and a killed export leaves at most a temporary file that the next holder of the lock removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

from masksmith.core.version import __version__
from masksmith.core.fileio import atomic_path, remove_stale_temps, take_flock
from masksmith.errors import MasksmithError
from masksmith.inference.backends import DEFAULT_OPSET

CACHE_ENV = "MASKSMITH_CACHE"
RECORD_FORMAT = "masksmith-onnx-cache"
RECORD_VERSION = 1
# Versions of the libraries whose change can change the exported graph or how the parity check runs it.
KEYED_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime")
# An export and its parity check take tens of seconds on 2 cores; a lock held longer is taken as stuck.
LOCK_WAIT_S = 180.0


class CacheUnavailable(MasksmithError):
    """The cache folder cannot be created, locked or written (a file in its place, read-only, full)."""


def cache_dir() -> Path:
    """Where ONNX exports are cached: $MASKSMITH_CACHE/onnx, $XDG_CACHE_HOME/masksmith/onnx or ~/.cache/masksmith/onnx."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "masksmith" / "onnx"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def export_key(opset: int = DEFAULT_OPSET) -> dict[str, object]:
    """Everything besides the bundle that decides an entry's bytes and its check."""
    return {"format_version": RECORD_VERSION, "opset": opset, "masksmith": __version__,
            **{package: _version(package) for package in KEYED_PACKAGES}}


@dataclass(frozen=True)
class Entry:
    """A bundle's place in the cache: NAME.onnx, its record NAME.json and its lock NAME.lock."""

    folder: Path
    bundle_sha256: str
    key: dict[str, object]

    @property
    def name(self) -> str:
        key_digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.bundle_sha256[:32]}-{key_digest}"

    @property
    def onnx(self) -> Path:
        return self.folder / f"{self.name}.onnx"

    @property
    def record(self) -> Path:
        return self.folder / f"{self.name}.json"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.name}.lock"


@dataclass(frozen=True)
class Cached:
    """What the cache holds for a bundle: the verified ONNX bytes (or None: refused, and why) and the parity numbers."""

    model: bytes | None
    record: dict[str, object]
    exported_now: bool  # exported by this call, not read back
    stored: bool = True  # False: the cache could not keep it (the bytes serve this run only)
    problem: str | None = None  # why an entry was not read back or not stored, for the user's one line

    @property
    def refusal(self) -> str | None:
        """Why the bundle runs on PyTorch instead, when its export was refused."""
        return None if self.model is not None else str(self.record.get("refused") or "export refused")


def entry_for(bundle: str | Path, opset: int = DEFAULT_OPSET) -> Entry:
    """The cache entry of a bundle file (its SHA-256 read now)."""
    try:
        digest = file_sha256(bundle)
    except OSError as error:
        raise MasksmithError(f"{bundle}: cannot read the model: {error.strerror or error}") from None
    return Entry(cache_dir(), digest, export_key(opset))


def read_entry(entry: Entry) -> tuple[Cached | None, str | None]:
    """The entry's content if its record certifies it, else (None, why it was not used; None when absent)."""
    try:
        raw = entry.record.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, f"{entry.record}: unreadable ({error.strerror or error})"
    try:
        record = json.loads(raw)
    except ValueError:
        return None, f"{entry.record}: damaged record"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None, f"{entry.record}: not a masksmith cache record"
    if record.get("bundle_sha256") != entry.bundle_sha256 or record.get("key") != entry.key:
        return None, f"{entry.record}: recorded for another bundle or exporter"
    if record.get("refused"):
        return Cached(None, record, exported_now=False), None
    try:
        model = entry.onnx.read_bytes()
    except OSError as error:
        return None, f"{entry.onnx}: unreadable ({error.strerror or error})"
    if hashlib.sha256(model).hexdigest() != record.get("onnx_sha256"):
        return None, f"{entry.onnx}: damaged (its SHA-256 is not the recorded one)"
    return Cached(model, record, exported_now=False), None


@contextlib.contextmanager
def entry_lock(entry: Entry) -> Iterator[None]:
    """Hold the entry's lock, waiting up to LOCK_WAIT_S for another process's export; CacheUnavailable when it
    cannot be taken or is still held after that."""
    try:
        entry.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise CacheUnavailable(f"ONNX cache {entry.folder}: {error.strerror or error}") from None
    try:
        try:
            taken = take_flock(fd, LOCK_WAIT_S)  # a killed export never leaves the entry locked
        except OSError as error:
            raise CacheUnavailable(f"ONNX cache {entry.lock}: {error.strerror or error}") from None
        if not taken:
            raise CacheUnavailable(f"ONNX cache {entry.lock}: another process has held it for {LOCK_WAIT_S:g} s "
                                   "(an export still running, or stuck)")
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _store(entry: Entry, model: bytes | None, record: dict[str, object]) -> None:
    if model is not None:
        with atomic_path(entry.onnx) as tmp:
            tmp.write_bytes(model)
    with atomic_path(entry.record) as tmp:  # last: it certifies the ONNX file written before it
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")


def checked_export(bundle: Path, opset: int = DEFAULT_OPSET) -> tuple[bytes | None, dict[str, object]]:
    """Export and check the bundle: (ONNX bytes, record fields), or (None, the refusal) when it fails its check."""
    from masksmith.bundle import load_network
    from masksmith.inference.export import verified_onnx

    meta, network = load_network(bundle)
    try:
        model, report = verified_onnx(network, meta, source=str(bundle), opset=opset)
    except MasksmithError as error:
        reason = str(error)
        return None, {"refused": reason if str(bundle) in reason else f"{bundle}: {reason}"}
    return model, {"onnx_sha256": hashlib.sha256(model).hexdigest(), "max_rel_diff": report.max_rel_diff,
                   "max_abs_diff": report.max_abs_diff, "agreement": report.agreement, "bytes": len(model)}


def cached_onnx(bundle: str | Path, opset: int = DEFAULT_OPSET) -> Cached:
    """The bundle's verified fp32 ONNX model: read from the cache, or exported, checked and stored there.

    CacheUnavailable when the cache folder cannot be used at all (nothing was exported). Where the
    entry cannot be written after the export, the bytes come back with `stored` False and the reason.
    """
    bundle = Path(bundle)
    entry = entry_for(bundle, opset)
    cached, problem = read_entry(entry)
    if cached is not None:
        return cached
    with entry_lock(entry):
        # Another process may have exported it while this one waited for the lock.
        cached, later_problem = read_entry(entry)
        if cached is not None:
            return cached
        problem = problem or later_problem
        remove_stale_temps(entry.folder, stem=entry.name)
        model, fields = checked_export(bundle, opset)
        record = {"format": RECORD_FORMAT, "bundle_sha256": entry.bundle_sha256, "key": entry.key,
                  "bundle": str(bundle), **fields}
        try:
            _store(entry, model, record)
        except OSError as error:
            reason = f"{os.fsdecode(error.filename) if error.filename else entry.folder}: " \
                     f"{error.strerror or os.strerror(error.errno or errno.EIO)}"
            return Cached(model, record, exported_now=True, stored=False, problem=reason)
        return Cached(model, record, exported_now=True, problem=problem)
