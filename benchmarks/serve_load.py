"""Load test of `masksmith serve` on loopback, with the offline Predictor as the baseline, in one run.

    python benchmarks/serve_load.py [BUNDLE] [--seconds 6] [--clients 1,4,16] [--max-batch 8]

Without a bundle it builds the demo's network (U-Net, base_channels 16, depth 4, 256 px, resize mode,
1 channel; weights untrained: speed does not depend on them) and uses the membrane test slices
(512x512 PNGs) as uploads. Each load run starts its own `masksmith serve` process on 127.0.0.1 (a free
port) and N clients (asyncio + httpx, one connection each) post raw PNG bodies for a fixed time. It
reports requests/s, p50/p95/p99 latency, errors, the server's peak memory (VmHWM) and the machine's
load average, for three batch settings: the default (batch size measured at startup), a fixed
--max-batch (8) and batching off (1); then an overload run (a queue of 4, 32 clients) that must show 503s rather than failures, and a
recovery run after it. The offline baseline is Predictor.predict_batch on the same images at batch
1 and at its best batch size, measured before and after the server runs (the higher counts: other
processes on a shared machine slow one or the other). Every request goes to 127.0.0.1 only, and every loop ends by the clock.

    python benchmarks/serve_load.py [BUNDLE] --attack [--seconds 20] [--clients 2] [--attackers 2]

The attack mode measures what the issue-32 audit's uploads do to other clients: a server started as
the audit started it (`--max-queue 16`, every other setting at its default) takes N small clients for
`--seconds` alone, then a fresh one takes the same clients while `--attackers` loops post, one after the
other, the audit's PNGs: a 1 x 24,000,000 strip (70 KB) and a blank 4999 x 5000 image (24 KB). It prints
the small requests' p50/p95/p99 beside each other, what the attack's requests were answered, how often
/readyz said not ready, and each server's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.data.images import read_image
from masksmith.inference.predictor import Predictor
from masksmith.models import build_model

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "membrane" / "test"


def demo_network_bundle(path: Path) -> Path:
    """The demo's architecture as a bundle (untrained weights: throughput does not depend on them)."""
    torch.manual_seed(0)
    options = {"base_channels": 16, "depth": 4}
    network = build_model("unet", 1, 2, **options)
    meta = BundleMeta(model="unet", model_options=options, in_channels=1, out_channels=2,
                      class_names=["background", "membrane"], colors=[[0, 0, 0], [255, 0, 0]], size=256,
                      resize="resize", mean=[0.5], std=[0.25], mask_encoding={"kind": "index"})
    return save_bundle(path, network.state_dict(), meta)


def offline(bundle: Path, files: list[Path], seconds: float,
            sizes: tuple[int, ...]) -> dict[tuple[str, int], tuple[float, float]]:
    """images/s and median seconds per call of Predictor.predict_batch, per input kind and batch size.

    Inputs: "files" (the image files: decoding included, as `masksmith predict` reads them) and "arrays"
    (already decoded). Timed interleaved (one call each in turn), so load from other processes slows all
    alike, and on a worker thread, as the server's batcher runs the model: on the 2-core machine this was
    written on, torch ran the same network several times slower from the main thread than from another.
    """
    predictor = Predictor.load(bundle, device="cpu")
    arrays = [predictor.to_array(read_image(path, channels=predictor.meta.in_channels)) for path in files]
    inputs = {"files": files, "arrays": arrays}
    batches = {(kind, size): [items[i % len(items)] for i in range(size)]
               for kind, items in inputs.items() for size in sizes}
    calls: dict[tuple[str, int], list[float]] = {key: [] for key in batches}

    def measure() -> None:
        for batch in batches.values():
            predictor.predict_batch(batch)  # warm-up
        started = time.perf_counter()
        while time.perf_counter() - started < seconds * len(batches):
            for key, batch in batches.items():
                t0 = time.perf_counter()
                predictor.predict_batch(batch)
                calls[key].append(time.perf_counter() - t0)

    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
    return {key: (key[1] / statistics.median(times), statistics.median(times)) for key, times in calls.items()}


class Server:
    """`masksmith serve` in its own process on 127.0.0.1, a free port."""

    def __init__(self, bundle: Path, *flags: str):
        command = [sys.executable, "-m", "masksmith.cli", "serve", str(bundle), "--port", "0", "--quiet", *flags]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = self.process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", first)
        if not match:
            self.process.kill()
            raise RuntimeError(f"server did not start: {first}{self.process.stdout.read()}")
        self.url = match.group(1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server never became ready")

    def peak_mb(self) -> float:
        """The server process's peak resident memory so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Load:
    """What N clients saw in one run."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0  # transport errors: refused or dropped connections, timeouts

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)


