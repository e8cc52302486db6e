"""What keeps running after `kill -9` of a `predict --engine ray` driver, and for how long.

    python benchmarks/ray_driver_kill.py [--images 2000] [--side 256] [--kill-after 50]

Starts `masksmith predict --engine ray` (a local Ray instance) on --images copies of the shipped membrane
slices with the untrained small U-Net of benchmarks/batch_predict.py, SIGKILLs the driver once --kill-after
masks exist, then watches every second: how many masks appear after the kill (the batches the actors had
already taken) and which of the driver's descendants (Ray's GCS, raylet, dashboard agents, the actors) are
still alive, until none is.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_predict import MASKSMITH, make_images, untrained_bundle  # noqa: E402


def descendants(root: int) -> dict[int, str]:
    """pid -> command name of every process below `root` (read from /proc)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        names[int(entry.name)] = name
        children.setdefault(int(rest[1]), []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = names[child]
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--kill-after", type=int, default=50, help="masks written before the driver is killed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="masksmith-kill-") as scratch:
        root = Path(scratch)
        images = make_images(root / "images", args.images, args.side)
        bundle = untrained_bundle(root / "small.msb", "small")
        out = root / "out"
        driver = subprocess.Popen([*MASKSMITH, "predict", str(bundle), str(images), "--out", str(out), "--engine",
                                   "ray", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        while len(list(out.rglob("*.png"))) < args.kill_after:
            if driver.poll() is not None:
                raise SystemExit("the prediction ended before the kill; raise --images")
            time.sleep(0.2)
        tree = descendants(driver.pid)
        written = len(list(out.rglob("*.png")))
        os.kill(driver.pid, signal.SIGKILL)
        killed = time.monotonic()
        driver.wait()
        print(f"killed the driver with {written} masks written; {len(tree)} processes below it: "
              f"{', '.join(sorted(set(tree.values())))}")
        last_mask, masks = 0.0, written
        while True:
            time.sleep(1.0)
            now = len(list(out.rglob("*.png")))
            if now != masks:
                masks, last_mask = now, time.monotonic() - killed
            living = {pid: name for pid, name in tree.items() if alive(pid)}
            print(f"{time.monotonic() - killed:5.0f} s: {masks} masks, {len(living)} processes alive "
                  f"({', '.join(sorted(set(living.values())))})")
            if not living or time.monotonic() - killed > 600:
                break
        print(f"after the kill: {masks - written} more masks, the last {last_mask:.0f} s after it; the last of "
              f"the driver's processes ended {time.monotonic() - killed:.0f} s after it "
              f"(of {args.images} images, {masks} written)")
        for pid in tree:  # anything still alive after 600 s
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
