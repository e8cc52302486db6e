"""Where DATA's images are and where each one's mask is, or goes: the layouts `discover` pairs.

- split folders DATA/{train,val,test}/images: masks in the split's masks folder (made when missing);
- VOC DATA/JPEGImages: masks in SegmentationClass;
- flat DATA/images: masks in DATA/masks;
- any other folder of images: masks beside them as NAME_mask.png (discover's single-folder layout).

A new mask is named after its image (with the suffix the dataset's masks already carry, if any) and
saved as PNG, so `masksmith train DATA` pairs it. Nothing outside DATA is listed: an image, mask or
mask folder whose real path (symbolic links followed) leaves DATA is left out, with the reason.
"""

from __future__ import annotations

import collections
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from masksmith.data.discover import (
    IMAGE_DIR_NAMES,
    MASK_DIR_NAMES,
    MASK_SUFFIXES,
    SPLIT_DIR_NAMES,
    find_child_dir,
    image_files,
    mask_stem_keys,
    voc_mask_dir,
)
from masksmith.data.masks import writable_mask_suffix
from masksmith.errors import DataError

SINGLE_FOLDER_SUFFIX = "_mask"  # discover pairs DATA/a.jpg with DATA/a_mask.png
NEW_MASK_EXTENSION = ".png"


@dataclass(frozen=True)
class Folder:
    """One folder of images and the folder their masks are in (or go to)."""

    split: str
    images: Path
    masks: Path
    single: bool = False  # images and masks share one folder; masks carry a suffix


@dataclass(frozen=True)
class Entry:
    """An image of DATA, its id, and its mask: the one on disk, or where a new one is written."""

    id: str
    image: Path
    relative: str  # the image's path inside DATA, for display
    folder: Folder
    mask: Path | None  # the mask on disk
    target: Path  # where a save writes: the mask on disk, or a new PNG named after the image


@dataclass
class Listing:
    """Every image to label, and what was left out with the reason."""

    root: Path
    entries: list[Entry]
    left_out: list[str]

    @property
    def masks(self) -> list[Path]:
        """The masks already on disk."""
        return [entry.mask for entry in self.entries if entry.mask is not None]


def image_id(relative: str) -> str:
    """The id the page names an image by: derived from its path inside DATA, never the path itself."""
    return hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _inside(path: Path, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def find_folders(root: Path) -> list[Folder]:
    """The image folders of DATA and their mask folders, by the layouts discover knows (see the module doc)."""
    folders: list[Folder] = []
    for split, names in SPLIT_DIR_NAMES.items():
        for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in names):
            images = find_child_dir(split_dir, IMAGE_DIR_NAMES)
            if images is not None:
                masks = find_child_dir(split_dir, MASK_DIR_NAMES) or split_dir / "masks"
                folders.append(Folder(split, images, masks))
    if folders:
        return folders
    if (root / "JPEGImages").is_dir():
        try:
            masks = voc_mask_dir(root)
        except DataError:  # no SegmentationClass folder with masks yet
            masks = root / "SegmentationClass"
        return [Folder("all", root / "JPEGImages", masks)]
    images = find_child_dir(root, IMAGE_DIR_NAMES)
    if images is not None:
        return [Folder("all", images, find_child_dir(root, MASK_DIR_NAMES) or root / "masks")]
    return [Folder("all", root, root, single=True)]


def _suffixes(mask_suffix: str | None) -> tuple[str, ...]:
    return MASK_SUFFIXES if mask_suffix is None else (mask_suffix,)


def list_images(root: str | Path, mask_suffix: str | None = None) -> Listing:
    """Every image of DATA with its id and mask; DataError when DATA is no folder or holds no image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'folder not found'} (give the dataset folder)")
    root_real = os.path.realpath(root)
    suffixes = _suffixes(mask_suffix)
    entries: list[Entry] = []
    left_out: list[str] = []
    pending: list[tuple[Path, Folder, Path | None]] = []
    used: collections.Counter[str] = collections.Counter()
    for folder in find_folders(root):
        if not _inside(folder.masks, root_real):
            left_out.append(f"{folder.masks}: the mask folder points outside {root}; its "
                            f"{folder.images.name}/ images are left out")
            continue
        files = image_files(folder.images) if folder.images.is_dir() else []
        if folder.single:
            masks = [p for p in files if any(p.stem.endswith(s) and len(p.stem) > len(s) for s in suffixes)]
            images = [p for p in files if p not in set(masks)]
        else:
            masks = image_files(folder.masks) if folder.masks.is_dir() else []
            images = files
        by_stem: dict[str, list[Path]] = {}
        for mask in masks:
            by_stem.setdefault(mask.stem, []).append(mask)
        for image in images:
            candidates = [m for key in mask_stem_keys(image.stem, suffixes) for m in by_stem.get(key, [])]
            if folder.single:
                candidates = [m for m in candidates if m != image]
            reason = _problem(image, candidates, root, root_real)
            if reason is not None:
                left_out.append(reason)
                continue
            mask = candidates[0] if candidates else None
            if mask is not None:
                used[mask.stem[len(image.stem):]] += 1
            pending.append((image, folder, mask))
    # New masks take the suffix the dataset's masks already use (none, or _mask in a single folder).
    suffix = used.most_common(1)[0][0] if used else ""
    for image, folder, mask in pending:
        relative = image.relative_to(root).as_posix()
        new_suffix = suffix or (SINGLE_FOLDER_SUFFIX if folder.single else "")
        target = mask if mask is not None else folder.masks / f"{image.stem}{new_suffix}{NEW_MASK_EXTENSION}"
        entries.append(Entry(image_id(relative), image, relative, folder, mask, target))
    if not entries:
        detail = f" ({left_out[0]})" if left_out else ""
        raise DataError(f"{root}: no images to label{detail}")
    ids = collections.Counter(entry.id for entry in entries)
    if len(ids) != len(entries):  # two paths with one 64-bit id: vanishingly rare, but never mix them up
        raise DataError(f"{root}: two images share an id; rename one of them")
    return Listing(root, sorted(entries, key=lambda e: e.relative), left_out)


def _problem(image: Path, candidates: list[Path], root: Path, root_real: str) -> str | None:
    """Why an image cannot be labelled here (left out), or None."""
    if not _inside(image, root_real):
        return f"{image}: points outside {root}; left out"
    if len(candidates) > 1:
        return f"{image}: more than one candidate mask ({' and '.join(c.name for c in candidates)}); keep one"
    if candidates and not _inside(candidates[0], root_real):
        return f"{candidates[0]}: the mask points outside {root}; {image.name} is left out"
    if candidates and not writable_mask_suffix(candidates[0]):
        return (f"{candidates[0]}: a {candidates[0].suffix} mask cannot be saved back losslessly; "
                "convert the masks to PNG to label them here")
    return None
