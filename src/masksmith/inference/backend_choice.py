"""Which backend runs a model file: the rule behind --backend auto | torch | onnx.

`auto` (the commands' default) runs a bundle on the CPU through ONNX Runtime fp32, from the ONNX cache
(inference.onnx_cache: exported once, parity-checked against PyTorch, kept by the bundle's checksum), since
it is faster than eager PyTorch there (benchmarks/default_backend.py, benchmarks/inference.py). It runs
PyTorch where ONNX Runtime cannot serve the bundle, and says why in one line (a BackendNote warning): a
CUDA device (ONNX Runtime runs on the CPU here), onnxruntime not installed, an export refused by its parity
check, a cache folder that cannot be used. `onnx` insists: the same cached export, or one in memory for
this run when the cache cannot be used; a refused export is an error. `torch` runs the bundle on PyTorch.
An `.onnx` file always runs on ONNX Runtime. None (the Python API's default) picks by file type: PyTorch
for a bundle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from masksmith.errors import MasksmithError
from masksmith.inference.backends import BACKENDS, Backend, OnnxBackend, open_backend
from masksmith.inference.onnx_cache import CacheUnavailable, cached_onnx, checked_export

CHOICES = ("auto", *BACKENDS)
DEFAULT_BACKEND = "auto"
BACKEND_HELP = ("auto: a bundle runs on ONNX Runtime on the CPU (exported once, checked against PyTorch, cached in "
                "$MASKSMITH_CACHE or ~/.cache/masksmith), PyTorch on a GPU or where the check fails")


class BackendNote(UserWarning):
    """Why a bundle runs on another backend than asked for (or than `auto` prefers), in one line."""


def check_backend(backend: str | None) -> str | None:
    """`backend` when it is one of CHOICES (or None), else a one-line MasksmithError."""
    if backend is not None and backend not in CHOICES:
        raise MasksmithError(f"backend must be one of {', '.join(CHOICES)}, got {backend!r}")
    return backend


@dataclass(frozen=True)
class Choice:
    """The backend a model file runs on: 'torch' or 'onnx', with the ONNX bytes of a bundle's export."""

    kind: str
    model: bytes | None = None  # the verified export of a bundle (None: an .onnx file, or PyTorch)
    note: str | None = None  # the one line the user is told


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _onnxruntime_missing() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return True
    return False


def choose(path: str | Path, backend: str | None = None, device: str = "cpu") -> Choice:
    """The backend `path` runs on (exporting a bundle to the ONNX cache when that is the choice)."""
    check_backend(backend)
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return Choice("torch" if backend == "torch" else "onnx")  # open_backend refuses torch for it
    if backend in (None, "torch") or not path.is_file():
        return Choice("torch")  # a missing bundle: open_backend words the error as for any backend
    on_cuda = torch.device(_device(device)).type == "cuda"
    if backend == "auto" and on_cuda:
        return Choice("torch")
    if _onnxruntime_missing():
        if backend == "onnx":
            raise MasksmithError("--backend onnx needs onnxruntime, which is not installed: pip install onnxruntime")
        return Choice("torch", note=f"{path}: onnxruntime is not installed; running PyTorch")
    try:
        cached = cached_onnx(path)
    except CacheUnavailable as error:
        if backend != "onnx":
            return Choice("torch", note=f"{error}; running PyTorch")
        model, record = checked_export(path)
        if model is None:
            raise MasksmithError(f"{record['refused']} (the ONNX export was refused; use --backend torch)")
        return Choice("onnx", model, note=f"{error}; {path.name} exported to ONNX for this run only")
    if cached.refusal is not None:
        if backend == "onnx":
            raise MasksmithError(f"{cached.refusal} (the ONNX export was refused; use --backend torch)")
        return Choice("torch", note=f"{cached.refusal}; running PyTorch")
    note = None
    if not cached.stored:
        note = f"ONNX cache: could not store {path.name}'s export ({cached.problem}); it serves this run only"
    elif cached.problem:
        note = f"ONNX cache: {cached.problem}; exported {path.name} again"
    return Choice("onnx", cached.model, note)


def open_model(path: str | Path, backend: str | None = None, device: str = "cpu", *, optimize: bool = True,
               threads: int | None = None) -> Backend:
    """A backend for a model file, chosen by `choose` (its note, if any, issued as a BackendNote warning)."""
    choice = choose(path, backend, device)
    if choice.note:
        warnings.warn(choice.note, BackendNote, stacklevel=2)
    if choice.model is not None:
        return OnnxBackend(choice.model, threads=threads, source=f"{path} (cached ONNX export)")
    return open_backend(path, kind=choice.kind, device=_device(device), optimize=optimize, threads=threads)