async def _client(url: str, bodies: list[bytes], until: float, load: Load, offset: int) -> None:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        index = offset
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}v1/segment", content=bodies[index % len(bodies)],
                                             headers={"content-type": "image/png"})
                load.statuses[response.status_code] = load.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    load.latencies.append(time.perf_counter() - started)
                elif response.status_code == 503:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 10)  # back off a little
            except httpx.TransportError:
                load.failures += 1
            index += 1


def run_load(url: str, bodies: list[bytes], clients: int, seconds: float) -> Load:
    """`clients` concurrent clients posting for `seconds`."""
    load = Load()

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(url, bodies, until, load, i) for i in range(clients)))

    started = time.perf_counter()
    asyncio.run(main())
    load.seconds = time.perf_counter() - started
    return load


def attack_bodies() -> dict[str, bytes]:
    """The audit's uploads: a strip of 1 x 24,000,000 pixels and a blank 4999 x 5000 image, as small PNGs."""
    from io import BytesIO

    from PIL import Image

    bodies = {}
    for name, mode, size in (("1x24M strip", "RGB", (24_000_000, 1)), ("blank 4999x5000", "L", (4999, 5000))):
        buffer = BytesIO()
        Image.new(mode, size).save(buffer, format="PNG")
        bodies[name] = buffer.getvalue()
    return bodies


async def _attacker(url: str, bodies: dict[str, bytes], until: float, answers: dict[str, int]) -> None:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        while time.perf_counter() < until:
            for name, body in bodies.items():
                try:
                    response = await client.post(f"{url}v1/segment", content=body,
                                                 headers={"content-type": "image/png"})
                    key = f"{name} {response.status_code}"
                except httpx.TransportError:
                    key = f"{name} failed"
                answers[key] = answers.get(key, 0) + 1


async def _readiness(url: str, until: float, samples: list[bool]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while time.perf_counter() < until:
            samples.append((await client.get(f"{url}readyz")).status_code == 200)
            await asyncio.sleep(0.25)


def run_attack(url: str, bodies: list[bytes], clients: int, attackers: int, seconds: float,
               attack: dict[str, bytes]) -> tuple[Load, dict[str, int], list[bool]]:
    """`clients` small clients for `seconds`, beside `attackers` loops posting the attack's images (0: none)."""
    load, answers, ready = Load(), {}, []

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(url, bodies, until, load, i) for i in range(clients)),
                             *(_attacker(url, attack, until, answers) for _ in range(attackers)),
                             _readiness(url, until, ready))

    started = time.perf_counter()
    asyncio.run(main())
    load.seconds = time.perf_counter() - started
    return load, answers, ready


