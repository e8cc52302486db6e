"""`masksmith serve`'s API through an in-process client: every route and format, equality with
`masksmith predict`, hostile uploads, limits, the token, and the server staying healthy throughout."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (test extra)")
from fastapi.testclient import TestClient  # noqa: E402
from pycocotools import mask as coco_mask  # noqa: E402

from masksmith.cli.app import app as cli_app  # noqa: E402
from masksmith.errors import ConfigError, MasksmithError  # noqa: E402
from masksmith.inference.export import export_onnx  # noqa: E402
from masksmith.inference.predictor import Predictor, predict_files  # noqa: E402
from masksmith.serve import require_serve_extra  # noqa: E402
from masksmith.serve.app import create_app  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from masksmith.serve.options import ServeOptions  # noqa: E402
from masksmith.visualize import overlay  # noqa: E402
from tests.serve_helpers import binary_crop_bundle, bomb_png, png_bytes, tiff_rgba16, train_tiny  # noqa: E402

LIMITS = ServeOptions(max_upload_bytes=1 << 20, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, bundle, onnx export) of a tiny 3-class model."""
    root = tmp_path_factory.mktemp("serve")
    data, bundle = train_tiny(root)
    onnx = export_onnx(bundle, root / "run" / "model.onnx").path
    return data, bundle, onnx


@pytest.fixture(scope="module")
def served(trained):
    _, bundle, _ = trained
    return ServedModel.load(bundle)


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served, LIMITS)) as test_client:
        yield test_client


def _segment(client, data: bytes, name: str = "image.png", query: str = "", **kwargs):
    return client.post(f"/v1/segment{query}", files={"image": (name, data, "application/octet-stream")}, **kwargs)


def _still_healthy(client, image: bytes) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"ready": True}
    assert _segment(client, image).status_code == 200


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.mark.slow
def test_health_readiness_and_model_card(client, trained):
    _, bundle, _ = trained
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"ready": True}
    card = client.get("/v1/model").json()
    assert card["checksum"] == "sha256:" + hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert card["id"].endswith(card["checksum"][7:19])
    assert [c["name"] for c in card["classes"]] == ["background", "red box", "blue box"]
    assert card["input"]["size"] == 32 and card["input"]["resize"] == "resize"
    assert len(card["normalization"]["mean"]) == 3 and card["backend"] == "onnx"  # serve's default on the CPU
    assert card["training"]["data"] == "shapes" and card["training"]["split"]["val_images"] >= 1
    results = json.loads((bundle.parent / "results.json").read_text())
    assert card["validation"]["scores"]["val_dice"] == pytest.approx(results["best_epoch_metrics"]["val_dice"])
    assert "results.json" in card["validation"]["source"]


