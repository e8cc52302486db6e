"""Find image/mask pairs in the common folder layouts; pair by file stem, never by order."""

from __future__ import annotations

import errno
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from masksmith.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".npy")
MASK_SUFFIXES = ("_mask", "-mask", "_masks", "_label", "_labels", "_gt", "_seg")  # recognised automatically

# Folder names accepted for each role, in order of preference.
IMAGE_DIR_NAMES = ("images", "img", "image")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "annotations")
SPLIT_DIR_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
VOC_SPLITS = ("train", "val", "test")

EXPECTED_LAYOUTS = (
    "split folders root/{train,val,test}/{images,masks}; "
    "VOC root/JPEGImages + root/SegmentationClass (+ ImageSets/Segmentation/*.txt); "
    "flat root/images + root/masks; "
    "or one folder holding images and <name>_mask masks"
)
_LIST_LIMIT = 10


@dataclass(frozen=True)
class Sample:
    """One image and its mask (mask is None only for prediction inputs)."""

    image: Path
    mask: Path | None

    @property
    def name(self) -> str:
        """The image's file stem, the key that pairs it with its mask."""
        return self.image.stem


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with one of IMAGE_EXTENSIONS (case-insensitive)."""
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
    )


def image_files(folder: Path) -> list[Path]:
    """Visible image files directly inside `folder`, sorted by name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def looks_like_image(path: Path) -> bool:
    """A visible name with an image extension, whatever the entry is (file, folder, broken link)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def entry_problem(path: Path) -> str:
    """Why an image-named entry is not a readable regular file: broken link, link loop, folder, or other."""
    if os.path.islink(path):
        target = os.fsencode(os.readlink(path)).decode("utf-8", "backslashreplace")
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{path}: symbolic link loop (points to {target}, which leads back to itself)"
            return f"{path}: broken symbolic link (points to {target}, which does not exist)"
    if path.is_dir():
        return f"{path}: is a folder, not an image file"
    return f"{path}: not a regular file"


def unusable_entries(folder: Path) -> list[Path]:
    """Image-named entries in `folder` that are not readable regular files (sorted by name)."""
    return sorted((p for p in folder.iterdir() if looks_like_image(p) and not p.is_file()), key=lambda p: p.name)


def _name_list(names: list[str]) -> str:
    """'a, b, c' for up to 10 names, then '… and N more'."""
    shown = ", ".join(names[:_LIST_LIMIT])
    if len(names) > _LIST_LIMIT:
        shown += f", … and {len(names) - _LIST_LIMIT} more"
    return shown


def find_child_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first sub-folder of `root` whose name matches one of `names` (case-insensitive, in order)."""
    children = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    for name in names:
        if name in children:
            return children[name]
    return None


def mask_stem_keys(image_stem: str, suffixes: tuple[str, ...]) -> list[str]:
    """Mask stems that belong to an image: its own stem, or stem + one of the suffixes."""
    return [image_stem] + [image_stem + s for s in suffixes]


@dataclass
class Pairing:
    """What pairing two lists of files found: the pairs, and the files left without a partner, by path."""

    samples: list[Sample]
    unpaired_images: list[Path] = field(default_factory=list)  # images with no mask
    unpaired_masks: list[Path] = field(default_factory=list)  # masks with no image
    unreadable: list[Path] = field(default_factory=list)  # image-named entries that are no readable file


@dataclass
class Discovery:
    """Everything `discover_dataset` found under a root: pairs per split, and what could not be paired.

    Nothing here is a warning string: check turns these into its problems, and `discover` into its
    DataError or warning (skip_unpaired).
    """

    root: Path
    splits: dict[str, list[Sample]]
    unpaired: dict[str, dict[str, list[Path]]]  # split -> {"images": [...], "masks": [...]}
    unreadable: list[Path]  # broken or looping links, folders named x.png (why: entry_problem)
    splits_left_out: dict[str, Path]  # split -> its folder, left out for having no masks folder
    messages: list[str]  # discover's one-line summary per pairing with unpaired files, for its error or warning

    @property
    def unpaired_paths(self) -> list[Path]:
        """Every unpaired image and mask, sorted by path."""
        return sorted(p for roles in self.unpaired.values() for paths in roles.values() for p in paths)


