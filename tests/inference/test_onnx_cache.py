"""The default backend: a bundle exported to ONNX once, parity-checked, cached by checksum; hostile caches fall back."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
import onnxruntime  # noqa: E402

from masksmith.inference import export as onnx_export  # noqa: E402
from masksmith.inference.backends import OnnxBackend, TorchBackend  # noqa: E402
from masksmith.bundle import save_bundle  # noqa: E402
from masksmith.cli.app import app  # noqa: E402
from masksmith.data.images import read_image  # noqa: E402
from masksmith.errors import MasksmithError  # noqa: E402
from masksmith.inference import onnx_cache  # noqa: E402
from masksmith.inference.backend_choice import BackendNote, choose, open_model  # noqa: E402
from masksmith.inference.onnx_cache import cache_dir, cached_onnx, entry_for  # noqa: E402
from masksmith.inference.predictor import Predictor  # noqa: E402
from tests.inference.test_backends import _meta, _network  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own (the session's shared one would already hold the bundles)."""
    monkeypatch.setenv("MASKSMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _bundle(path: Path, seed: int = 0, **meta) -> Path:
    return save_bundle(path, _network(seed).state_dict(), _meta(**meta))


@pytest.fixture
def bundle(tmp_path) -> Path:
    return _bundle(tmp_path / "models" / "model.msb")


@pytest.fixture
def exports(monkeypatch) -> list[str]:
    """Counts the exports (each one a parity-checked ONNX graph made from a bundle)."""
    calls: list[str] = []
    original = onnx_export.verified_onnx

    def counting(*args, **kwargs):
        calls.append(kwargs.get("source", ""))
        return original(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "verified_onnx", counting)
    return calls


def count_sessions(monkeypatch) -> list[int]:
    """From now on, one item per ONNX Runtime InferenceSession created."""
    sessions: list[int] = []
    original = onnxruntime.InferenceSession

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            sessions.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    return sessions


def _load(path: Path, backend: str = "auto") -> tuple[Predictor, list[str]]:
    """The Predictor and the BackendNote lines its loading issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.load(path, backend=backend, device="cpu")
    return predictor, [str(w.message) for w in caught if issubclass(w.category, BackendNote)]


def _logits(predictor: Predictor, seed: int = 3) -> torch.Tensor:
    return predictor.backend(torch.randn(2, 3, 24, 36, generator=torch.Generator().manual_seed(seed)))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


@pytest.mark.slow
def test_auto_exports_once_then_reads_the_cache_and_matches_pytorch(bundle, cache, exports):
    bundle.parent.chmod(0o555)  # nothing is written beside the bundle (root ignores the mode; the listing checks)
    try:
        before = sorted(os.listdir(bundle.parent))
        first, notes = _load(bundle)
        second, more_notes = _load(bundle)
        assert sorted(os.listdir(bundle.parent)) == before
    finally:
        bundle.parent.chmod(0o755)
    assert isinstance(first.backend, OnnxBackend) and isinstance(second.backend, OnnxBackend)
    assert len(exports) == 1 and notes == more_notes == []
    assert first.meta == second.meta == _meta()
    entry = entry_for(bundle)
    assert entry.onnx.parent == cache and entry.onnx.is_file() and entry.record.is_file()
    record = json.loads(entry.record.read_text())
    assert record["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert record["max_rel_diff"] <= onnx_export.FP32_TOLERANCE
    torch_predictor, _ = _load(bundle, "torch")
    assert isinstance(torch_predictor.backend, TorchBackend)
    assert _close(_logits(second), _logits(torch_predictor))
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))


@pytest.mark.slow
def test_masks_on_real_membrane_slices_equal_pytorch(tmp_path, isbi_dir, cache):
    # Real inputs through both backends: a 1-channel binary U-Net with trained-like BatchNorm statistics.
    torch.manual_seed(0)
    from masksmith.models import build_model

    network = build_model("unet", 1, 2, depth=3, base_channels=8).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    meta = _meta(in_channels=1, out_channels=2, class_names=["membrane", "cell"], colors=[[0, 0, 0], [255, 255, 255]],
                 model_options={"depth": 3, "base_channels": 8}, size=256, mean=[0.5], std=[0.25], threshold=0.5)
    path = save_bundle(tmp_path / "membrane.msb", network.state_dict(), meta)
    onnx_predictor, notes = _load(path)
    torch_predictor, _ = _load(path, "torch")
    assert onnx_predictor.backend_name == "onnx" and notes == []
    images = [read_image(p, channels=1) for p in sorted((isbi_dir / "train" / "images").glob("*.png"))[:4]]
    for image in images:
        onnx_mask, torch_mask = onnx_predictor.predict(image), torch_predictor.predict(image)
        assert onnx_mask.shape == image.shape[:2]
        assert 0.05 < torch_mask.mean() < 0.95  # both classes present: the comparison decides pixels
        # The documented agreement of an fp32 export (export's own check): identical but for ties at the threshold.
        assert np.mean(onnx_mask == torch_mask) >= 0.9999


@pytest.mark.slow
def test_truncated_or_damaged_cached_onnx_is_detected_and_exported_again(bundle, cache, exports):
    _load(bundle)
    entry = entry_for(bundle)
    whole = entry.onnx.read_bytes()
    for damage in (whole[: len(whole) // 2], whole[:-1] + bytes([whole[-1] ^ 1])):
        entry.onnx.write_bytes(damage)
        predictor, notes = _load(bundle)
        assert predictor.backend_name == "onnx"
        assert len(notes) == 1 and "damaged" in notes[0] and str(entry.onnx) in notes[0]
        assert entry.onnx.read_bytes() == whole  # exported again and stored whole
    assert len(exports) == 3
    entry.record.write_text("{not json")
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "onnx" and len(notes) == 1 and "damaged record" in notes[0]
    assert len(exports) == 4 and json.loads(entry.record.read_text())["onnx_sha256"]


@pytest.mark.slow
def test_a_cached_file_from_another_bundle_is_not_used(tmp_path, cache, exports):
    first, second = _bundle(tmp_path / "a.msb", seed=0), _bundle(tmp_path / "b.msb", seed=1)
    _load(first)
    _load(second)
    one, two = entry_for(first), entry_for(second)
    # The other bundle's graph alone (its record would not match it) ...
    shutil.copyfile(one.onnx, two.onnx)
    predictor, notes = _load(second)
    assert len(notes) == 1 and "damaged" in notes[0]
    assert _close(_logits(predictor), _logits(_load(second, "torch")[0]))
    # ... and its graph with its record: the record names the other bundle.
    shutil.copyfile(one.onnx, two.onnx)
    shutil.copyfile(one.record, two.record)
    predictor, notes = _load(second)
    assert len(notes) == 1 and "another bundle" in notes[0]
    assert _close(_logits(predictor), _logits(_load(second, "torch")[0]))
    assert not _close(_logits(predictor), _logits(_load(first, "torch")[0]))
    assert len(exports) == 4


@pytest.mark.slow
def test_a_cache_path_that_is_a_file_falls_back_in_one_line(bundle, tmp_path, monkeypatch, exports):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache would go")
    monkeypatch.setenv("MASKSMITH_CACHE", str(blocker))
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "torch" and exports == []  # auto: no export it could not keep
    assert len(notes) == 1 and str(blocker) in notes[0] and "running PyTorch" in notes[0] and "\n" not in notes[0]
    predictor, notes = _load(bundle, "onnx")  # asked for: exported and checked for this run only
    assert predictor.backend_name == "onnx" and len(exports) == 1
    assert len(notes) == 1 and "for this run only" in notes[0]
    out = tmp_path / "masks"
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "a.png")
    result = runner.invoke(app, ["predict", str(bundle), str(images), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and (out / "a.png").is_file()


def test_an_unwritable_cache_falls_back_in_one_line(bundle, cache, monkeypatch, exports):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(cache)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(onnx_cache.os, "open", read_only)
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "torch" and exports == []
    assert len(notes) == 1 and "Read-only file system" in notes[0] and "running PyTorch" in notes[0]


@pytest.fixture
def stuck_exporter(bundle, cache):
    """Another process holding the bundle's cache lock without ever finishing (a stopped or hung export)."""
    lock = entry_for(bundle).lock
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('locked', flush=True); time.sleep(120)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_held_by_a_stuck_export_runs_pytorch_after_a_bounded_wait(bundle, cache, monkeypatch, exports,
                                                                           stuck_exporter):
    monkeypatch.setattr(onnx_cache, "LOCK_WAIT_S", 0.5)
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "torch" and exports == []
    assert len(notes) == 1 and str(entry_for(bundle).lock) in notes[0]
    assert "held it for 0.5 s" in notes[0] and notes[0].endswith("running PyTorch")


@pytest.mark.slow
def test_a_stuck_lock_gives_onnx_an_export_for_the_run_and_frees_with_its_holder(bundle, cache, monkeypatch,
                                                                                  exports, stuck_exporter):
    monkeypatch.setattr(onnx_cache, "LOCK_WAIT_S", 0.5)
    predictor, notes = _load(bundle, backend="onnx")
    assert predictor.backend_name == "onnx" and len(exports) == 1
    assert len(notes) == 1 and "held it for" in notes[0] and "this run only" in notes[0]
    assert not entry_for(bundle).record.exists()
    stuck_exporter.kill()
    stuck_exporter.wait()  # the kernel drops the flock with its process
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "onnx" and notes == [] and len(exports) == 2
    assert entry_for(bundle).record.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_falls_back_in_one_line(bundle, cache, exports):
    cache.mkdir(parents=True)
    cache.chmod(0o555)
    try:
        predictor, notes = _load(bundle)
    finally:
        cache.chmod(0o755)
    assert predictor.backend_name == "torch" and len(notes) == 1 and "running PyTorch" in notes[0]


@pytest.mark.slow
def test_an_entry_that_cannot_be_stored_serves_the_run_from_memory(bundle, cache, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cache / "x.onnx"))

    monkeypatch.setattr(onnx_cache, "_store", full)
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "onnx"
    assert len(notes) == 1 and "No space left on device" in notes[0] and "this run only" in notes[0]
    assert not entry_for(bundle).record.exists()