def attack_table(bundle: Path, bodies: list[bytes], clients: int, attackers: int, seconds: float) -> None:
    """The small clients' latency without and with the audit's attack, each on a fresh server."""
    attack = attack_bodies()
    print("| run | small clients | small ok | p50 ms | p95 ms | p99 ms | small errors | attack's answers "
          "| /readyz not ready | peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for label, count in (("without attack", 0), (f"attack, {attackers} loops", attackers)):
        server = Server(bundle, "--max-queue", "16")
        try:
            load, answers, ready = run_attack(server.url, bodies, clients, count, seconds, attack)
            memory = server.peak_mb()
        finally:
            server.stop()
        ms = [1000 * v for v in load.latencies]
        errors = sum(n for status, n in load.statuses.items() if status != 200) + load.failures
        answered = ", ".join(f"{n}x {key}" for key, n in sorted(answers.items())) or "-"
        unready = f"{ready.count(False)}/{len(ready)}"
        print(f"| {label} | {clients} | {load.count(200)} | {percentile(ms, 50):.0f} | {percentile(ms, 95):.0f} | "
              f"{percentile(ms, 99):.0f} | {errors} | {answered} | {unready} | {memory:.0f} |", flush=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def row(name: str, clients: int, load: Load, memory: float) -> tuple[str, float, float]:
    """Print one table row; return (name, images/s, p50 ms)."""
    ok = load.count(200)
    errors = sum(n for status, n in load.statuses.items() if status not in (200, 503)) + load.failures
    ms = [1000 * v for v in load.latencies]
    rate = ok / load.seconds
    print(f"| {name:<22} | {clients:>3} | {rate:7.1f} | {percentile(ms, 50):7.1f} | {percentile(ms, 95):7.1f} | "
          f"{percentile(ms, 99):7.1f} | {ok:>5} | {load.count(503):>5} | {errors:>4} | {memory:7.0f} | {os.getloadavg()[0]:4.1f} |", flush=True)
    return name, rate, percentile(ms, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load run")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--attack", action="store_true", help="small clients' latency with and without the "
                        "issue-32 audit's uploads (uses the first --clients value)")
    parser.add_argument("--attackers", type=int, default=2, help="attack loops in --attack mode")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or demo_network_bundle(Path(tmp) / "demo-network.msb")
        files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        bodies = [p.read_bytes() for p in files]
        if args.attack:
            print(f"command: python benchmarks/serve_load.py {' '.join(sys.argv[1:])}")
            print(f"model {bundle.name}, {len(files)} images from {args.images}, {os.cpu_count()} CPUs, "
                  f"{args.seconds:g} s per run\n")
            attack_table(bundle, bodies, clients[0], args.attackers, args.seconds)
            return
        print(f"model {bundle.name}, {len(files)} images from {args.images}, {os.cpu_count()} CPUs, "
              f"{args.seconds:g} s per run\n")
        sizes = (1, 2, 4, 8, 16)
        before = offline(bundle, files, args.seconds / 4, sizes)
        print("| server run             | clients | images/s | p50 ms | p95 ms | p99 ms | ok | 503 | errors | peak MB | load |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        results = {}
        settings = (("batching (measured)", ()), (f"batching (<= {args.max_batch})", ("--max-batch", str(args.max_batch))),
                    ("batching off", ("--max-batch", "1")))
        for label, flags in settings:
            for n in clients:
                server = Server(bundle, *flags)
                try:
                    load = run_load(server.url, bodies, n, args.seconds)
                    results[(label, n)] = (row(label, n, load, server.peak_mb()), load)
                finally:
                    server.stop()
        server = Server(bundle, "--max-queue", "4")
        try:
            overload = run_load(server.url, bodies, 32, args.seconds)
            row("overload (queue 4)", 32, overload, server.peak_mb())
            recovery = run_load(server.url, bodies, 1, args.seconds / 2)
            row("recovery after it", 1, recovery, server.peak_mb())
        finally:
            server.stop()
        after = offline(bundle, files, args.seconds / 4, sizes)
        baseline = {key: max(before[key], after[key]) for key in before}  # (images/s, median s): the faster
        print("\n| offline Predictor.predict_batch | images/s before | after | ms per call (faster run) |")
        print("|---|---:|---:|---:|")
        for size in sizes:
            print(f"| batch {size:<2} | {before[('files', size)][0]:7.1f} | {after[('files', size)][0]:7.1f} | "
                  f"{1000 * min(before[('files', size)][1], after[('files', size)][1]):7.1f} |")
        best_size = max(sizes, key=lambda size: baseline[("files", size)][0])
        best_arrays = max(rate for (kind, _), (rate, _) in baseline.items() if kind == "arrays")
        print(f"\nbest offline batch size: {best_size} ({baseline[('files', best_size)][0]:.1f} images/s from files; "
              f"{best_arrays:.1f} images/s at best from already decoded arrays)\n")
        best = baseline[("files", best_size)][0]
        top = max(clients)
        on = results[("batching (measured)", top)][0][1]
        fixed = results[(f"batching (<= {args.max_batch})", top)][0][1]
        off = results[("batching off", top)][0][1]
        one = results[("batching (measured)", min(clients))][0][2]
        offline_ms = 1000 * baseline[("files", 1)][1]
        errors = sum(sum(n for s, n in load.statuses.items() if s != 200) + load.failures
                     for _, load in results.values())
        checks = [
            (f"{top} clients, measured batching: {on:.1f} images/s >= 90% of offline best on files {best:.1f} "
             f"({on / best:.0%}; {on / best_arrays:.0%} of the decoded-array best)", on >= 0.9 * best),
            (f"{top} clients: measured batching {on:.1f}, batches <= {args.max_batch} {fixed:.1f} > batching off "
             f"{off:.1f} images/s", max(on, fixed) > off),
            (f"no errors below the queue limit ({errors} non-200 answers)", errors == 0),
            (f"overload: {overload.count(503)} answered 503, {overload.failures} transport failures, "
             f"other errors {sum(n for s, n in overload.statuses.items() if s not in (200, 503))}",
             overload.count(503) > 0 and overload.failures == 0 and set(overload.statuses) <= {200, 503}),
            (f"recovery: {recovery.count(200)} ok, nothing else", set(recovery.statuses) == {200} and not recovery.failures),
            (f"1 client p50 {one:.1f} ms <= 115% of offline batch-1 on a file {offline_ms:.1f} ms ({one / offline_ms - 1:+.0%})",
             one <= 1.15 * offline_ms),
        ]
        for text, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
