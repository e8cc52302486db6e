"""Decoding ahead and writing behind the model (masksmith.inference.pipeline): the same bytes as one step after
the other, in order, with failures listed per image, a failed write one line, and memory bounded (counted by
instrumenting the stages, never by timing)."""

from __future__ import annotations

import errno
import itertools
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.inference import predictor as predict_module
from masksmith.cli.app import app
from masksmith.errors import ConfigError
from masksmith.evaluation.scoring import evaluate
from masksmith.inference.pipeline import DEPTH_ENV_VAR, Prefetch, Writer, pipeline_depth
from masksmith.inference.predictor import Predictor, predict_files
from masksmith.inference.ray_engine import Segmenter
from tests.helpers import make_shapes_dataset, untrained_bundle

PIPELINE_THREADS = ("masksmith-prefetch", "masksmith-writer")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """An untrained 3-class bundle (speed and bytes do not depend on training), a labelled dataset, and a folder
    of 23 photos of several sizes in nested folders with an undecodable file in the middle."""
    root = tmp_path_factory.mktemp("pipeline")
    data = make_shapes_dataset(root / "shapes", count=6)
    bundle = untrained_bundle(root / "model.msb", class_names=["background", "red box", "blue box"])
    photos = root / "photos"
    rng = np.random.default_rng(0)
    for index in range(23):
        folder = photos / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        height, width = (24, 40) if index % 3 else (40 + index, 36)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    (photos / "a" / "11.png").write_bytes(b"not an image")  # the middle of the run
    return {"bundle": bundle, "photos": photos, "data": data}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _no_pipeline_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name in PIPELINE_THREADS]


# --- the stages themselves --------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_yields_every_result_in_order(depth):
    with Prefetch(range(50), lambda n: n * n, depth=depth) as results:
        assert list(results) == [(n, n * n) for n in range(50)]
    assert _no_pipeline_threads()


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_prefetch_never_holds_more_than_its_depth(depth):
    """The loader runs ahead as far as it may (the consumer waits for it), and never further."""
    state = {"started": 0, "consumed": 0, "most": 0}
    changed = threading.Condition()

    def load(n: int) -> int:
        with changed:
            state["started"] += 1
            state["most"] = max(state["most"], state["started"] - state["consumed"])
            changed.notify_all()
        return n

    with Prefetch(range(40), load, depth=depth) as results:
        for n, _ in results:
            with changed:  # let the loader get as far ahead as it can before taking the next one
                changed.wait_for(lambda: state["started"] - state["consumed"] > depth or state["started"] == 40,
                                 timeout=30)
                state["consumed"] += 1
    # depth queued, one being loaded; one more when the consumer has taken an item but not yet counted it.
    assert depth + 1 <= state["most"] <= depth + 2


def test_prefetch_holds_one_item_at_a_time_past_its_byte_limit():
    held = {"started": 0, "consumed": 0, "most": 0}
    lock = threading.Lock()

    def load(n: int) -> bytes:
        with lock:
            held["started"] += 1
            held["most"] = max(held["most"], held["started"] - held["consumed"])
        return b"x" * 1000

    with Prefetch(range(30), load, depth=8, size=len, max_bytes=1500) as results:
        for _ in results:
            with lock:
                held["consumed"] += 1
    assert held["most"] <= 3  # one queued (a second would pass 1500 bytes), one loading, one being taken


def test_a_load_error_comes_after_the_results_before_it():
    def load(n: int) -> int:
        if n == 5:
            raise ValueError("item 5 is broken")
        return n

    seen = []
    with pytest.raises(ValueError, match="item 5"), Prefetch(range(10), load, depth=2) as results:
        for n, _ in results:
            seen.append(n)
    assert seen == [0, 1, 2, 3, 4]
    assert _no_pipeline_threads()


