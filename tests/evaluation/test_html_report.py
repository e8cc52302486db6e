"""`evaluate --html`: the self-contained report page, its escaping, undefined scores, and sorting in a real browser.

With MASKSMITH_UPDATE_SCREENSHOT=1 the browser test also writes docs/images/evaluate-report.png (the README's),
from MASKSMITH_SCREENSHOT_REPORT (a report.html made from a real model) when that is set.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import read_meta
from masksmith.cli.app import app
from masksmith.evaluation import html_report
from masksmith.evaluation.html_report import ThumbnailKeeper, render_report
from masksmith.inference.predictor import Predictor
from tests.helpers import make_shapes_dataset

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if path and Path(path).is_file()), None)
HOSTILE_IMAGE = '<img src=x onerror="alert(1)">'  # a legal file name ('/' is the one character a name cannot hold)
HOSTILE_CLASS = "<script>alert(1)</script>"
SECTIONS = {"metrics", "per-class", "confusion", "curves", "images"}
VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "area", "base", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list["Node"] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str) -> list["Node"]:
        """Every descendant with this tag, in document order."""
        found = []
        for child in self.children:
            if child.tag == tag:
                found.append(child)
            found += child.all(tag)
        return found

    def by_id(self, ident: str) -> "Node":
        return next(node for node in self.all_nodes() if node.attrs.get("id") == ident)

    def all_nodes(self) -> list["Node"]:
        return [node for child in self.children for node in (child, *child.all_nodes())]

    def inner_text(self) -> str:
        return self.text + "".join(child.inner_text() for child in self.children)


class StrictParser(HTMLParser):
    """html.parser into a tree; every non-void element must be closed in order (a malformed page fails)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].text += data


def parse(page: str) -> Node:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.stack == [parser.root], f"unclosed: {[node.tag for node in parser.stack[1:]]}"
    return parser.root


def table_rows(root: Node) -> list[Node]:
    return root.by_id("per-image").all("tbody")[0].all("tr")