def _pair(images: list[Path], masks: list[Path], *, image_dir: Path, mask_dir: Path,
          mask_suffix: str | None) -> Pairing:
    """Pair image files with mask files by stem (or stem + mask suffix); DataError only when pairing is ambiguous."""
    if not images:
        raise DataError(f"{image_dir}: no images found (expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
    if not masks:
        raise DataError(f"{mask_dir}: no masks found (expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
    suffixes = MASK_SUFFIXES if mask_suffix is None else (mask_suffix,)

    by_image_stem: dict[str, Path] = {}
    for path in images:
        if path.stem in by_image_stem:
            raise DataError(
                f"{image_dir}: two images share the name {path.stem!r}: "
                f"{by_image_stem[path.stem].name} and {path.name}; rename one"
            )
        by_image_stem[path.stem] = path
    masks_by_stem: dict[str, list[Path]] = {}
    for path in masks:
        masks_by_stem.setdefault(path.stem, []).append(path)

    samples: list[Sample] = []
    claimed: dict[Path, Path] = {}
    missing: list[Path] = []
    for stem, image in sorted(by_image_stem.items()):
        candidates = [m for key in mask_stem_keys(stem, suffixes) for m in masks_by_stem.get(key, [])]
        if not candidates:
            missing.append(image)
            continue
        if len(candidates) > 1:
            names = " and ".join(c.name for c in candidates)
            raise DataError(f"{mask_dir}: image {image.name} has more than one candidate mask: {names}; keep one")
        mask = candidates[0]
        if mask in claimed:
            raise DataError(
                f"{mask_dir}: mask {mask.name} matches two images, {claimed[mask].name} and {image.name}; rename one"
            )
        claimed[mask] = image
        samples.append(Sample(image=image, mask=mask))
    broken = [p for folder in dict.fromkeys((image_dir, mask_dir)) for p in unusable_entries(folder)]
    return Pairing(sorted(samples, key=lambda s: s.name), sorted(missing),
                   sorted(m for m in masks if m not in claimed), broken)


def _pairing_message(pairing: Pairing, *, image_dir: Path, mask_dir: Path, mask_suffix: str | None) -> str | None:
    """discover's one line about what pairing left out, or None when everything paired."""
    suffixes = MASK_SUFFIXES if mask_suffix is None else (mask_suffix,)
    broken = pairing.unreadable
    # A broken link or a folder named like an image is reported for what it is, and its partner is
    # not also reported as "unpaired": that would blame the wrong file.
    broken_stems = {p.stem for p in broken}
    partner_stems = {key for stem in broken_stems for key in mask_stem_keys(stem, suffixes)}
    missing = [p.name for p in pairing.unpaired_images
               if broken_stems.isdisjoint(mask_stem_keys(p.stem, suffixes))]
    extra = [p.name for p in pairing.unpaired_masks if p.stem not in partner_stems]
    if not (missing or extra or broken):
        return None
    parts = []
    if broken:
        reasons = [entry_problem(p) for p in broken]
        shown = "; ".join(reasons[:_LIST_LIMIT]) + (
            f"; … and {len(reasons) - _LIST_LIMIT} more" if len(reasons) > _LIST_LIMIT else "")
        parts.append(f"{len(broken)} entr{'y is' if len(broken) == 1 else 'ies are'} not a readable file: {shown}")
    if missing:
        parts.append(f"{len(missing)} image(s) in {image_dir} have no mask in {mask_dir}: {_name_list(missing)}")
    if extra:
        parts.append(f"{len(extra)} mask(s) in {mask_dir} have no image in {image_dir}: {_name_list(extra)}")
    return "; ".join(parts)


class _Found:
    """Collects the pairings of one discovery, so the layouts report what they found the same way."""

    def __init__(self, root: Path, mask_suffix: str | None, skip_unpaired: bool):
        self.discovery = Discovery(root, {}, {}, [], {}, [])
        self.mask_suffix = mask_suffix
        self.skip_unpaired = skip_unpaired

    def pair(self, split: str, images: list[Path], masks: list[Path], *, image_dir: Path, mask_dir: Path) -> None:
        """Pair one split's files and record the pairs and the leftovers."""
        pairing = _pair(images, masks, image_dir=image_dir, mask_dir=mask_dir, mask_suffix=self.mask_suffix)
        self.add(split, pairing)
        message = _pairing_message(pairing, image_dir=image_dir, mask_dir=mask_dir, mask_suffix=self.mask_suffix)
        if message is not None:
            self.discovery.messages.append(message)
        if not pairing.samples:
            if message is not None and not self.skip_unpaired:  # the unpaired names say more than "no pair"
                raise DataError(f"{message} (pair them, or use skip_unpaired to leave them out)")
            raise DataError(f"{image_dir}: no image has a mask in {mask_dir}")

    def add(self, split: str, pairing: Pairing) -> None:
        """Record a split's pairing (VOC's listed splits come ready-made)."""
        found = self.discovery
        found.splits[split] = pairing.samples
        found.unpaired[split] = {"images": pairing.unpaired_images, "masks": pairing.unpaired_masks}
        found.unreadable.extend(p for p in pairing.unreadable if p not in found.unreadable)


def _discover_split_folders(root: Path, found: _Found) -> bool:
    """Layout 1: root/{train,val,test}/{images,masks}; False when root has no split folder."""
    split_dirs: dict[str, Path] = {}
    for key, names in SPLIT_DIR_NAMES.items():
        matches = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in names]
        if len(matches) > 1:
            raise DataError(
                f"{root}: both {matches[0].name}/ and {matches[1].name}/ look like the {key} split; keep one"
            )
        if matches and find_child_dir(matches[0], IMAGE_DIR_NAMES) is not None:
            split_dirs[key] = matches[0]
    if not split_dirs:
        return False
    for key, split_dir in split_dirs.items():
        image_dir = find_child_dir(split_dir, IMAGE_DIR_NAMES)
        mask_dir = find_child_dir(split_dir, MASK_DIR_NAMES)
        assert image_dir is not None
        if mask_dir is None:
            # An unlabelled test split (images only) is common; say so instead of failing the labelled ones.
            found.discovery.splits_left_out[key] = split_dir
            continue
        found.pair(key, image_files(image_dir), image_files(mask_dir), image_dir=image_dir, mask_dir=mask_dir)
    if not found.discovery.splits:
        names = ", ".join(p.name for p in split_dirs.values())
        raise DataError(f"{root}: split folders found ({names}) but none has a masks folder")
    return True


def voc_mask_dir(root: Path) -> Path:
    """SegmentationClass if it holds PNGs, else the first SegmentationClass* folder that does."""
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("SegmentationClass"))
    candidates.sort(key=lambda p: p.name != "SegmentationClass")  # stable: the plain name first
    for folder in candidates:
        if any(p.suffix.lower() == ".png" and not p.name.startswith(".") for p in folder.iterdir()):
            return folder
    raise DataError(f"{root}: has JPEGImages but no SegmentationClass* folder with PNG masks")


