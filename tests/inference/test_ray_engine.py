"""`predict --engine ray`: a real local Ray cluster (2 CPUs), its masks byte for byte the local engine's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'masksmith[ray]')")

import ray  # noqa: E402

from masksmith.cli.app import app  # noqa: E402
from masksmith.errors import ConfigError  # noqa: E402
from masksmith.inference.ray_engine import RayOptions, actor_count  # noqa: E402
from tests.trained_models import shapes_model  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module (starting one costs seconds); the engine joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Images in nested folders (outputs keep the layout), of several sizes, with broken files among them."""
    _, data = shapes_model()
    root = tmp_path_factory.mktemp("ray-inputs")
    sources = sorted((data / "images").glob("*.jpg"))[:10]
    for index, source in enumerate(sources):
        folder = root / ("a" if index % 2 else "b") / ("deep" if index % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(source)
        if index % 4 == 0:
            image = image.resize((image.width * 2, image.height + 7))  # other sizes in the same batches
        image.save(folder / f"{source.stem}.png")
    (root / "a" / "truncated.png").write_bytes((root / "b" / "deep" / f"{sources[0].stem}.png").read_bytes()[:60])
    (root / "b" / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.png").write_text("not an image")
    return root


def _predict(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["predict", *args])
    return result.exit_code, result.output


def _files(folder: Path) -> dict[str, bytes]:
    # Hidden: the folder's lock (holding a process id) and its record (masksmith.inference.record).
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_ray_writes_the_local_engines_bytes_and_lists_the_same_failures(cluster, inputs, tmp_path):
    bundle, _ = shapes_model()
    outputs = {}
    for engine in ("local", "ray"):
        code, output = _predict([str(bundle), str(inputs), "--out", str(tmp_path / engine), "--engine", engine,
                                 "--overlay", "-b", "3", "-q"])
        assert code == 1, output  # the broken files are listed and make the exit status 1 ...
        assert "truncated.png" in output and "empty.jpg" in output and "text.png" in output
        outputs[engine] = _files(tmp_path / engine)
    # ... and never stop the run: every readable image has its mask, at its relative path, in both engines.
    masks = [name for name in outputs["local"] if name.endswith(".png") and not name.startswith("overlays")]
    assert len(masks) == 10 and any(name.startswith("b/deep/") for name in masks)
    local_failures = outputs["local"].pop("failures.csv")
    ray_failures = outputs["ray"].pop("failures.csv")
    assert outputs["ray"] == outputs["local"]  # masks and overlays, byte for byte
    assert local_failures == ray_failures
    rows = list(csv.DictReader((tmp_path / "ray" / "failures.csv").open()))
    assert sorted(Path(row["path"]).name for row in rows) == ["empty.jpg", "text.png", "truncated.png"]


@pytest.mark.slow
def test_resume_skips_what_is_written_and_predicts_the_rest(cluster, inputs, tmp_path):
    bundle, _ = shapes_model()
    out = tmp_path / "out"
    args = [str(bundle), str(inputs), "--out", str(out), "--engine", "ray", "--actors", "1", "-q"]
    _predict(args)
    kept = sorted(out.rglob("*.png"))
    removed = kept[:3]
    stamps = {p: p.stat().st_mtime_ns for p in kept[3:]}
    for path in removed:
        path.unlink()
    code, output = _predict([*args, "--resume"])
    assert "wrote 3 masks" in output and "(7 already there)" in output, output
    assert all(p.is_file() for p in removed)
    assert {p: p.stat().st_mtime_ns for p in kept[3:]} == stamps  # the finished ones were not written again


@pytest.mark.slow
def test_a_manifest_lists_the_images(cluster, inputs, tmp_path):
    bundle, _ = shapes_model()
    images = sorted(inputs.rglob("*.png"))[:4]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},x\n" for p in images) + f"{tmp_path / 'gone.png'},y\n")
    code, output = _predict([str(bundle), str(manifest), "--out", str(tmp_path / "out"), "--engine", "ray", "-q"])
    assert code == 1 and "gone.png" in output
    written = sorted((tmp_path / "out").rglob("*.png"))
    assert len(written) == sum(1 for p in images if p.stat().st_size > 100)


@pytest.mark.slow
def test_an_ensemble_runs_in_every_actor(cluster, inputs, tmp_path):
    bundle, _ = shapes_model()
    second = tmp_path / "second.msb"
    shutil.copy(bundle, second)
    image = next(p for p in sorted(inputs.rglob("*.png")) if p.stat().st_size > 100)
    for engine in ("local", "ray"):
        code, output = _predict([str(bundle), str(second), str(image), "--out", str(tmp_path / engine),
                                 "--engine", engine, "-q"])
        assert code == 0, output
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_bad_engine_options_are_refused_before_any_work(tmp_path):
    bundle, _ = shapes_model()
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for extra, message in ((["--engine", "spark"], "--engine"), (["--engine", "ray", "--actors", "0"], "--actors"),
                           (["--engine", "ray", "--threads", "0"], "--threads"),
                           (["--engine", "ray", "--format", "labelme"], "--engine local")):
        code, output = _predict([str(bundle), str(image), "--out", str(tmp_path / "out"), *extra])
        assert code == 2 and message in output, output
        assert not (tmp_path / "out").exists()


def test_actor_count_follows_the_clusters_resources():
    assert actor_count(RayOptions(), {"CPU": 8.0}) == 8
    assert actor_count(RayOptions(threads=3), {"CPU": 8.0}) == 2
    assert actor_count(RayOptions(actors=5), {"CPU": 1.0}) == 5
    assert actor_count(RayOptions(gpus_per_actor=0.5), {"CPU": 16.0, "GPU": 2.0}) == 4
    with pytest.raises(ConfigError, match="GPU"):
        actor_count(RayOptions(gpus_per_actor=1), {"CPU": 16.0})
    with pytest.raises(ConfigError, match="batch-size"):
        RayOptions(batch_size=0)


@pytest.mark.slow
def test_outputs_never_leave_out_and_inputs_are_never_overwritten(cluster, tmp_path):
    bundle, data = shapes_model()
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(sorted((data / "images").glob("*.jpg"))[0]).save(folder / "p.png")
    before = (folder / "p.png").read_bytes()
    code, output = _predict([str(bundle), str(folder), "--out", str(folder), "--engine", "ray", "-q"])
    assert code == 2 and "p.png" in output
    assert (folder / "p.png").read_bytes() == before
    manifest = tmp_path / "hostile.txt"
    manifest.write_text(json.dumps({"not": "paths"}) + "\n../../../etc/passwd\n")
    code, output = _predict([str(bundle), str(manifest), "--out", str(tmp_path / "out"), "--engine", "ray", "-q"])
    assert code == 1  # listed as failures (not images), nothing written outside OUT
    assert not any(p.suffix == ".png" for p in (tmp_path / "out").rglob("*"))