def dice_column(root: Node) -> list[float | None]:
    values = [row.all("td")[2].attrs["data-value"] for row in table_rows(root)]
    return [float(value) if value else None for value in values]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny trained model on shapes with a hostile image name and a hostile class that no image holds."""
    root = tmp_path_factory.mktemp("html")
    data = make_shapes_dataset(root / "shapes", count=10)
    for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
        (data / folder / f"s09{suffix}").rename(data / folder / f"{HOSTILE_IMAGE}{suffix}")
    (data / "classes.txt").write_text(f"background\nred box\nblue box\n{HOSTILE_CLASS}\n")
    run = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=2, batch_size=4, auto=False,
                          model_options={"base_channels": 4, "depth": 2}, early_stopping=0, out=str(root / "run"),
                          quiet=True)
    result = masksmith.evaluate(run.bundle, data, split="all", out=root / "eval", progress=False, html=True)
    return run, data, result


@pytest.mark.slow
def test_the_page_holds_every_section_with_embedded_images_only(evaluated):
    run, _, result = evaluated
    page_path = Path(result["html"])
    assert page_path == Path(result["out"]) / "report.html"
    page = page_path.read_text(encoding="utf-8")
    root = parse(page)
    assert SECTIONS <= {node.attrs.get("id") for node in root.all("section")}
    images = root.all("img")
    assert images and all(node.attrs["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
                          for node in images)
    assert "http://" not in page and "https://" not in page and not root.all("link")
    assert [node.attrs.get("src") for node in root.all("script")] == [None]  # our inline script only
    # One row per scored image, each with its photo, truth and prediction; worst Dice first.
    rows = table_rows(root)
    assert len(rows) == result["images"] == 10 and all(len(row.all("img")) == 3 for row in rows)
    dice = dice_column(root)
    assert dice == sorted(dice) and dice[0] == pytest.approx(min(r["dice"] for r in result["per_image"]))
    # The run folder is known: its curves are embedded.
    assert root.by_id("curves").all("img")
    # Per-image IoU and pixel accuracy come with Dice; IoU <= Dice holds class by class, so for the means too.
    for row in result["per_image"]:
        assert 0.0 <= row["iou"] <= row["dice"] + 1e-9 and 0.0 <= row["pixel_accuracy"] <= 1.0
    # Thumbnails are at most 96 px on the long side (shrinking is tested with the keeper).
    for node in rows[0].all("img"):
        thumb = Image.open(io.BytesIO(base64.b64decode(node.attrs["src"].split(",", 1)[1])))
        assert thumb.size == (56, 40)  # under 96 px: kept at its size, never enlarged
    # The confusion matrix is row-normalised: the diagonal cell of a present class reports its recall.
    red = result["per_class"][1]
    cell = root.by_id("confusion").all("tbody")[0].all("tr")[1].all("td")[1]
    assert f"{100 * red['recall']:.2f}% of the row" in cell.attrs["title"]


def test_hostile_file_and_class_names_are_escaped(evaluated):
    _, _, result = evaluated
    page = Path(result["html"]).read_text(encoding="utf-8")
    assert HOSTILE_IMAGE not in page and HOSTILE_CLASS not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    root = parse(page)
    assert len(root.all("script")) == 1
    names = [row.all("td")[1].inner_text() for row in table_rows(root)]
    assert HOSTILE_IMAGE in names  # shown as text, not markup
    assert any(HOSTILE_CLASS in node.inner_text() for node in root.by_id("per-class").all("td"))


def test_render_escapes_quotes_and_a_script_end_in_names_and_reasons():
    """Names that try to leave an attribute or the page's own script; a reason with markup."""
    name = '"><script>alert(1)</script><x y="'
    result = {"split": "val", "images": 1, "per_class": [
        {"index": 0, "name": name, "iou": None, "dice": None, "precision": None, "recall": None, "support": 0,
         "predicted": 0}], "confusion_matrix": [[0]], "per_image": [{"name": name, "dice": None, "iou": None,
                                                                     "pixel_accuracy": None}],
        "failed": [{"name": "</script>", "reason": "<b>bad</b>"}]}
    page = render_report(result, colors=np.zeros((1, 3), np.uint8), thumbs={}, curves=None, model=name, data=name)
    root = parse(page)
    assert "<script>alert" not in page and "</script><x" not in page and len(root.all("script")) == 1
    assert not root.all("x") and not root.all("b")
    failed = root.by_id("failed").inner_text()
    assert "</script>" in failed and "<b>bad</b>" in failed  # shown as text
    assert name in root.by_id("images").inner_text() and name in root.by_id("per-class").inner_text()