def test_served_mask_equals_predict_output_byte_for_byte(client, trained, tmp_path):
    data, bundle, _ = trained
    result = CliRunner().invoke(cli_app, ["predict", str(bundle), str(data / "images"), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    images = sorted((data / "images").glob("*.jpg"))
    classes_seen = set()
    for index, path in enumerate(images):
        expected = (tmp_path / f"{path.stem}.png").read_bytes()
        classes_seen |= set(np.unique(_decoded(expected)).tolist())
        if index % 2:  # both ways of sending an image: multipart and raw body
            response = _segment(client, path.read_bytes(), path.name)
        else:
            response = client.post("/v1/segment", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == expected, path.name
    assert len(classes_seen) > 1  # the masks compared are not all one class


def test_onnx_model_is_served_by_onnx_runtime_with_predicts_bytes(trained, tmp_path):
    data, _, onnx = trained
    model = ServedModel.load(onnx)
    assert model.predictor.backend_name == "onnx"
    images = sorted((data / "images").glob("*.jpg"))[:3]
    predict_files(Predictor.load(onnx), images, tmp_path, progress=False)
    with TestClient(create_app(model, LIMITS)) as onnx_client:
        assert onnx_client.get("/v1/model").json()["backend"] == "onnx"
        for path in images:
            assert _segment(onnx_client, path.read_bytes()).content == (tmp_path / f"{path.stem}.png").read_bytes()


def test_overlay_is_predicts_overlay_of_the_served_mask(client, trained, served):
    data, _, _ = trained
    path = sorted((data / "images").glob("*.jpg"))[0]
    mask = _decoded(_segment(client, path.read_bytes()).content)
    response = _segment(client, path.read_bytes(), query="?format=overlay")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = served.predictor.to_array(path)
    expected = overlay(image, mask, served.predictor.colors, ignore_index=255)
    assert np.array_equal(_decoded(response.content), expected)


def test_json_has_areas_rle_polygons_model_and_timings(client, trained, served):
    data, _, _ = trained
    path = sorted((data / "images").glob("*.jpg"))[1]
    mask = _decoded(_segment(client, path.read_bytes()).content)
    document = _segment(client, path.read_bytes(), query="?format=json&polygons=true").json()
    assert (document["height"], document["width"]) == mask.shape == (40, 56)
    assert document["model"] == {"id": served.model_id, "checksum": served.checksum}
    assert [c["pixels"] for c in document["classes"]] == np.bincount(mask.ravel(), minlength=3).tolist()
    assert sum(c["share"] for c in document["classes"]) == pytest.approx(1.0)
    rebuilt = np.full(mask.shape, 99, np.uint8)
    for entry in document["rle"]:
        rle = {"size": entry["size"], "counts": entry["counts"].encode()}
        rebuilt[coco_mask.decode(rle).astype(bool)] = entry["class"]
    assert np.array_equal(rebuilt, mask)
    for shape in document["polygons"]:
        assert shape["class"] in set(np.unique(mask)) - {0}
        assert all(len(ring) >= 6 and len(ring) % 2 == 0 for ring in shape["polygons"])
    assert set(document["timings_ms"]) == {"decode", "queue", "inference", "encode"}
    assert all(value >= 0 for value in document["timings_ms"].values())
    assert "polygons" not in _segment(client, path.read_bytes(), query="?format=json").json()


@pytest.mark.parametrize("query, message", [
    ("?format=gif", "format must be one of png, overlay, json"),
    ("?polygons=maybe&format=json", "polygons must be true or false"),
    ("?polygons=true", "add format=json"),
    ("?threshold=0.3", "binary models only"),
])
def test_bad_query_parameters_are_400_with_the_reason(client, query, message):
    response = _segment(client, png_bytes(np.zeros((8, 8, 3), np.uint8)), query=query)
    assert response.status_code == 400 and message in response.json()["error"]


def _hostile():
    truncated = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return [
        ("empty body", b"", "image.png", 400, "empty upload"),
        ("truncated PNG", truncated[: len(truncated) // 2], "cut.png", 422, "cannot decode"),
        # PIL cannot even identify these: their signatures say what they are, so they are broken, not unknown.
        ("PNG cut after its signature", truncated[:12], "cut.png", 422, "a truncated or damaged PNG file"),
        ("PNG cut after its header chunk", truncated[:35], "cut.png", 422, "a truncated or damaged PNG file"),
        ("JPEG cut after its signature", b"\xff\xd8\xff\xe0", "cut.jpg", 422, "a truncated or damaged JPEG file"),
        ("text named .png", b"this is not an image\n" * 8, "notes.png", 415, "not an image"),
        ("decompression bomb", bomb_png(), "bomb.png", 413, "decompression bomb: too many pixels, over the limit "
                                                                "of 1000000 (raise it with --max-pixels)"),
        ("over 89.5 MP", bomb_png(10_000, 9_000), "huge.png", 413, "(raise it with --max-pixels)"),
        ("over the pixel limit", bomb_png(2000, 1000), "big.png", 413, "over the limit of 1000000"),
        ("oversized body", b"\x89PNG" + bytes(2 << 20), "huge.png", 413, "over the limit of 1048576 bytes"),
    ]


@pytest.mark.parametrize("case, data, name, status, message", _hostile(), ids=[c[0] for c in _hostile()])
def test_hostile_upload_is_a_clear_4xx_and_the_server_stays_healthy(client, case, data, name, status, message):
    response = _segment(client, data, name)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _still_healthy(client, png_bytes(np.zeros((8, 8, 3), np.uint8)))


def test_wrong_content_type_and_a_form_without_a_file(client):
    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    response = client.post("/v1/segment", content=image, headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "text/plain" in response.json()["error"]
    response = client.post("/v1/segment", data={"note": "no file"}, files={"other": ("", b"", "text/plain")})
    assert response.status_code == 400 and "holds no file" in response.json()["error"]
    two = {"a": ("a.png", image, "image/png"), "b": ("b.png", image, "image/png")}
    response = client.post("/v1/segment", files=two)
    assert response.status_code == 400 and "Too many files" in response.json()["error"]
    response = client.post("/v1/segment", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    _still_healthy(client, image)


def test_odd_but_valid_images_get_masks_at_their_own_size(client, trained, tmp_path):
    _, bundle, _ = trained
    tiff = tiff_rgba16()
    cases = {"pixel.png": png_bytes(np.full((1, 1, 3), 200, np.uint8)),
             # 100:1, the widest aspect ratio accepted by default
             "strip.png": png_bytes(np.tile(np.arange(2000, dtype=np.uint16) % 251, (20, 1)).astype(np.uint8)),
             "rgba16.tif": tiff}
    shapes = {"pixel.png": (1, 1), "strip.png": (20, 2000), "rgba16.tif": (24, 30)}
    for name, data in cases.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
        response = _segment(client, data, name)
        assert response.status_code == 200, (name, response.text)
        assert _decoded(response.content).shape == shapes[name]
    # The 16-bit RGBA TIFF is read exactly as predict reads the same file.
    predict_files(Predictor.load(bundle), [tmp_path / "in" / "rgba16.tif"], tmp_path / "out", progress=False)
    assert _segment(client, tiff, "rgba16.tif").content == (tmp_path / "out" / "rgba16.png").read_bytes()


@pytest.mark.slow
def test_crop_trained_binary_model_tiles_long_images_and_takes_a_threshold(tmp_path):
    bundle = binary_crop_bundle(tmp_path / "binary.msb")
    strip = png_bytes(np.random.default_rng(1).integers(0, 255, (30, 3000, 3), dtype=np.uint8))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "strip.png").write_bytes(strip)
    predict_files(Predictor.load(bundle), [tmp_path / "in"], tmp_path / "out", threshold=0.4, progress=False)
    with TestClient(create_app(ServedModel.load(bundle), LIMITS)) as binary:
        response = _segment(binary, strip, query="?threshold=0.4")
        assert response.status_code == 200
        assert response.content == (tmp_path / "out" / "strip.png").read_bytes()
        assert _segment(binary, strip, query="?threshold=1.5").status_code == 400
        assert binary.get("/v1/model").json()["validation"]["scores"] is None  # no results.json next to it


def test_metrics_count_requests_by_status_and_batches(client):
    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    before = client.get("/metrics").text
    _segment(client, image)
    _segment(client, b"", "empty.png")
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")

    def value(page: str, line_start: str) -> float:
        found = [line.split()[-1] for line in page.splitlines() if line.startswith(line_start)]
        return float(found[0]) if found else 0.0

    ok, bad = 'masksmith_requests_total{route="/v1/segment",status="200"}', \
        'masksmith_requests_total{route="/v1/segment",status="400"}'
    assert value(text, ok) == value(before, ok) + 1 and value(text, bad) == value(before, bad) + 1
    assert value(text, "masksmith_batch_size_count") == value(before, "masksmith_batch_size_count") + 1
    assert value(text, "masksmith_request_seconds_count") == value(before, "masksmith_request_seconds_count") + 2
    assert "masksmith_queue_depth 0" in text and "masksmith_ready 1" in text


def test_token_is_required_on_every_route_but_healthz(served):
    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    with TestClient(create_app(served, ServeOptions(host="0.0.0.0", token="s3cret")), follow_redirects=False) as c:
        assert c.get("/healthz").status_code == 200
        for method, route in [("get", "/v1/model"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/"),
                              ("get", "/static/app.js"), ("post", "/v1/segment")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = getattr(c, method)(route, headers=headers)
                assert response.status_code == 401, (route, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/model", headers=good).status_code == 200
        assert _segment(c, image, headers=good).status_code == 200
        # A browser opens /?token=... once: it gets an HttpOnly cookie and a redirect without the token.
        response = c.get("/?token=s3cret")
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert "HttpOnly" in response.headers["set-cookie"]
        assert c.get("/").status_code == 200 and c.get("/v1/model").status_code == 200  # the cookie counts


def test_binding_beyond_loopback_without_a_token_is_refused():
    with pytest.raises(ConfigError, match="--token"):
        ServeOptions(host="0.0.0.0")
    assert ServeOptions(host="::1").token is None
    with pytest.raises(ConfigError, match="max_batch"):
        ServeOptions(max_batch=0)


def test_serve_runs_the_torch_backend_on_the_device_asked_for(trained, served, monkeypatch):
    assert served.card["device"] == "cpu" and str(served.predictor.device) == "cpu"  # the default
    with pytest.raises(ConfigError, match="serve: device must be one of cpu, cuda, auto, got 'gpu'"):
        ServeOptions(device="gpu")
    _, bundle, _ = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ServedModel.load(bundle, device="auto").card["device"] == "cpu"  # auto: CUDA only when there is one
    with pytest.raises(MasksmithError, match=r"^device cuda: no CUDA GPU found") as error:
        ServedModel.load(bundle, device="cuda")
    assert "\n" not in str(error.value)


def test_web_page_and_its_files_are_served_without_any_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text


def test_missing_serve_extra_is_one_line_naming_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(MasksmithError, match=r"needs uvicorn: pip install 'masksmith\[serve\]'"):
        require_serve_extra()
    result = CliRunner().invoke(cli_app, ["serve", "model.msb"])
    assert result.exit_code == 2 and "pip install 'masksmith[serve]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_serve_cli_names_a_missing_model_file(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "nothing.msb")])
    assert result.exit_code == 2 and "nothing.msb: no such model file" in result.output