@pytest.mark.slow
def test_an_export_that_fails_its_parity_check_runs_pytorch_and_is_remembered(bundle, cache, monkeypatch, exports):
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", 0.0)  # no export can pass: the check refuses it
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "torch"
    assert len(notes) == 1 and str(bundle) in notes[0] and "differ from PyTorch" in notes[0]
    assert notes[0].endswith("running PyTorch")
    predictor, notes = _load(bundle)  # the refusal is cached: no second export
    assert predictor.backend_name == "torch" and len(notes) == 1 and len(exports) == 1
    with pytest.raises(MasksmithError, match="differ from PyTorch.*use --backend torch"):
        Predictor.load(bundle, backend="onnx", device="cpu")


def test_without_onnxruntime_auto_runs_pytorch_and_onnx_is_an_error(bundle, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    predictor, notes = _load(bundle)
    assert predictor.backend_name == "torch" and notes == [f"{bundle}: onnxruntime is not installed; running PyTorch"]
    with pytest.raises(MasksmithError, match="pip install onnxruntime"):
        Predictor.load(bundle, backend="onnx", device="cpu")
    assert not cache.exists()


def test_cuda_and_explicit_torch_keep_pytorch_without_exporting(bundle, cache):
    assert choose(bundle, "auto", "cuda").kind == "torch"
    assert choose(bundle, "torch", "cpu").kind == "torch"
    assert choose(bundle, None, "cpu").kind == "torch"  # the Python API's default: by file type
    assert not cache.exists()
    with pytest.raises(MasksmithError, match="backend must be one of auto, torch, onnx"):
        open_model(bundle, "tflite")
    result = runner.invoke(app, ["evaluate", str(bundle), str(bundle.parent), "--backend", "fast"])
    assert result.exit_code == 2 and "--backend: unknown backend 'fast'; valid: auto, torch, onnx" in result.output


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKSMITH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "onnx"
    monkeypatch.delenv("MASKSMITH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "masksmith" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "masksmith" / "onnx"


RACE = """
import sys, time
from masksmith.inference.onnx_cache import cached_onnx
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
cached = cached_onnx(sys.argv[1])
print("exported" if cached.exported_now else "read", cached.stored, len(cached.model))
"""


@pytest.mark.slow
def test_two_processes_exporting_the_same_bundle_at_once_leave_one_whole_entry(bundle, cache):
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    start = str(time.time() + 8)  # both past their imports, then both ask at the same moment
    processes = [subprocess.Popen([sys.executable, "-c", RACE, str(bundle), start], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err
            outputs.append(out.split())
    finally:
        for process in processes:
            process.kill()
    # One exported while the other waited for the lock, then read the first one's entry.
    assert sorted(line[0] for line in outputs) == ["exported", "read"]
    assert all(line[1] == "True" for line in outputs) and outputs[0][2] == outputs[1][2]
    entry = entry_for(bundle)
    cached = cached_onnx(bundle)
    assert not cached.exported_now and cached.model == entry.onnx.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.onnx.name, entry.record.name, entry.lock.name])


@pytest.mark.slow
def test_a_served_model_creates_its_session_once(bundle, cache, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from masksmith.serve.app import create_app
    from masksmith.serve.model import ServedModel
    from masksmith.serve.options import ServeOptions
    from tests.serve_helpers import png_bytes

    cached_onnx(bundle)  # exported beforehand: its parity check opens sessions of its own
    sessions = count_sessions(monkeypatch)
    model = ServedModel.load(bundle)
    assert model.card["backend"] == "onnx" and len(sessions) == 1
    with TestClient(create_app(model, ServeOptions(max_batch=2))) as client:
        for size in ((20, 30), (33, 17), (20, 30)):
            image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
            response = client.post("/v1/segment", files={"image": ("a.png", png_bytes(image), "image/png")})
            assert response.status_code == 200
    assert len(sessions) == 1


@pytest.mark.slow
def test_a_ray_actor_creates_its_session_once(bundle, cache, monkeypatch, tmp_path):
    from PIL import Image

    from masksmith.inference.ray_engine import Segmenter

    cached_onnx(bundle)
    sessions = count_sessions(monkeypatch)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(np.full((20, 30, 3), 40 * index, np.uint8)).save(paths[-1])
    actor = Segmenter([str(bundle)], str(tmp_path / "out"), threads=1, batch_size=2,
                      load_options={"backend": "auto", "device": "cpu"}, threshold=None, mask_format="palette",
                      overlay_images=False)
    assert actor.predictor.backend_name == "onnx"
    for _ in range(2):
        rows = {"index": np.arange(3), "path": np.array([str(p) for p in paths], dtype=object),
                "relative": np.array([p.name for p in paths], dtype=object)}
        result = actor(rows)
        assert all(reason == "" for reason in result["reason"])
    assert len(sessions) == 1


@pytest.mark.slow
def test_the_ray_driver_exports_before_its_actors_start_and_says_why_not(bundle, cache, tmp_path, monkeypatch,
                                                                         exports):
    from masksmith.inference.ray_engine import prepare_models

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_models([bundle], {"backend": "auto", "device": "cpu"})
    assert len(exports) == 1 and entry_for(bundle).record.is_file() and not caught  # the actors will read it
    prepare_models([bundle], {"backend": "torch", "device": "cpu"})
    assert len(exports) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MASKSMITH_CACHE", str(blocker))
    with pytest.warns(BackendNote, match="running PyTorch"):
        prepare_models([bundle], {"backend": "auto", "device": "cpu"})


@pytest.mark.slow
def test_predict_and_evaluate_default_to_the_cached_onnx_export(bundle, cache, tmp_path, exports, monkeypatch,
                                                                  make_image_mask_pairs):
    from masksmith.inference import backend_choice

    data = tmp_path / "data"
    make_image_mask_pairs(data / "images", data / "masks", ["a", "b"], size=(20, 28))
    result = runner.invoke(app, ["predict", str(bundle), str(data / "images"), "--out", str(tmp_path / "p"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(exports) == 1 and entry_for(bundle).record.is_file()  # predict's default exported and cached it
    opened = []
    original = backend_choice.open_model

    def spy(path, backend=None, *args, **kwargs):
        backend_made = original(path, backend, *args, **kwargs)
        opened.append((backend, backend_made.name))
        return backend_made

    torch_masks = Predictor.load(bundle, backend="torch", device="cpu").predict_batch(
        sorted((data / "images").glob("*.png")))
    monkeypatch.setattr("masksmith.inference.predictor.open_model", spy)
    result = runner.invoke(app, ["evaluate", str(bundle), str(data), "--split", "all", "--out", str(tmp_path / "e"),
                                 "-q"])
    again = runner.invoke(app, ["predict", str(bundle), str(data / "images"), "--out", str(tmp_path / "q"), "-q"])
    assert result.exit_code == 0 and again.exit_code == 0, result.output + again.output
    assert opened == [("auto", "onnx"), ("auto", "onnx")] and len(exports) == 1  # read from the cache
    from PIL import Image

    for path, expected in zip(sorted((data / "images").glob("*.png")), torch_masks):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "q" / path.name)), expected)
