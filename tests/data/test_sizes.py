"""data/sizes.py owns the resize modes and the (height, width) reading of a size: nobody else spells them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import masksmith
from masksmith.bundle import BundleMeta
from masksmith.config import TrainConfig
from masksmith.data.sizes import RESIZE_MODES, as_size, resizes_whole_image
from masksmith.errors import ConfigError

SRC = Path(masksmith.__file__).parent
OWNER = "data/sizes.py"


def _mode_sets(tree: ast.AST) -> list[int]:
    """Lines of every Literal[...], tuple, list or set that spells two or more resize modes."""
    lines = []
    for node in ast.walk(tree):
        elements = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, (ast.Name, ast.Attribute)):
            name = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
            if name == "Literal":
                elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elements = node.elts
        if elements is not None:
            spelled = {e.value for e in elements if isinstance(e, ast.Constant)} & set(RESIZE_MODES)
            if len(spelled) >= 2:
                lines.append(node.lineno)
    return sorted(set(lines))  # a Literal's modes are also a tuple node


def test_no_module_but_the_owner_spells_the_resize_modes():
    spelled = [f"{path.relative_to(SRC)}:{line}" for path in sorted(SRC.rglob("*.py"))
               if str(path.relative_to(SRC)) != OWNER
               for line in _mode_sets(ast.parse(path.read_text(encoding="utf-8")))]
    assert spelled == []


def test_the_guard_sees_spelled_modes():
    code = 'A = Literal["resize", "random_crop"]\nB = ("resize", "center_crop", "x")\nC = ["resize"]\n'
    assert _mode_sets(ast.parse(code)) == [1, 2]


def test_one_size_helper():
    # as_size is the only function that turns a size into (height, width).
    helpers = [f"{path.relative_to(SRC)}:{node.name}" for path in sorted(SRC.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.FunctionDef) and node.name in ("as_size", "size_pair", "to_size", "size_tuple")]
    assert helpers == [f"{OWNER}:as_size"]


def test_the_config_and_the_bundle_take_the_owners_modes():
    assert tuple(TrainConfig.model_fields["resize"].annotation.__args__) == RESIZE_MODES
    assert tuple(BundleMeta.model_fields["resize"].annotation.__args__) == RESIZE_MODES
    assert [mode for mode in RESIZE_MODES if resizes_whole_image(mode)] == ["resize"]


@pytest.mark.parametrize("size, pair", [(32, (32, 32)), ([24, 40], (24, 40)), ((24, 40), (24, 40))])
def test_as_size_reads_a_side_or_a_pair(size, pair):
    assert as_size(size) == pair


@pytest.mark.parametrize("size", [0, -3, True, 2.5, [1, 2, 3], "32", [16, 0], None])
def test_as_size_refuses_anything_else(size):
    with pytest.raises(ConfigError, match="size must be"):
        as_size(size)
