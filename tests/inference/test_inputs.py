"""inference/inputs.py is the one place that lists input images: files, folders (with their subfolders), globs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import masksmith
from masksmith.errors import DataError
from masksmith.inference.inputs import expand_inputs


def _paths(inputs) -> list[Path]:
    return [item.path for item in expand_inputs(inputs)[0]]


def test_files_folders_and_globs(tmp_path, write_image_file):
    pixel = np.zeros((2, 2), np.uint8)
    for name in ("b.png", "a.jpg", "c.tif", ".hidden.png"):
        write_image_file(tmp_path / "folder" / name, pixel)
    write_image_file(tmp_path / "folder" / "nested" / "deep.png", pixel)
    (tmp_path / "folder" / "readme.txt").write_text("not an image")
    single = write_image_file(tmp_path / "one.png", pixel)

    found, failed = expand_inputs([tmp_path / "folder"])
    # sorted by relative path, subfolders included, no hidden files or text files
    assert [str(item.relative) for item in found] == ["a.jpg", "b.png", "c.tif", "nested/deep.png"] and failed == []
    assert _paths([str(tmp_path / "folder" / "*.png"), single, tmp_path / "folder" / "b.png"]) == [
        tmp_path / "folder" / "b.png",
        single,
    ]  # duplicates dropped, order kept
    assert _paths([str(tmp_path / "**" / "deep.png")]) == [tmp_path / "folder" / "nested" / "deep.png"]


def test_errors_name_the_input(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'missing.png'}: no such file")):
        expand_inputs([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="matches no image files"):
        expand_inputs([str(tmp_path / "*.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder has no images"):
        expand_inputs([tmp_path / "empty"])
    (tmp_path / "notes.doc").write_text("x")  # .txt would be a manifest
    with pytest.raises(DataError, match="not an image file"):
        expand_inputs([tmp_path / "notes.doc"])


def test_broken_entries_are_listed_not_passed_over(tmp_path, write_image_file):
    write_image_file(tmp_path / "in" / "a.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    found, failed = expand_inputs([str(tmp_path / "in" / "*.png")])
    assert [item.path.name for item in found] == ["a.png"]
    assert [(path.name, "broken symbolic link" in reason) for path, reason in failed] == [("gone.png", True)]


def test_no_other_module_lists_input_images():
    # Listing helpers elsewhere (a second, non-recursive rule) would make export and predict read different images.
    src = Path(masksmith.__file__).parent
    # serve/label/layout.py's list_images lists a dataset's images with their masks for labelling, not inputs.
    listers = [f"{path.relative_to(src)}:{node.name}" for path in sorted(src.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.FunctionDef) and node.name in ("list_inputs", "list_images", "expand_inputs")]
    assert [name for name in listers if not name.startswith("serve/label/")] == ["inference/inputs.py:expand_inputs"]
