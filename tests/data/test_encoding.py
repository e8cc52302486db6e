"""data/encoding.py: the one ignore default (DEFAULT_IGNORE_INDEX) and who may restate it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import masksmith
from masksmith.bundle import BundleMeta
from masksmith.config import TrainConfig
from masksmith.data.detect import discover_colors, survey_masks
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding, color_table_text, describe_encoding
from masksmith.errors import ConfigError
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.training.losses import build_loss
from masksmith.visualize import overlay
from tests.conftest import save_array
from tests.data.mask_files import BLACK, RED, WHITE

SRC = Path(masksmith.__file__).parent


def _ignore_defaults(tree: ast.AST) -> list[tuple[int, ast.expr]]:
    """(line, default) of every `ignore_index` parameter and class field that has a default."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(node.lineno, _default_of(d)) for a, d in pairs if a.arg == "ignore_index"]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if node.target.id == "ignore_index":
                found.append((node.lineno, _default_of(node.value)))
    return found


def _default_of(value: ast.expr) -> ast.expr:
    """The default itself: pydantic's Field(default, ...) and typer's Option(default, ...) carry it first."""
    if isinstance(value, ast.Call) and value.args:
        name = value.func.id if isinstance(value.func, ast.Name) else getattr(value.func, "attr", None)
        if name in ("Field", "Option"):
            return value.args[0]
    return value


EXEMPT: set[str] = set()


def test_no_signature_restates_the_ignore_default():
    # The ignore default has one owner (data.encoding): a caller that knows its dataset passes the value,
    # and the few public defaults read the constant instead of restating 255.
    restated = []
    for path in sorted(SRC.rglob("*.py")):
        for line, default in _ignore_defaults(ast.parse(path.read_text(encoding="utf-8"))):
            # None means "not given, decide from the data" (labels.resolve_labels), not a value.
            if str(path.relative_to(SRC)) in EXEMPT or (isinstance(default, ast.Constant) and default.value is None):
                continue
            if not (isinstance(default, ast.Name) and default.id == "DEFAULT_IGNORE_INDEX"):
                restated.append(f"{path.relative_to(SRC)}:{line}: {ast.unparse(default)}")
    assert restated == []


def test_the_guard_sees_a_restated_default():
    code = ("def f(mask, *, ignore_index: int = 255): ...\n"
            "class C:\n    ignore_index: int = Field(255, ge=0)\n"
            "def g(ignore_index=DEFAULT_IGNORE_INDEX): ...\n"
            "def h(ignore_index: int = typer.Option(255, help='x')): ...\n")
    assert sorted((line, ast.unparse(d)) for line, d in _ignore_defaults(ast.parse(code))) == [
        (1, "255"), (3, "255"), (4, "DEFAULT_IGNORE_INDEX"), (5, "255")]


def test_the_ignore_value_and_class_limit_are_defined_and_checked_only_in_data_encoding():
    # One owner: no other module names its own ignore constant or class limit, or checks the 0..255 range itself.
    found = []
    for path in sorted(SRC.rglob("*.py")):
        where = str(path.relative_to(SRC))
        if where == "data/encoding.py":
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            found += [f"{where}:{node.lineno}: {t.id}" for t in targets if isinstance(t, ast.Name)
                      and (t.id == "MAX_CLASSES" or t.id.endswith("IGNORE_INDEX"))]
        found += [f"{where}: range check" for _ in re.finditer(r"ignore_index\s*<=\s*255", text)]
    assert found == []


def test_the_public_defaults_are_the_constant():
    assert TrainConfig.model_fields["ignore_index"].default == DEFAULT_IGNORE_INDEX
    assert BundleMeta.model_fields["ignore_index"].default == DEFAULT_IGNORE_INDEX


@pytest.mark.parametrize("call", [
    lambda: ConfusionMatrix(3),
    lambda: build_loss("ce", num_classes=3),
    lambda: overlay(np.zeros((2, 2, 3), np.uint8), np.eye(2, dtype=np.uint8), [[0, 0, 0], [9, 9, 9]]),
])
def test_callers_must_say_which_value_is_ignored(call):
    with pytest.raises(TypeError, match="ignore_index"):
        call()