def _read_split_ids(path: Path) -> list[str]:
    """Ids listed one a line in a VOC ImageSets file (first token; blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read split file: {exc}") from None
    return [line.split()[0] for line in lines if line.strip()]


def _discover_voc(root: Path, found: _Found) -> None:
    """Layout 2: PASCAL VOC (JPEGImages, SegmentationClass, optional ImageSets/Segmentation)."""
    image_dir = root / "JPEGImages"
    mask_dir = voc_mask_dir(root)
    split_dir = root / "ImageSets" / "Segmentation"
    split_files = {key: split_dir / f"{key}.txt" for key in VOC_SPLITS if (split_dir / f"{key}.txt").is_file()}
    if not split_files:
        found.pair("all", image_files(image_dir), image_files(mask_dir), image_dir=image_dir, mask_dir=mask_dir)
        return

    images = {p.stem: p for p in image_files(image_dir)}
    suffixes = MASK_SUFFIXES if found.mask_suffix is None else (found.mask_suffix,)
    masks: dict[str, list[Path]] = {}
    for p in image_files(mask_dir):
        masks.setdefault(p.stem, []).append(p)
    # The split files list the ids to use; other JPEGs are expected, so nothing is "unpaired" here.
    broken = [p for folder in (image_dir, mask_dir) for p in unusable_entries(folder)]
    for key, txt in split_files.items():
        ids = _read_split_ids(txt)
        if not ids:
            raise DataError(f"{txt}: split file lists no ids")
        samples, bad = [], []
        for sample_id in dict.fromkeys(ids):  # de-duplicated, order kept
            candidates = [m for k in mask_stem_keys(sample_id, suffixes) for m in masks.get(k, [])]
            if len(candidates) > 1:
                names = " and ".join(c.name for c in candidates)
                raise DataError(f"{mask_dir}: id {sample_id} has more than one candidate mask: {names}; keep one")
            if sample_id not in images or not candidates:
                bad.append(sample_id)
                continue
            samples.append(Sample(image=images[sample_id], mask=candidates[0]))
        if bad:
            raise DataError(
                f"{txt}: {len(bad)} listed id(s) have no image in {image_dir.name}/ or no mask in {mask_dir.name}/: "
                f"{_name_list(bad)}"
            )
        found.add(key, Pairing(sorted(samples, key=lambda s: s.name), unreadable=broken))


def _discover_flat(root: Path, found: _Found) -> bool:
    """Layout 3: root/images + root/masks; False when root has no such pair of folders."""
    image_dir = find_child_dir(root, IMAGE_DIR_NAMES)
    mask_dir = find_child_dir(root, MASK_DIR_NAMES)
    if image_dir is None or mask_dir is None:
        return False
    found.pair("all", image_files(image_dir), image_files(mask_dir), image_dir=image_dir, mask_dir=mask_dir)
    return True


def _discover_single_folder(root: Path, found: _Found) -> bool:
    """Layout 4: one folder with both a.png and a_mask.png; False when no file carries a mask suffix."""
    files = image_files(root)
    suffixes = MASK_SUFFIXES if found.mask_suffix is None else (found.mask_suffix,)
    masks = [p for p in files if any(p.stem.endswith(s) and len(p.stem) > len(s) for s in suffixes)]
    if not masks:
        return False
    images = [p for p in files if p not in set(masks)]
    # Only suffixed names can be masks here, so a same-stem "mask" would be the image itself.
    found.pair("all", images, masks, image_dir=root, mask_dir=root)
    return True


def discover_dataset(root: str | Path, *, mask_suffix: str | None = None, skip_unpaired: bool = True) -> Discovery:
    """Find the image/mask pairs under `root` and everything left unpaired, as data; DataError for a bad layout.

    Unpaired files, unreadable entries and split folders without masks are recorded, never raised or warned
    about: `discover` and `masksmith check` each decide what to do with them. skip_unpaired=False only
    changes which error a folder with no pair at all gets: its unpaired files' names, as `discover` says.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (give the dataset folder)")
    if mask_suffix is not None and not mask_suffix:
        raise ConfigError("mask_suffix must be a non-empty string such as '_mask', or None")
    found = _Found(root, mask_suffix, skip_unpaired)
    if _discover_split_folders(root, found):
        return found.discovery
    if (root / "JPEGImages").is_dir():
        _discover_voc(root, found)
        return found.discovery
    if _discover_flat(root, found) or _discover_single_folder(root, found):
        return found.discovery
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise DataError(f"{root}: folder is empty; expected {EXPECTED_LAYOUTS}")
    raise DataError(f"{root}: unknown dataset layout; expected {EXPECTED_LAYOUTS}")


