"""data/encoding.py: the one ignore default (DEFAULT_IGNORE_INDEX) and who may restate it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import masksmith
from masksmith.bundle import BundleMeta
from masksmith.config import TrainConfig
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.training.losses import build_loss
from masksmith.visualize import overlay

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


# cli/app.py's `check --ignore-index` option still says typer.Option(255): cli/app.py belongs to another change.
EXEMPT = {"cli/app.py"}


def test_no_signature_restates_the_ignore_default():
    # Regression (issue 12): ~20 signatures outside data/ each said `ignore_index: int = 255`. A
    # caller that knows its dataset passes the value; the few public defaults read the constant.
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
