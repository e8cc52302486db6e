"""Atomic file output: an interrupted run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from masksmith.errors import ConfigError

# The names atomic_path gives its temporary files: mkstemp's 8 random characters between stem and suffix.
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}(\.[^.]+)?\.tmp")
LOCK_POLL_S = 0.1  # how often take_flock tries again while it may wait


def _os_error_of(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or the one a writer wrapped (torch.save raises a RuntimeError whose
    context is the failed write), else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    A failed write (a full disk, a read-only folder) is raised as an OSError naming `path` (not the temporary
    file, nor the scratch file a writer may use on its own: Lightning's goes through the system's temp folder),
    also where the writer wraps it in its own exception (torch.save's RuntimeError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # mkstemp creates 0600 files, and some writers (safetensors) replace the temp file with their own
        # 0600 one: after writing, give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except Exception as error:
        cause = _os_error_of(error)
        # errno None: not a failed system call but a writer's own complaint (PIL raises OSError for those).
        if cause is None or cause.errno is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from error
    finally:
        # Also on KeyboardInterrupt; only a hard kill (SIGKILL) leaves one behind, for remove_stale_temps.
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def require_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and prove a file can be created in it, before any work is done: a ConfigError
    naming the folder and the cause (read-only file system, permission denied, no space) otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".masksmith-write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{folder}: cannot write there: {error.strerror or error}") from None
    return folder


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


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (other threads may create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # the brief window errs on the private side
    os.umask(umask)
    return umask


def remove_stale_temps(*folders: str | os.PathLike, stem: str | None = None) -> list[Path]:
    """Delete the atomic_path temp files a killed process left in `folders` (only while holding their lock):
    all of them, or with `stem` only those of the files named STEM.* (a folder shared by files locked one by one)."""
    removed = []
    pattern = f".{glob.escape(stem)}.*.tmp" if stem else ".*.tmp"
    # Not recursive, and only atomic_path's names: --out may be a folder that also holds the user's files.
    for folder in map(Path, folders):
        stale = [path for path in folder.glob(pattern) if TEMP_NAME.fullmatch(path.name)] if folder.is_dir() else []
        for path in stale:
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def take_flock(fd: int, wait: float = 0.0) -> bool:
    """Take an exclusive flock on the open file `fd`, trying again for up to `wait` seconds; False when another
    holder keeps it that long. The kernel drops an flock with its process, so a killed holder frees it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_S)


def _in_use(folder: Path, kind: str, fd: int) -> ConfigError:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return ConfigError(f"{folder}: in use by another {kind}{f' (pid {pid})' if pid.isdigit() else ''}; "
                       "wait for it to finish or choose another folder")


def refuse_if_locked(folder: str | os.PathLike, kind: str = "process") -> None:
    """The ConfigError folder_lock would raise while another process holds `folder`'s lock, found without taking
    the lock or creating anything: a check before slow work (loading a model), not a replacement for the lock."""
    folder = Path(folder)
    try:
        fd = os.open(folder / ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file, so no holder: folder_lock decides when it is taken
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(folder, kind, fd) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, kind: str = "process") -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its `.lock` file) for a `kind` of job; a second one fails at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # flock belongs to the open file: the kernel drops it when the process exits or crashes, so a killed
    # run never leaves its folder locked.
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        if not take_flock(fd):
            raise _in_use(folder, kind, fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            # Unlock explicitly: forked data-loader workers share this open file and would keep the lock.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
