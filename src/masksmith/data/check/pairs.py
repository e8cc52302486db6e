"""Pairing problems: discover_dataset's unpaired and unreadable entries as check problems."""

from __future__ import annotations

from pathlib import Path


from masksmith.data.check.report import Problem, display_path
from masksmith.data.discover import (
    MASK_SUFFIXES,
    Discovery,
    Sample,
    discover_dataset,
    entry_problem,
    left_out_message,
)
from masksmith.errors import DataError


def _broken_partner(stem: str, role: str, suffixes: tuple[str, ...], broken: dict[str, Path]) -> Path | None:
    """The unreadable entry (broken link, folder) that would have been this file's image or mask, if any."""
    if role == "images":
        keys = [stem] + [stem + s for s in suffixes]
    else:
        keys = [stem] + [stem[: -len(s)] for s in suffixes if stem.endswith(s) and len(stem) > len(s)]
    return next((broken[key] for key in keys if key in broken), None)


def pairs_and_problems(
    root: Path, mask_suffix: str | None, found: Discovery | None = None
) -> tuple[dict[str, list[Sample]], dict[str, dict[str, list[Path]]], list[Problem]]:
    """The pairs discover_dataset found (or `found`, a discovery of `root` already made), and its unpaired and
    unreadable entries as problems, in folder order."""
    if found is None:
        try:
            found = discover_dataset(root, mask_suffix=mask_suffix)
        except DataError as exc:
            if not root.is_dir():
                raise
            return {}, {}, [Problem("error", "layout", [root], str(exc))]
    problems = [Problem("warning", "layout", [root], left_out_message(split, folder))
                for split, folder in found.splits_left_out.items()]
    suffixes = (mask_suffix,) if mask_suffix else MASK_SUFFIXES
    broken = {p.stem: p for p in found.unreadable}
    listed: list[tuple[Path, Problem]] = [
        (path, Problem("error", "unreadable", [path], entry_problem(path))) for path in found.unreadable]
    for roles in found.unpaired.values():
        for role, paths in roles.items():
            other = "mask" if role == "images" else "image"
            for path in paths:
                partner = _broken_partner(path.stem, role, suffixes, broken)
                reason = (f"its {other} {partner} is not a readable file" if partner is not None
                          else f"no {other} with the stem '{display_path(path.stem)}'")
                listed.append((path, Problem("error", "unpaired", [path],
                                             f"{path}: {role[:-1]} has no {other} ({reason})")))
    problems += [problem for _, problem in sorted(listed, key=lambda item: (item[0].parent, item[0].name))]
    return found.splits, found.unpaired, problems


