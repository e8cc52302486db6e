"""The web page in a real browser: headless Chromium (Debian's package, driven by Playwright) opens the page
served by uvicorn on 127.0.0.1, uploads an image, and the overlay, legend and downloads are checked.

With MASKSMITH_UPDATE_SCREENSHOT=1 the screenshot is also written to docs/images/serve.png (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")

import masksmith  # noqa: E402
from masksmith.serve.app import create_app  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from masksmith.serve.options import ServeOptions  # noqa: E402
from tests.helpers import make_shapes_dataset  # noqa: E402
from tests.serve_helpers import BROWSER_TESTS, launch_chromium, live_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = BROWSER_TESTS


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
    """A small model that has learnt the shapes (so the overlay shows them), and an image to upload."""
    root = tmp_path_factory.mktemp("browser")
    data = make_shapes_dataset(root / "shapes", count=16, size=(96, 128))
    # Plain settings (no auto plan): 20 epochs learn the boxes well enough for a screenshot worth showing.
    run = masksmith.train(data, classes=str(data / "classes.txt"), size=64, epochs=20, batch_size=4, lr=3e-3,
                          model_options={"base_channels": 8, "depth": 3}, early_stopping=0, auto=False,
                          out=str(root / "run"), quiet=True)
    return run.bundle, data / "images" / "s03.jpg"


def test_page_segments_an_upload_and_offers_the_downloads(model_and_image, tmp_path):
    from playwright.sync_api import sync_playwright

    bundle, image = model_and_image
    app = create_app(ServedModel.load(bundle), ServeOptions())
    with live_server(app) as (url, _), sync_playwright() as driver:
        expected = httpx.post(f"{url}v1/segment?format=json", files={"image": (image.name, image.read_bytes())},
                              timeout=60).json()
        mask_png = httpx.post(f"{url}v1/segment", files={"image": (image.name, image.read_bytes())}, timeout=60).content
        browser = launch_chromium(driver)
        page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        # Everything the page's Content-Security-Policy blocks is recorded: the page must need none of it.
        page.add_init_script("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
                             "e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));")
        answer = page.goto(url)
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["x-content-type-options"] == "nosniff"
        page.wait_for_function("() => document.getElementById('model-id').textContent.length > 0")
        card = page.locator("#card-facts").inner_text()
        assert "red box" in card and "shapes" in card and "results.json" in card
        page.set_input_files("#file", str(image))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)

        # The overlay: exactly the non-background pixels of the served mask are painted, in their class color.
        painted = page.evaluate("""() => {
            const c = document.getElementById('mask');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n += 1;
            return [c.width, c.height, n];
        }""")
        foreground = sum(c["pixels"] for c in expected["classes"][1:])
        assert painted == [expected["width"], expected["height"], foreground] and foreground > 0
        rows = page.locator("#legend tbody tr")
        assert rows.count() == 3
        for index, entry in enumerate(expected["classes"]):
            text = rows.nth(index).inner_text()
            assert entry["name"] in text and f"{100 * entry['share']:.1f}%" in text
        assert "ms round trip" in page.locator("#latency").inner_text()
        page.fill("#opacity", "30")
        page.dispatch_event("#opacity", "input")
        assert page.eval_on_selector("#mask", "e => e.style.opacity") == "0.3"

        with page.expect_download() as mask_download:
            page.click("#download-mask")
        assert mask_download.value.suggested_filename == "s03.png"
        assert Path(mask_download.value.path()).read_bytes() == mask_png
        with page.expect_download() as json_download:
            page.click("#download-json")
        downloaded = json.loads(Path(json_download.value.path()).read_text())
        assert downloaded["classes"] == expected["classes"] and downloaded["rle"] == expected["rle"]

        page.fill("#opacity", "55")
        page.dispatch_event("#opacity", "input")
        assert page.evaluate("window.cspViolations") == []
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("MASKSMITH_UPDATE_SCREENSHOT"):
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "images" / "serve.png")