def left_out_message(split: str, folder: Path) -> str:
    """The one wording for a split folder left out for having images but no masks."""
    return f"{folder}: images but no masks folder; the {split!r} split is left out"


def discover(
    root: str | Path, *, mask_suffix: str | None = None, skip_unpaired: bool = False
) -> dict[str, list[Sample]]:
    """Find image/mask pairs under `root`; returns {split: samples} ("train"/"val"/"test" or "all").

    Unpaired files are a DataError naming them, or with skip_unpaired a warning; a split folder
    without masks is left out with a warning.
    """
    return usable_pairs(discover_dataset(root, mask_suffix=mask_suffix, skip_unpaired=skip_unpaired),
                        skip_unpaired=skip_unpaired)


def usable_pairs(found: Discovery, *, skip_unpaired: bool = False) -> dict[str, list[Sample]]:
    """`discover`'s verdict on a Discovery: its pairs, a DataError for unpaired files (a warning with
    skip_unpaired), a warning per split folder left out. A run discovers once and keeps the Discovery."""
    for split, folder in found.splits_left_out.items():
        warnings.warn(left_out_message(split, folder), stacklevel=3)
    if found.messages and not skip_unpaired:
        raise DataError(f"{found.messages[0]} (pair them, or use skip_unpaired to leave them out)")
    for message in found.messages:
        warnings.warn(f"left out unpaired files: {message}", stacklevel=3)
    return found.splits


def random_split_pool(splits: dict[str, list[Sample]]) -> list[Sample]:
    """The pairs a seeded random train/val split is drawn from: the train folder, else every pair found."""
    return splits.get("train") or splits.get("all") or []


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, val) by a seeded shuffle; the same inputs and seed always give the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(samples) < 2:
        raise DataError(f"need at least 2 samples to split into train and val, got {len(samples)}")
    # Sort first so the split does not depend on the order the caller happened to list samples in.
    ordered = sorted(samples, key=lambda s: (s.name, str(s.image)))
    random.Random(seed).shuffle(ordered)
    n_val = min(max(round(len(ordered) * val_fraction), 1), len(ordered) - 1)
    val = sorted(ordered[:n_val], key=lambda s: s.name)
    train = sorted(ordered[n_val:], key=lambda s: s.name)
    return train, val