def test_leaving_early_stops_the_loader_of_an_endless_source():
    started = itertools.count()
    with Prefetch(itertools.count(), lambda n: next(started), depth=2) as results:
        for n, _ in results:
            if n == 3:
                break
    assert _no_pipeline_threads()
    assert next(started) <= 3 + 1 + 2 + 1  # taken, the one loading, the queued ones: then it stopped


@pytest.mark.parametrize("depth", [0, 2])
def test_the_writer_runs_jobs_in_order_and_raises_the_first_error_in_the_caller(depth):
    done: list[int] = []

    def job(n: int) -> None:
        if n == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        done.append(n)

    with pytest.raises(OSError, match="No space left"), Writer(depth=depth) as writer:
        for n in range(20):
            writer.submit(lambda n=n: job(n))
    assert done == [0, 1, 2, 3]  # in order, and nothing after the failed one
    assert _no_pipeline_threads()


def test_the_writer_finishes_what_it_was_given_when_the_caller_fails():
    done: list[int] = []
    with pytest.raises(RuntimeError, match="model"), Writer(depth=3) as writer:
        for n in range(3):
            writer.submit(lambda n=n: done.append(n))
        raise RuntimeError("the model failed")
    assert done == [0, 1, 2]


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "65"])
def test_a_bad_depth_setting_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv(DEPTH_ENV_VAR, value)
    with pytest.raises(ConfigError, match=DEPTH_ENV_VAR):
        pipeline_depth()


