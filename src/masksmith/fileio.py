"""Atomic file output: an interrupted run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from masksmith.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _identities(path: str | os.PathLike) -> set[tuple]:
    """Every key under which `path` names a file: its target (symlinks followed), its own entry, its inode."""
    path = Path(path)
    keys: set[tuple] = {("path", os.path.realpath(path)),
                        ("path", os.path.join(os.path.realpath(path.parent), path.name))}
    try:
        status = os.stat(path)
        keys.add(("inode", status.st_dev, status.st_ino))  # a hard link is the same file under another name
    except OSError:
        pass  # not there yet: only its path can collide
    return keys


def refuse_overwrite(inputs: Iterable[str | os.PathLike], outputs: Iterable[str | os.PathLike]) -> None:
    """Raise ConfigError, before any work, when an output path is one of the inputs (also via links or '..')."""
    read: dict[tuple, Path] = {}
    for source in inputs:
        for key in _identities(source):
            read.setdefault(key, Path(source))
    clashes: list[tuple[Path, Path]] = []
    for target in outputs:
        hit = next((read[key] for key in _identities(target) if key in read), None)
        if hit is not None:
            clashes.append((Path(target), hit))
    if clashes:
        target, source = clashes[0]
        more = f" ({len(clashes)} outputs would overwrite inputs)" if len(clashes) > 1 else ""
        raise ConfigError(f"{target}: writing it would overwrite the input {source}{more}; "
                          "write the outputs to another folder")
