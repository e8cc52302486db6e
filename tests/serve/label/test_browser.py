"""The label page in a real browser: headless Chromium (Debian's, driven by Playwright) on a live uvicorn at
127.0.0.1. Real mouse and keyboard events draw; every test reads the mask PNG written on disk.

With MASKSMITH_UPDATE_SCREENSHOT=1 the editor screenshot is also written to docs/images/label.png (docs/labelling.md's).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")
pytest.importorskip("playwright", reason="the browser tests need playwright (test extra)")

from masksmith.serve.label.layout import image_id  # noqa: E402
from masksmith.serve.label.provenance import PROVENANCE_NAME  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from tests.label_helpers import copy_some, make_app, open_session, read_png  # noqa: E402
from tests.serve_helpers import BROWSER_TESTS, launch_chromium, live_server, train_tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
pytestmark = BROWSER_TESTS


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = launch_chromium(driver)
        yield launched
        launched.close()


def _open(browser, url, errors):
    page = browser.new_page(viewport={"width": 1400, "height": 860})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    return page


def _show(page, name):
    """Open an image by clicking its row in the queue."""
    page.click(f"#queue li[data-id='{image_id(name)}']")
    page.wait_for_function(f"() => document.body.dataset.image === '{image_id(name)}' && "
                           "document.body.dataset.state === 'ready'", timeout=30_000)


def _client(page, x, y):
    return page.evaluate("([x, y]) => masksmithLabel.toClient(x, y)", [x, y])


def _drag(page, points, steps=8):
    """Press the left button at the first image point, move through the others, release."""
    page.mouse.move(*_client(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*_client(page, *point), steps=steps)
    page.mouse.up()


def _click(page, x, y):
    page.mouse.click(*_client(page, x, y))


def _save(page, key="Control+s"):
    page.evaluate("delete document.body.dataset.saved")
    page.keyboard.press(key)
    page.wait_for_function("() => document.body.dataset.saved", timeout=30_000)
    return page.evaluate("document.body.dataset.saved")


def _distance_to_segment(shape, a, b):
    """Distance of every pixel centre to the segment a-b (image coordinates x, y)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    (ax, ay), (bx, by) = a, b
    t = np.clip(((xs - ax) * (bx - ax) + (ys - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(xs - (ax + t * (bx - ax)), ys - (ay + t * (by - ay)))


def test_brush_stroke_class_key_undo_redo_save(browser, shapes):
    original = read_png(shapes / "masks" / "s02.png").copy()
    errors: list[str] = []
    with live_server(make_app(open_session(shapes))) as (url, _):
        page = _open(browser, url, errors)
        _show(page, "images/s02.jpg")
        assert page.evaluate("document.body.dataset.start") == "mask"
        for _ in range(4):
            page.keyboard.press("[")  # 12 -> 10 -> 9 -> 8 -> 7 pixels
        assert page.input_value("#size") == "7"
        radius = 3.5
        first, second, third = ((6, 8), (50, 8)), ((6, 21), (50, 21)), ((6, 33), (50, 33))
        page.keyboard.press("1")
        _drag(page, first)
        page.keyboard.press("2")
        assert page.locator("#legend li.current").inner_text().endswith("blue box")
        _drag(page, second)
        page.keyboard.press("Control+z")  # the second stroke is gone ...
        page.keyboard.press("Control+Shift+z")  # ... and back
        _drag(page, third)
        page.keyboard.press("Control+z")  # the third is gone for good
        assert page.evaluate("document.body.dataset.dirty") == "yes"
        assert _save(page).startswith("sha256:")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('saved')")
        page.close()
    written = read_png(shapes / "masks" / "s02.png")
    near = [_distance_to_segment(written.shape, *segment) for segment in (first, second)]
    # Along each stroke its class, beside it what was there, between the two a band the brush edge may touch.
    assert np.all(written[near[0] <= radius - 1] == 1) and np.all(written[near[1] <= radius - 1] == 2)
    untouched = (near[0] > radius + 1) & (near[1] > radius + 1)
    assert np.array_equal(written[untouched], original[untouched])
    changed = written != original
    assert set(np.unique(written[changed]).tolist()) <= {1, 2}
    assert np.all(changed <= ((near[0] <= radius + 1) | (near[1] <= radius + 1)))
    record = json.loads((shapes / "masks" / PROVENANCE_NAME).read_text())
    assert record["masks"]["s02.png"]["by"] == "corrected" and not errors


def test_polygon_fill_and_escape(browser, shapes):
    errors: list[str] = []
    with live_server(make_app(open_session(shapes))) as (url, _):
        page = _open(browser, url, errors)
        _show(page, "images/s06.jpg")
        assert page.evaluate("document.body.dataset.start") == "empty"
        page.keyboard.press("p")
        page.keyboard.press("1")
        _click(page, 3, 3)
        _click(page, 20, 3)
        page.keyboard.press("Escape")  # a polygon given up: nothing is filled
        for x, y in ((10, 10), (40, 10), (40, 30), (10, 30), (10, 10)):  # the last click closes it
            _click(page, x, y)
        page.keyboard.press("g")
        page.keyboard.press("2")
        _click(page, 2, 2)  # fill the background around the polygon
        _save(page)
        page.close()
    written = read_png(shapes / "masks" / "s06.png")
    expected = np.full((40, 56), 2, np.uint8)
    expected[10:30, 10:40] = 1  # the pixels whose centres lie inside the polygon
    assert np.array_equal(written, expected) and not errors
    assert json.loads((shapes / "masks" / PROVENANCE_NAME).read_text())["masks"]["s06.png"]["by"] == "drawn"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, bundle = train_tiny(tmp_path_factory.mktemp("label-browser"))
    return ServedModel.load(bundle)


def test_accept_a_prediction_and_the_model_region(browser, shapes, model):
    import httpx

    errors: list[str] = []
    with live_server(make_app(open_session(shapes, model=model))) as (url, _):
        predicted = {}
        for name in ("s06", "s07"):
            response = httpx.get(f"{url}api/images/{image_id(f'images/{name}.jpg')}/prediction", timeout=60)
            import zlib

            predicted[name] = np.frombuffer(zlib.decompress(response.content), np.uint8).reshape(40, 56)
        page = _open(browser, url, errors)
        _show(page, "images/s07.jpg")
        assert page.evaluate("document.body.dataset.start") == "prediction"
        assert page.is_visible("#accept")
        _save(page, "a")
        _show(page, "images/s06.jpg")
        # The region assist: the model's connected region under the click, in the class picked.
        y, x = map(int, np.argwhere(predicted["s06"] == 0)[0])
        page.keyboard.press("r")
        page.keyboard.press("2")
        _click(page, x + 0.5, y + 0.5)
        page.wait_for_function("() => document.body.dataset.dirty === 'yes'", timeout=30_000)
        _save(page)
        page.close()
    assert np.array_equal(read_png(shapes / "masks" / "s07.png"), predicted["s07"])
    record = json.loads((shapes / "masks" / PROVENANCE_NAME).read_text())["masks"]
    assert record["s07.png"] == {**record["s07.png"], "by": "corrected", "model": model.checksum}
    import cv2

    _, labels = cv2.connectedComponents((predicted["s06"] == 0).astype(np.uint8), connectivity=4)
    expected = predicted["s06"].copy()
    expected[labels == labels[y, x]] = 2
    assert np.array_equal(read_png(shapes / "masks" / "s06.png"), expected) and not errors


def test_two_tabs_the_older_save_gets_the_conflict(browser, shapes):
    errors: list[str] = []
    with live_server(make_app(open_session(shapes))) as (url, _):
        first, second = _open(browser, url, errors), _open(browser, url, errors)
        for page in (first, second):
            _show(page, "images/s03.jpg")
        first.keyboard.press("1")
        _drag(first, ((5, 5), (50, 5)))
        _save(first)
        after_first = read_png(shapes / "masks" / "s03.png").copy()
        second.keyboard.press("2")
        _drag(second, ((5, 30), (50, 30)))
        assert _save(second) == "conflict"
        assert second.is_visible("#conflict") and "changed" in second.inner_text("#conflict-text")
        assert np.array_equal(read_png(shapes / "masks" / "s03.png"), after_first)  # not replaced silently
        second.evaluate("delete document.body.dataset.saved")
        second.click("#conflict-overwrite")  # knowingly
        second.wait_for_function("() => (document.body.dataset.saved || '').startsWith('sha256:')", timeout=30_000)
        first.close()
        second.close()
    final = read_png(shapes / "masks" / "s03.png")
    assert np.all(final[30] == 2) and not np.array_equal(final, after_first) and not errors


@pytest.mark.parametrize("kind", ["membrane", "folder without masks"])
def test_a_stroke_saved_in_membrane_and_fresh_folder_encodings(browser, tmp_path, kind):
    from masksmith.serve.label.store import LabelOptions

    if kind == "membrane":  # 0/255 binary masks, 0 = membrane (the foreground)
        data = copy_some(REPO / "examples" / "membrane", tmp_path / "membrane", ["0", "1"])
        (data / "masks" / "1.png").unlink()
        options, name, target = LabelOptions(foreground=0), "images/1.png", data / "masks" / "1.png"
    else:  # photos only: masks go beside them as NAME_mask.png, which train pairs
        data = tmp_path / "photos"
        data.mkdir()
        shutil.copy(REPO / "examples" / "membrane" / "test" / "0.png", data / "slice.png")
        (data / "classes.txt").write_text("background\nmembrane\n")
        options, name, target = LabelOptions(), "slice.png", data / "slice_mask.png"
    errors: list[str] = []
    with live_server(make_app(open_session(data, options))) as (url, _):
        page = _open(browser, url, errors)
        _show(page, name)
        assert page.evaluate("document.body.dataset.start") == "empty"
        page.keyboard.press("1")
        _drag(page, ((20, 256), (490, 256)))
        _save(page)
        page.close()
    written = read_png(target)
    distance = _distance_to_segment(written.shape, (20, 256), (490, 256))
    marked = written == 0 if kind == "membrane" else written == 1
    assert set(np.unique(written).tolist()) == ({0, 255} if kind == "membrane" else {0, 1})
    assert np.all(marked[distance <= 5]) and not np.any(marked[distance > 7.5]) and not errors


def test_editor_screenshot_on_clothing(browser, ccp_dir, tmp_path):
    names = ["0002", "0005", "0011", "0014", "0023", "0042"]
    data = copy_some(ccp_dir, tmp_path / "clothing", names, extras=("classes.txt",))
    for name in names[3:]:
        (data / "masks" / f"{name}.png").unlink()
    errors: list[str] = []
    session = open_session(data)
    session.data = "clothing"  # the command line's DATA, as a reader would type it
    with live_server(make_app(session)) as (url, _):
        page = _open(browser, url, errors)
        _show(page, "images/0002.jpg")
        page.keyboard.press("9")  # a class by key: 9 is "bracelet" in the clothing list
        _drag(page, ((260, 700), (300, 760), (330, 780)))
        page.keyboard.press("p")
        for x, y in ((330, 180), (420, 200), (430, 330), (360, 360)):
            _click(page, x, y)
        page.mouse.move(*_client(page, 320, 300))
        shot = tmp_path / "label.png"
        page.screenshot(path=str(shot))
        page.keyboard.press("Escape")
        _save(page)
        page.close()
    assert shot.stat().st_size > 50_000 and not errors
    original, written = read_png(ccp_dir / "masks" / "0002.png"), read_png(data / "masks" / "0002.png")
    changed = written != original
    assert changed.any() and np.all(written[changed] == 9)  # the stroke, and nothing else
    if os.environ.get("MASKSMITH_UPDATE_SCREENSHOT"):
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "images" / "label.png")