class AllBackground(nn.Module):
    """A network that predicts background everywhere: the empty prediction."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.classes, x.shape[2], x.shape[3])
        logits[:, 0] = 10.0 * self.scale
        return logits


def test_an_empty_prediction_an_absent_class_and_an_all_ignored_image(evaluated, tmp_path):
    run, data, _ = evaluated
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(copy / "images" / "void.jpg")
    Image.fromarray(np.full((40, 56), 255, np.uint8)).save(copy / "masks" / "void.png")
    meta = read_meta(run.bundle)
    predictor = Predictor(AllBackground(meta.num_classes), meta)
    result = masksmith.evaluate(predictor, copy, split="all", out=tmp_path / "eval", progress=False, html=True)
    root = parse(Path(result["html"]).read_text(encoding="utf-8"))
    # Boxes missed: IoU 0 for the box classes; the class no image holds and none predicts is n/a.
    classes = root.by_id("per-class").all("tbody")[0].all("tr")
    assert [row["iou"] for row in result["per_class"]] == [pytest.approx(result["per_class"][0]["iou"]), 0.0, 0.0, None]
    absent = [td.inner_text() for td in classes[3].all("td")]
    assert absent[2:6] == ["n/a"] * 4 and absent[6:] == ["0", "0"]
    assert classes[1].all("td")[5].inner_text() == "0.000"  # recall of the missed red box
    assert classes[1].all("td")[4].inner_text() == "n/a"  # precision of a class never predicted
    # The absent class's confusion row is hatched, not divided by zero.
    confusion_rows = root.by_id("confusion").all("tbody")[0].all("tr")
    assert all(td.attrs["class"] == "empty" for td in confusion_rows[3].all("td"))
    # Per image: Dice 0 for every image with boxes; the all-ignored image has none (n/a) and sorts last.
    rows = table_rows(root)
    assert len(rows) == result["images"] == 11
    assert dice_column(root) == [0.0] * 10 + [None]
    assert rows[-1].all("td")[1].inner_text() == "void" and rows[-1].all("td")[2].inner_text() == "n/a"
    # A Predictor in memory has no run folder: the page says so instead of showing curves.
    assert not root.by_id("curves").all("img") and "Not available" in root.by_id("curves").inner_text()


def test_thumbnails_are_kept_for_the_worst_images_only(evaluated, tmp_path, monkeypatch):
    run, data, full = evaluated
    monkeypatch.setattr(html_report, "MAX_THUMBNAILS", 3)
    result = masksmith.evaluate(run.bundle, data, split="all", out=tmp_path / "eval", progress=False, html=True)
    root = parse(Path(result["html"]).read_text(encoding="utf-8"))
    rows = table_rows(root)
    assert [len(row.all("img")) for row in rows] == [3] * 3 + [0] * 7
    assert "Thumbnails for the 3 lowest-Dice images only" in root.by_id("images").inner_text()


def test_keeper_keeps_the_lowest_dice_and_ranks_a_missing_one_last():
    colors = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    keeper = ThumbnailKeeper(colors, 255, limit=2)
    image, mask = np.zeros((300, 200, 3), np.uint8), np.zeros((300, 200), np.uint8)
    for index, dice in enumerate([0.9, None, 0.2, 0.5, 0.95]):
        keeper.add(index, dice, image, mask, mask)
    kept = keeper.by_index()
    assert sorted(kept) == [2, 3]
    small = Image.open(io.BytesIO(base64.b64decode(kept[2]["truth"].split(",", 1)[1])))
    assert small.size == (64, 96)  # long side 96, aspect kept


def test_cli_html_flag_writes_and_prints_the_page(evaluated, tmp_path):
    run, data, _ = evaluated
    result = CliRunner().invoke(app, ["evaluate", str(run.bundle), str(data), "--split", "all", "--html", "-q",
                                      "--out", str(tmp_path / "cli")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"html: {tmp_path / 'cli' / 'report.html'}" in result.output
    assert (tmp_path / "cli" / "report.html").is_file()
    plain = CliRunner().invoke(app, ["evaluate", str(run.bundle), str(data), "--split", "all", "-q",
                                     "--out", str(tmp_path / "plain")], catch_exceptions=False)
    assert plain.exit_code == 0 and not (tmp_path / "plain" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_the_table_sorts_in_a_real_browser(evaluated, tmp_path):
    from playwright.sync_api import sync_playwright

    _, _, result = evaluated
    wanted = os.environ.get("MASKSMITH_SCREENSHOT_REPORT") if os.environ.get("MASKSMITH_UPDATE_SCREENSHOT") else None
    page_path = Path(wanted or result["html"]).resolve()
    dialogs: list[str] = []
    with sync_playwright() as driver:
        # --no-sandbox: Chromium's sandbox cannot start as root (CI runs as root).
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(page_path.as_uri())

        def column(index: int) -> list[str]:
            return page.eval_on_selector_all(
                "#per-image tbody tr", f"rows => rows.map(r => r.cells[{index}].dataset.value)")

        def numbers(values: list[str]) -> list[float]:
            return [float(value) for value in values if value]

        first, start_names = column(2), column(1)
        assert numbers(first) == sorted(numbers(first))  # worst first
        page.click("#per-image th:nth-child(3) button")  # Dice
        descending = column(2)
        assert numbers(descending) == sorted(numbers(first), reverse=True)
        assert page.get_attribute("#per-image th:nth-child(3)", "aria-sort") == "descending"
        page.click("#per-image th:nth-child(3) button")
        assert column(2) == first
        page.click("#per-image th:nth-child(2) button")  # by name
        assert column(1) == sorted(start_names) != start_names
        page.click("#per-image th:nth-child(3) button")
        shot = tmp_path / "evaluate-report.png"
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert not dialogs  # the hostile names ran nothing
    assert shot.stat().st_size > 10_000
    if os.environ.get("MASKSMITH_UPDATE_SCREENSHOT"):
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "images" / "evaluate-report.png")