def test_color_table_text_shows_index_color_name_and_share(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:3] = RED
    rgb[9, :5] = WHITE
    path = save_array(tmp_path / "m.png", rgb)
    survey = survey_masks([path], ignore_color=WHITE)
    assert survey.counts == (65, 30) and survey.ignored == 5 and survey.files == 1
    text = color_table_text(survey.encoding, survey.counts, ignored=survey.ignored)
    lines = text.splitlines()
    assert len(lines) == 4 and "share" in lines[0]
    assert re.search(r"^\s+0\s+\(0, 0, 0\)\s+#000000\s+class_0\s+65\.0%$", lines[1])
    assert re.search(r"^\s+1\s+\(128, 0, 0\)\s+#800000\s+class_1\s+30\.0%$", lines[2])
    assert "(ignore)" in lines[3] and lines[3].endswith("5.0%")
    # discover_colors output works as the counts too.
    assert "65.0%" in color_table_text(survey.encoding, discover_colors([path])[:2], ignored=5)


def test_color_encoding_validation_and_old_bundle_dicts():
    assert MaskEncoding.from_dict({"kind": "binary", "foreground": 0}) == MaskEncoding("binary", 0, 255)
    assert MaskEncoding.from_dict({"kind": "index", "foreground": None}) == MaskEncoding("index")
    lossy = MaskEncoding("color", colors=[[0, 0, 0], [1, 2, 3]], names=["a", "b"], ignore_color=[9, 9, 9], lossy=True)
    assert lossy.colors == ((0, 0, 0), (1, 2, 3)) and lossy.ignore_color == (9, 9, 9)
    assert lossy.to_dict() == {"kind": "color", "foreground": None, "colors": [[0, 0, 0], [1, 2, 3]],
                               "names": ["a", "b"], "ignore_color": [9, 9, 9], "lossy": True}
    assert MaskEncoding.from_dict(lossy.to_dict()) == lossy
    for bad in (
        {"kind": "color"},
        {"kind": "color", "colors": [BLACK, BLACK]},
        {"kind": "color", "colors": [BLACK, (256, 0, 0)]},
        {"kind": "color", "colors": [BLACK], "names": ["a", "b"]},
        {"kind": "color", "colors": [BLACK], "ignore_color": BLACK},
        {"kind": "color", "colors": [BLACK], "foreground": 1},
        {"kind": "index", "colors": [BLACK]},
        {"kind": "binary", "foreground": 3, "background": 3},
    ):
        with pytest.raises(ConfigError):
            MaskEncoding(**bad)
    with pytest.raises(ConfigError, match="keys"):
        MaskEncoding.from_dict({"kind": "color", "colours": [[0, 0, 0]]})


def test_describe_encoding_lines():
    assert describe_encoding(MaskEncoding("index")) == "index masks"
    assert describe_encoding(MaskEncoding("binary", 0, 255)) == "binary masks, foreground value 0 (background 255)"
    assert describe_encoding(MaskEncoding("binary")) == "binary masks, foreground = any non-zero value"
    colors = [(i, 0, 0) for i in range(6)]
    assert describe_encoding(MaskEncoding("color", colors=colors)) == "RGB color masks, 6 colors"
    assert "lossy" in describe_encoding(MaskEncoding("binary", 255, lossy=True))


def test_table_text_for_binary_and_index_with_names():
    binary = color_table_text(MaskEncoding("binary", 0, 255), [75, 25])
    assert re.search(r"0\s+value 255\s+background\s+75\.0%", binary)
    assert re.search(r"1\s+value 0\s+foreground\s+25\.0%", binary)
    index = color_table_text(MaskEncoding("index"), [1, 3], names=["sky", "road"])
    assert re.search(r"1\s+value 1\s+road\s+75\.0%", index)
    with pytest.raises(ConfigError, match="3 class names for a table of 2 classes"):
        color_table_text(MaskEncoding("binary"), [1, 1], names=["a", "b", "c"])
