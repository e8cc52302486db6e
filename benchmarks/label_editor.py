"""How fluid the label page's editor is on a large photo, beside a clothing-sized one, in one run.

    python benchmarks/label_editor.py [--sizes 550x825,4000x3000] [--frames 120]

For each size a one-image dataset (a synthetic JPEG photo and an index mask) is served by `masksmith label`'s
app on 127.0.0.1 and opened in headless Chromium (Debian's, through Playwright). The table gives the time to
load the page and open the image (until it can be edited), then the time per animation frame while a brush stroke moves one
step each frame, and while the view zooms one wheel step each frame: the browser draws at most one frame
per display refresh (about 16.7 ms), so a fluid editor stays near that on both sizes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ helpers: the live server

FRAME_LOOP = """async ([frames, kind]) => {
  const canvas = document.getElementById('view');
  const rect = canvas.getBoundingClientRect();
  const cx = rect.left + rect.width / 2, cy = rect.top + rect.height / 2;
  const at = (i) => ({ clientX: cx - 200 + (400 * i) / frames, clientY: cy + 60 * Math.sin(i / 8), bubbles: true,
                       pointerId: 1, button: 0, buttons: 1, isPrimary: true });
  if (kind === 'brush') canvas.dispatchEvent(new PointerEvent('pointerdown', at(0)));
  const times = [];
  await new Promise((done) => {
    let i = 0, last = performance.now();
    const step = () => {
      const now = performance.now();
      if (i > 0) times.push(now - last);
      last = now;
      if (i === frames) { done(); return; }
      i += 1;
      if (kind === 'brush') canvas.dispatchEvent(new PointerEvent('pointermove', at(i)));
      else canvas.dispatchEvent(new WheelEvent('wheel', { clientX: cx, clientY: cy, deltaY: i % 40 < 20 ? -40 : 40,
                                                          bubbles: true, cancelable: true }));
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  });
  if (kind === 'brush') canvas.dispatchEvent(new PointerEvent('pointerup', at(frames)));
  times.sort((a, b) => a - b);
  return [times.reduce((a, b) => a + b, 0) / times.length, times[Math.floor(times.length * 0.95)]];
}"""


def make_dataset(root: Path, width: int, height: int) -> Path:
    """One photo-like JPEG (smooth gradients and noise, so it compresses like a photo) and an index mask."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xs / 97.0), 128 + 100 * np.cos(ys / 61.0), 128 + 80 * np.sin((xs + ys) / 150.0)], 2)
    photo = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    mask = ((xs // 300 + ys // 300) % 3).astype(np.uint8)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(photo).save(root / "images" / "photo.jpg", quality=90)
    Image.fromarray(mask).save(root / "masks" / "photo.png")
    (root / "classes.txt").write_text("background\nleft\nright\n")
    return root


def measure(browser, url: str, frames: int) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=120_000)
    opened = time.perf_counter() - started
    page.keyboard.press("]")
    brush = page.evaluate(FRAME_LOOP, [frames, "brush"])
    zoom = page.evaluate(FRAME_LOOP, [frames, "zoom"])
    page.close()
    return {"open_s": opened, "brush_ms": brush[0],
            "brush_p95_ms": brush[1], "zoom_ms": zoom[0], "zoom_p95_ms": zoom[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="550x825,4000x3000", help="WIDTHxHEIGHT, comma-separated")
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from masksmith.serve.label.app import Session, create_app
    from masksmith.serve.label.store import LabelStore
    from tests.serve_helpers import live_server

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    rows = []
    with tempfile.TemporaryDirectory() as temp, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            data = make_dataset(Path(temp) / size, width, height)
            session = Session(LabelStore.open(data), str(data))
            with live_server(create_app(session)) as (url, _):
                rows.append((size, measure(browser, url, args.frames)))
        browser.close()
    print(f"{'image':>11}  {'open s':>7}  {'brush ms/frame':>14}  {'p95':>6}  {'zoom ms/frame':>13}  {'p95':>6}")
    for size, row in rows:
        print(f"{size:>11}  {row['open_s']:7.2f}  {row['brush_ms']:14.1f}  {row['brush_p95_ms']:6.1f}  "
              f"{row['zoom_ms']:13.1f}  {row['zoom_p95_ms']:6.1f}")


if __name__ == "__main__":
    main()