def test_predict_refuses_a_bad_depth_setting_before_making_out(world, tmp_path, monkeypatch):
    monkeypatch.setenv(DEPTH_ENV_VAR, "lots")
    result = CliRunner().invoke(app, ["predict", str(world["bundle"]), str(world["photos"]), "--out",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2 and DEPTH_ENV_VAR in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# --- predict, both engines, and evaluate ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4])
def test_predict_writes_the_sequential_bytes_in_order_and_lists_the_broken_image(world, tmp_path, batch_size):
    predictor = Predictor.load(world["bundle"], device="cpu")
    reports = {}
    for depth in (0, 2):
        reports[depth] = predict_files(predictor, [world["photos"]], tmp_path / str(depth), overlay_images=True,
                                       batch_size=batch_size, progress=False, depth=depth)
    sequential, overlapped = _files(tmp_path / "0"), _files(tmp_path / "2")
    assert sequential == overlapped
    assert "a/11.png" not in overlapped and "b/12.png" in overlapped and "overlays/a/13.jpg" in overlapped
    assert [p.relative_to(tmp_path / "2") for p in reports[2].written] == \
        [p.relative_to(tmp_path / "0") for p in reports[0].written]
    assert [str(p.name) for p, _ in reports[2].failed] == ["11.png"]
    assert "11.png" in overlapped["failures.csv"].decode()


def test_predict_never_decodes_more_than_its_depth_ahead(world, tmp_path, monkeypatch):
    predictor = Predictor.load(world["bundle"], device="cpu")
    counts = {"decoded": 0, "predicted": 0, "most": 0}
    lock = threading.Lock()
    real_read, real_probabilities = predict_module.read_batch, predictor.probabilities

    def read_batch(*args, **kwargs):
        arrays, readable, failed = real_read(*args, **kwargs)
        with lock:
            counts["decoded"] += len(arrays)
            counts["most"] = max(counts["most"], counts["decoded"] - counts["predicted"])
        return arrays, readable, failed

    def probabilities(arrays, *args, **kwargs):
        with lock:
            counts["predicted"] += len(arrays)
        return real_probabilities(arrays, *args, **kwargs)

    monkeypatch.setattr(predict_module, "read_batch", read_batch)
    monkeypatch.setattr(predictor, "probabilities", probabilities)
    predict_files(predictor, [world["photos"]], tmp_path / "out", batch_size=2, progress=False, depth=1)
    assert counts["predicted"] == 22
    # One batch queued, one being decoded and one taken but not yet counted, of 2 images each.
    assert counts["most"] <= 2 * (1 + 2)


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_and_the_masks_before_it_are_written(world, tmp_path, monkeypatch):
    real = Path.write_bytes
    calls = {"n": 0}
    out = tmp_path / "out"

    def write_bytes(self, data):
        if out in self.parents:  # the masks' disk (the model's ONNX cache lives elsewhere)
            calls["n"] += 1
            if calls["n"] > 9:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    result = CliRunner().invoke(app, ["predict", str(world["bundle"]), str(world["photos"]), "--out", str(out),
                                      "-b", "2", "-q"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in " ".join(result.output.split("\n ")), result.output
    assert "Traceback" not in result.output
    assert len([p for p in out.rglob("*.png")]) == 9  # every mask before the failed one, none after it
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert _no_pipeline_threads()


def test_ctrl_c_stops_both_threads_and_leaves_no_temporary_file(world, tmp_path, monkeypatch):
    predictor = Predictor.load(world["bundle"], device="cpu")
    real = predictor.probabilities
    calls = {"n": 0}

    def probabilities(arrays, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(arrays, *args, **kwargs)

    monkeypatch.setattr(predictor, "probabilities", probabilities)
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, [world["photos"]], tmp_path / "out", batch_size=2, progress=False, depth=2)
    assert _no_pipeline_threads()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    assert len(list((tmp_path / "out").rglob("*.png"))) <= 4  # the first two batches at most


def _segment(world: dict[str, Path], out: Path, depth: int) -> dict[str, np.ndarray]:
    items = sorted((p for p in world["photos"].rglob("*.png")), key=str)
    segmenter = Segmenter([str(world["bundle"])], str(out), threads=1, batch_size=3,
                          load_options={"device": "cpu"}, threshold=None, mask_format="palette",
                          overlay_images=True, depth=depth)
    rows = {"index": np.arange(len(items)), "path": np.array([str(p) for p in items], dtype=object),
            "relative": np.array([str(p.relative_to(world["photos"])) for p in items], dtype=object)}
    return segmenter(rows)


def test_a_ray_actor_writes_the_sequential_bytes_and_reports_each_image(world, tmp_path):
    outcomes = {depth: _segment(world, tmp_path / str(depth), depth) for depth in (0, 2)}
    assert _files(tmp_path / "0") == _files(tmp_path / "2") != {}
    for key in ("mask", "reason"):
        assert [str(v).replace(str(tmp_path / "2"), "OUT") for v in outcomes[2][key]] == \
            [str(v).replace(str(tmp_path / "0"), "OUT") for v in outcomes[0][key]]
    reasons = [reason for reason in outcomes[2]["reason"] if reason]
    assert len(reasons) == 1 and "11.png" in reasons[0]


def test_a_ray_actor_reports_a_failed_write_per_image_and_writes_the_rest(world, tmp_path, monkeypatch):
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".04."):  # the temporary file of b/04.png's mask or overlay
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    outcome = _segment(world, tmp_path / "out", depth=2)
    reasons = [reason for reason in outcome["reason"] if reason]
    assert len(reasons) == 2 and "a/11.png: cannot read image" in reasons[0]
    assert "b/04.png: could not write its prediction" in reasons[1] and "Read-only file system" in reasons[1]
    assert len(list((tmp_path / "out").glob("?/*.png"))) == 21


@pytest.mark.slow
def test_evaluate_scores_the_same_in_both_orders_and_lists_a_broken_pair(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    broken = sorted((data / "images").iterdir())[2]
    broken.write_bytes(b"broken")
    results = {depth: evaluate([world["bundle"]], data, split="all", out=tmp_path / f"eval{depth}", progress=False,
                               depth=depth) for depth in (0, 2)}
    for key in ("per_image", "confusion_matrix", "failed", "miou", "image_dice"):
        assert results[2][key] == results[0][key], key
    assert [row["name"] for row in results[2]["failed"]] == [broken.stem]
    assert len(results[2]["per_image"]) == 5
