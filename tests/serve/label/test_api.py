"""`masksmith label`'s API through an in-process client: the queue and its states, saving in each dataset
encoding, the provenance file, conflicts, ids that are never paths, hostile ids and uploads, limits,
symbolic links out of DATA, the model's predictions, ranking, region assist and reload."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (test extra)")
from fastapi.testclient import TestClient  # noqa: E402

from masksmith.annotations.ranking import image_uncertainty  # noqa: E402
from masksmith.cli.app import app as cli_app  # noqa: E402
from masksmith.data.check import check_dataset  # noqa: E402
from masksmith.data.discover import discover_dataset  # noqa: E402
from masksmith.data.images import read_image  # noqa: E402
from masksmith.errors import ConfigError, DataError  # noqa: E402
from masksmith.serve.label.layout import image_id  # noqa: E402
from masksmith.serve.label.provenance import PROVENANCE_NAME  # noqa: E402
from masksmith.serve.label.store import LabelOptions  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from tests.label_helpers import LOCAL, copy_some, deflated, inflated, make_app, open_session, read_png, save  # noqa: E402
from tests.serve_helpers import bomb_png, png_bytes, train_tiny  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(shapes dataset, bundle) of a tiny 3-class model."""
    return train_tiny(tmp_path_factory.mktemp("label"))


def client_of(data: Path, options: LabelOptions = LabelOptions(), model=None, token=None, **session) -> TestClient:
    return TestClient(make_app(open_session(data, options, model, **session), token), base_url=LOCAL)


def _facts(client, image_id):
    response = client.get(f"/api/images/{image_id}")
    assert response.status_code == 200, response.text
    return response.json()


# --- the queue, ids and states ------------------------------------------------------------------------------


def test_queue_names_images_by_id_with_states_unlabelled_first(shapes):
    with client_of(shapes) as client:
        rows = client.get("/api/queue").json()["images"]
        assert [row["name"] for row in rows] == [f"images/s0{i}.jpg" for i in (6, 7, 0, 1, 2, 3, 4, 5)]
        assert [row["state"] for row in rows] == ["unlabelled"] * 2 + ["labelled"] * 6
        for row in rows:
            assert row["id"] == image_id(row["name"]) and len(row["id"]) == 16 and "/" not in row["id"]
        assert [r["name"] for r in client.get("/api/queue?state=unlabelled").json()["images"]] == [
            "images/s06.jpg", "images/s07.jpg"]
        summary = client.get("/api/session").json()
        assert summary["images"] == 8 and summary["done"] == 6
        assert [c["name"] for c in summary["classes"]] == ["background", "red box", "blue box"]
        assert summary["ignore"] == {"index": 255} and summary["model"] is None
        assert "--skip-unpaired" in summary["command"] and "--init" not in summary["command"]


def test_existing_mask_is_served_as_its_class_indices_with_its_version(shapes):
    with client_of(shapes) as client:
        ids = {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}
        response = client.get(f"/api/images/{ids['images/s02.jpg']}/mask")
        assert response.status_code == 200
        on_disk = read_png(shapes / "masks" / "s02.png")
        assert np.array_equal(inflated(response), on_disk) and len(np.unique(on_disk)) == 3
        assert response.headers["x-mask-version"] == _facts(client, ids["images/s02.jpg"])["version"]
        assert client.get(f"/api/images/{ids['images/s06.jpg']}/mask").status_code == 404  # no mask yet
        image = client.get(f"/api/images/{ids['images/s02.jpg']}/image")
        assert image.headers["content-type"] == "image/jpeg"
        assert image.content == (shapes / "images" / "s02.jpg").read_bytes()


# --- saving --------------------------------------------------------------------------------------------------


def test_save_writes_the_index_png_atomically_and_records_who_drew_it(shapes):
    with client_of(shapes) as client:
        ids = {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}
        mask = np.zeros((40, 56), np.uint8)
        mask[5:20, 10:30] = 2
        mask[0, 0] = 255  # ignored pixels are allowed in index masks
        response = save(client, ids["images/s06.jpg"], mask, "none", start="empty")
        assert response.status_code == 200, response.text
        answer = response.json()
        written = shapes / "masks" / "s06.png"
        assert Image.open(written).mode == "L"  # the dataset's own grayscale index PNGs
        assert np.array_equal(read_png(written), mask)
        assert answer["state"] == "drawn" and answer["version"].startswith("sha256:")
        assert not [p for p in (shapes / "masks").iterdir() if p.name.endswith(".tmp")]
        record = json.loads((shapes / "masks" / PROVENANCE_NAME).read_text())
        assert record["format"] == "masksmith-labels" and record["masks"]["s06.png"]["by"] == "drawn"
        assert record["masks"]["s06.png"]["model"] is None and "T" in record["masks"]["s06.png"]["at"]
        # Editing a mask made elsewhere: corrected; the queue counts both as done.
        edited = read_png(shapes / "masks" / "s01.png").copy()
        edited[:3] = 1
        version = _facts(client, ids["images/s01.jpg"])["version"]
        assert save(client, ids["images/s01.jpg"], edited, version).json()["state"] == "corrected"
        states = {row["name"]: row["state"] for row in client.get("/api/queue").json()["images"]}
        assert states["images/s06.jpg"] == "drawn" and states["images/s01.jpg"] == "corrected"
        assert client.get("/api/session").json()["done"] == 7


def test_check_and_train_pairing_pass_over_the_label_record(shapes):
    with client_of(shapes) as client:
        ids = {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}
        assert save(client, ids["images/s06.jpg"], np.ones((40, 56), np.uint8), "none", start="empty").status_code == 200
    assert (shapes / "masks" / PROVENANCE_NAME).is_file()
    found = discover_dataset(shapes)
    assert len(found.splits["all"]) == 7 and [p.name for p in found.unpaired_paths] == ["s07.jpg"]
    report = check_dataset(shapes, classes=str(shapes / "classes.txt"), workers=1, progress=False)
    assert not [p for p in report.problems if PROVENANCE_NAME in json.dumps(p.to_dict())]


def test_conflict_two_tabs_saving_one_image_the_older_one_gets_409(shapes):
    with client_of(shapes) as client:
        image = {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}["images/s03.jpg"]
        loaded = _facts(client, image)["version"]  # both tabs open the image at this version
        first, second = read_png(shapes / "masks" / "s03.png").copy(), read_png(shapes / "masks" / "s03.png").copy()
        first[:5] = 1
        second[-5:] = 2
        saved = save(client, image, first, loaded)
        assert saved.status_code == 200
        refused = save(client, image, second, loaded)
        assert refused.status_code == 409 and "changed" in refused.json()["error"]
        assert refused.headers["x-mask-version"] == saved.json()["version"]
        assert np.array_equal(read_png(shapes / "masks" / "s03.png"), first)  # the first save stands
        # Overwriting knowingly: with the version the conflict named.
        assert save(client, image, second, refused.headers["x-mask-version"]).status_code == 200
        assert np.array_equal(read_png(shapes / "masks" / "s03.png"), second)
        # A new mask: two tabs both starting from "none".
        new = {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}["images/s07.jpg"]
        assert save(client, new, np.ones((40, 56), np.uint8), "none", start="empty").status_code == 200
        assert save(client, new, np.zeros((40, 56), np.uint8), "none", start="empty").status_code == 409


def test_a_mask_changed_by_another_program_is_not_replaced_silently(shapes):
    with client_of(shapes) as client:
        image = {row["name"]: row["id"] for row in client.get("/api/queue").json()["images"]}["images/s04.jpg"]
        loaded = _facts(client, image)["version"]
        outside = np.full((40, 56), 2, np.uint8)
        Image.fromarray(outside).save(shapes / "masks" / "s04.png")
        assert save(client, image, np.zeros((40, 56), np.uint8), loaded).status_code == 409
        assert np.array_equal(read_png(shapes / "masks" / "s04.png"), outside)


# --- hostile ids, paths and uploads ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "%2e%2e", "0123456789ABCDEF",
                                 "0123456789abcdef", "0123456789abcdef0", "images%2Fs00.jpg", "s00", "%00", "x" * 300])
def test_hostile_or_unknown_ids_are_404_and_touch_nothing(shapes, bad):
    before = {p: p.read_bytes() for p in (shapes / "masks").iterdir()}
    with client_of(shapes) as client:
        for method, suffix in (("get", ""), ("get", "/image"), ("get", "/mask"), ("get", "/prediction")):
            response = getattr(client, method)(f"/api/images/{bad}{suffix}")
            assert response.status_code == 404, (bad, suffix, response.text)
        response = save(client, bad, np.zeros((40, 56), np.uint8), "none", start="empty")
        assert response.status_code == 404
    assert {p: p.read_bytes() for p in (shapes / "masks").iterdir()} == before


def test_raw_paths_in_the_url_reach_no_file(shapes):
    with client_of(shapes) as client:
        for url in ("/api/images/../../../../etc/passwd", "/api/images//etc/passwd", "/static/../../etc/passwd",
                    "/static/label/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/cli.py"):
            response = client.get(url)
            assert response.status_code == 404 and b"root:" not in response.content, url


def test_symbolic_links_out_of_data_are_left_out_and_never_followed(shapes, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = np.full((40, 56), 1, np.uint8)
    Image.fromarray(secret).save(outside / "secret.png")
    shutil.copy(shapes / "images" / "s00.jpg", outside / "photo.jpg")
    os.symlink(outside / "photo.jpg", shapes / "images" / "linked.jpg")  # an image outside DATA
    os.symlink(outside / "secret.png", shapes / "masks" / "s07.png")  # a mask outside DATA
    with client_of(shapes) as client:
        names = [row["name"] for row in client.get("/api/queue").json()["images"]]
        assert "images/linked.jpg" not in names and "images/s07.jpg" not in names
        left_out = client.get("/api/session").json()["left_out"]
        assert any("linked.jpg" in reason for reason in left_out) and any("s07.png" in r for r in left_out)
        assert client.get(f"/api/images/{image_id('images/linked.jpg')}/image").status_code == 404
        # A link made after startup where a new mask would go: the save refuses to write through it.
        target = outside / "planted.png"
        Image.fromarray(secret).save(target)
        os.symlink(target, shapes / "masks" / "s06.png")
        response = save(client, image_id("images/s06.jpg"), np.zeros((40, 56), np.uint8),
                        _facts(client, image_id("images/s06.jpg"))["version"], start="empty")
        assert response.status_code == 409 and "symbolic link" in response.json()["error"]
    assert np.array_equal(read_png(target), secret) and np.array_equal(read_png(outside / "secret.png"), secret)


def test_a_mask_folder_outside_data_is_refused(shapes, tmp_path):
    shutil.move(shapes / "masks", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", shapes / "masks")
    with pytest.raises(DataError, match="points outside"):
        open_session(shapes)


@pytest.mark.parametrize("case, status, words", [
    ("content type", 415, "content type"),
    ("empty", 400, "empty"),
    ("not zlib", 400, "zlib"),
    ("short", 422, "inflates to"),
    ("long", 422, "inflates to more than"),
    ("bomb", 422, "inflates to more than"),
    ("wrong size", 422, "is 56x40"),
    ("no size", 400, "height"),
    ("class 3", 422, "no class"),
    ("no version", 400, "version"),
    ("bad start", 400, "start"),
    ("png of the wrong size", 422, "but images/s06.jpg is 56x40"),
    ("rgb png", 422, "grayscale or palette PNG"),
    ("broken png", 422, "PNG"),
    ("too large", 413, "over the limit"),
])
def test_hostile_uploads_get_a_clear_4xx_and_write_nothing(shapes, case, status, words):
    mask = np.zeros((40, 56), np.uint8)
    url = f"/api/images/{image_id('images/s06.jpg')}/mask"
    query = "?version=none&start=empty&width=56&height=40"
    raw = {"content-type": "application/octet-stream"}
    requests = {
        "content type": (query, deflated(mask), {"content-type": "text/plain"}),
        "empty": (query, b"", raw),
        "not zlib": (query, b"not a zlib stream at all", raw),
        "short": (query, zlib.compress(b"\0" * 100), raw),
        "long": (query, zlib.compress(b"\0" * (40 * 56 + 1)), raw),
        "bomb": (query, zlib.compress(b"\0" * 50_000_000, 9), raw),  # 50 MB in under 64 KiB
        "wrong size": ("?version=none&start=empty&width=40&height=56", deflated(mask.T), raw),
        "no size": ("?version=none&start=empty", deflated(mask), raw),
        "class 3": (query, deflated(np.full((40, 56), 3, np.uint8)), raw),
        "no version": ("?start=empty&width=56&height=40", deflated(mask), raw),
        "bad start": ("?version=none&start=../x&width=56&height=40", deflated(mask), raw),
        "png of the wrong size": (query, png_bytes(np.zeros((10, 10), np.uint8)), {"content-type": "image/png"}),
        "rgb png": (query, png_bytes(np.zeros((40, 56, 3), np.uint8)), {"content-type": "image/png"}),
        "broken png": (query, png_bytes(mask)[:30], {"content-type": "image/png"}),
        "too large": (query, os.urandom(70_000), raw),
    }
    query, body, headers = requests[case]
    with client_of(shapes, max_upload_bytes=65_536) as client:
        response = client.post(url + query, content=body, headers=headers)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
        assert client.get("/api/session").json()["images"] == 8  # still serving
    assert not (shapes / "masks" / "s06.png").exists()
    assert not [p for p in (shapes / "masks").iterdir() if p.name.startswith(".s06")]


def test_a_class_index_png_upload_is_accepted(shapes):
    mask = np.zeros((40, 56), np.uint8)
    mask[10:20, 10:20] = 1
    with client_of(shapes) as client:
        response = client.post(f"/api/images/{image_id('images/s06.jpg')}/mask?version=none&start=empty",
                               content=png_bytes(mask), headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
    assert np.array_equal(read_png(shapes / "masks" / "s06.png"), mask)


def test_without_a_token_only_loopback_hosts_and_same_origin_posts(shapes):
    session = open_session(shapes)
    with TestClient(make_app(session), base_url="http://evil.example:8001") as client:
        assert client.get("/api/queue").status_code == 403  # a page that rebound its domain to this port
    with TestClient(make_app(session), base_url=LOCAL) as client:
        mask = np.zeros((40, 56), np.uint8)
        refused = save(client, image_id("images/s06.jpg"), mask, "none", "empty", origin="http://evil.example")
        assert refused.status_code == 403
        assert save(client, image_id("images/s06.jpg"), mask, "none", "empty", origin=LOCAL).status_code == 200
    with TestClient(make_app(open_session(shapes), token="s3cret"), base_url="http://10.0.0.5:8001") as client:
        assert client.get("/api/queue").status_code == 401
        assert client.get("/api/queue", headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_binding_beyond_loopback_needs_a_token(shapes):
    result = CliRunner().invoke(cli_app, ["label", str(shapes), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "give --token" in result.output and "label: binding to 0.0.0.0" in result.output
    result = CliRunner().invoke(cli_app, ["label", str(shapes / "nothing")])
    assert result.exit_code == 2 and "folder not found" in result.output


# --- the dataset's own encoding ------------------------------------------------------------------------------


def _one_image_dataset(root: Path, mask: np.ndarray | None, mode: str | None = None, palette=None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    if mask is not None:
        image = Image.fromarray(mask) if mode is None else Image.fromarray(mask, mode)
        if palette is not None:
            image.putpalette(palette)
        image.save(root / "masks" / "a.png")
    return root


def test_binary_masks_with_foreground_0_are_written_as_0_and_255(tmp_path):
    values = np.full((20, 30), 255, np.uint8)
    values[:, :5] = 0  # 0 = membrane, the foreground
    data = _one_image_dataset(tmp_path / "membrane", values)
    with client_of(data, LabelOptions(foreground=0)) as client:
        assert np.array_equal(inflated(client.get(f"/api/images/{image_id('images/a.png')}/mask")), values == 0)
        drawn = np.zeros((20, 30), np.uint8)
        drawn[3:9, :] = 1
        assert save(client, image_id("images/b.png"), drawn, "none", "empty").status_code == 200
        ignored = np.full((20, 30), 255, np.uint8)
        response = save(client, image_id("images/b.png"), ignored, "none", "empty")
        assert response.status_code == 422 and "no class (0..1)" in response.json()["error"]  # binary: no ignore
    written = read_png(data / "masks" / "b.png")
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
    assert np.array_equal(written == 0, drawn == 1)


def test_rgb_color_masks_are_written_in_their_colors(tmp_path):
    colors = np.array([[0, 0, 0], [20, 200, 20], [250, 50, 50]], np.uint8)  # numbered by 0xRRGGBB, as check does
    classes = np.zeros((20, 30), np.uint8)
    classes[2:8, 2:8], classes[10:15, 10:25] = 1, 2
    data = _one_image_dataset(tmp_path / "color", colors[classes])
    with client_of(data) as client:
        summary = client.get("/api/session").json()
        assert [c["color"] for c in summary["classes"]] == colors.tolist() and summary["ignore"] is None
        assert np.array_equal(inflated(client.get(f"/api/images/{image_id('images/a.png')}/mask")), classes)
        assert save(client, image_id("images/b.png"), classes[::-1].copy(), "none", "empty").status_code == 200
    assert np.array_equal(read_png(data / "masks" / "b.png"), colors[classes[::-1]])


def test_palette_png_masks_keep_their_palette(tmp_path):
    palette = [0, 0, 0, 10, 20, 30, 200, 100, 50] + [7] * (253 * 3)
    classes = np.zeros((20, 30), np.uint8)
    classes[5:10, 5:10] = 2
    classes[0, :] = 1
    data = _one_image_dataset(tmp_path / "voc", classes, "L", palette)
    with client_of(data) as client:
        assert save(client, image_id("images/b.png"), classes, "none", "empty").status_code == 200
    written = Image.open(data / "masks" / "b.png")
    assert written.mode == "P" and written.getpalette()[:9] == palette[:9]
    assert np.array_equal(np.asarray(written), classes)


def test_a_mask_in_another_encoding_is_a_clear_422_and_can_be_replaced_knowingly(shapes):
    odd = np.zeros((40, 56), np.uint8)
    odd[:, :20] = 7  # no class of the three classes.txt names
    Image.fromarray(odd).save(shapes / "masks" / "s05.png")
    with client_of(shapes) as client:
        rgb = np.zeros((40, 56, 3), np.uint8)
        rgb[:, :20] = (255, 0, 0)
        Image.fromarray(rgb).save(shapes / "masks" / "s04.png")  # an RGB mask written while the page runs
        for name, words in (("s05", "mask values [7] outside the 0..2 classes"), ("s04", "is an RGB color mask")):
            image = image_id(f"images/{name}.jpg")
            response = client.get(f"/api/images/{image}/mask")
            assert response.status_code == 422 and f"{name}.png" in response.json()["error"]
            assert words in response.json()["error"]
            facts = _facts(client, image)
            assert facts["state"] == "labelled" and facts["version"].startswith("sha256:")
            fresh = np.zeros((40, 56), np.uint8)
            fresh[:, :20] = 1
            assert save(client, image, fresh, "none", "empty").status_code == 409  # it exists: not silently
            assert save(client, image, fresh, facts["version"], "empty").status_code == 200
            assert Image.open(shapes / "masks" / f"{name}.png").mode == "L"
            assert np.array_equal(read_png(shapes / "masks" / f"{name}.png"), fresh)


def test_a_mask_of_another_size_is_a_clear_422(shapes):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(shapes / "masks" / "s05.png")
    with client_of(shapes) as client:
        response = client.get(f"/api/images/{image_id('images/s05.jpg')}/mask")
        assert response.status_code == 422 and "10x10 but its image s05.jpg is 56x40" in response.json()["error"]


def test_a_folder_of_images_without_masks_gets_masks_train_can_pair(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(2)
    for name in ("one", "two", "three"):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(data / f"{name}.jpg")
    with pytest.raises(ConfigError, match="no masks yet"):
        open_session(data)
    (data / "classes.txt").write_text("background\ncat\ndog\n")
    with client_of(data) as client:
        rows = client.get("/api/queue").json()["images"]
        assert [row["name"] for row in rows] == ["one.jpg", "three.jpg", "two.jpg"]
        mask = np.zeros((16, 24), np.uint8)
        mask[4:10, 4:10] = 2
        assert save(client, image_id("one.jpg"), mask, "none", "empty").status_code == 200
        assert save(client, image_id("two.jpg"), mask // 2, "none", "empty").status_code == 200
        assert len(client.get("/api/queue").json()["images"]) == 3  # a mask is not an image to label
    assert np.array_equal(read_png(data / "one_mask.png"), mask)
    assert Image.open(data / "one_mask.png").mode == "P"  # a fresh dataset: VOC-style palette PNGs
    found = discover_dataset(data)
    assert sorted(s.name for s in found.splits["all"]) == ["one", "two"]
    assert [p.name for p in found.unpaired_paths] == ["three.jpg"]


def test_a_damaged_label_record_stops_the_start_with_one_line(shapes):
    (shapes / "masks" / PROVENANCE_NAME).write_text('{"format": "masksmith-labels", "version": 1, "masks": '
                                                    '{"s00.png": {"by": "robot", "at": 1}}}')
    with pytest.raises(DataError, match="damaged entry for 's00.png'"):
        open_session(shapes)
    (shapes / "masks" / PROVENANCE_NAME).write_text("{not json")
    with pytest.raises(DataError, match="not a readable label record"):
        open_session(shapes)


# --- the real datasets ----------------------------------------------------------------------------------------


def test_membrane_example_binary_0_is_membrane(tmp_path):
    source = Path(__file__).resolve().parents[3] / "examples" / "membrane"
    data = copy_some(source, tmp_path / "membrane", ["0", "1"])
    (data / "masks" / "1.png").unlink()
    with client_of(data, LabelOptions(foreground=0)) as client:
        summary = client.get("/api/session").json()
        assert summary["encoding"] == {"kind": "binary", "foreground": 0} and summary["images"] == 2
        assert "--foreground 0" in summary["command"]
        shown = inflated(client.get(f"/api/images/{image_id('images/0.png')}/mask"))
        assert np.array_equal(shown, read_png(source / "masks" / "0.png") == 0)
        drawn = np.zeros((512, 512), np.uint8)
        drawn[100:110, :] = 1
        assert save(client, image_id("images/1.png"), drawn, "none", "empty").status_code == 200
    written = read_png(data / "masks" / "1.png")
    assert np.array_equal(written, np.where(drawn == 1, 0, 255))


def test_clothing_index_masks_59_classes(ccp_dir, tmp_path):
    data = copy_some(ccp_dir, tmp_path / "clothing", ["0001", "0002", "0003"], extras=("classes.txt",))
    (data / "masks" / "0003.png").unlink()
    with client_of(data) as client:
        summary = client.get("/api/session").json()
        assert len(summary["classes"]) == 59 and summary["classes"][41]["name"] == "skin"  # classes.txt line 42
        on_disk = read_png(ccp_dir / "masks" / "0001.png")
        assert np.array_equal(inflated(client.get(f"/api/images/{image_id('images/0001.jpg')}/mask")), on_disk)
        mask = np.zeros_like(read_png(ccp_dir / "masks" / "0003.png"))
        mask[100:200, 100:300] = 58
        assert save(client, image_id("images/0003.jpg"), mask, "none", "empty").status_code == 200
    assert Image.open(data / "masks" / "0003.png").mode == "L"
    assert np.array_equal(read_png(data / "masks" / "0003.png"), mask)


# --- the model's help -------------------------------------------------------------------------------------------


def _wait_predicted(client, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = client.get("/api/session").json()["progress"]
        if progress["done"] + progress["failed"] == progress["total"]:
            return progress
        time.sleep(0.05)
    raise AssertionError("the model did not predict every image in time")


@pytest.mark.slow
def test_predictions_rank_the_queue_and_match_the_predictor(trained, shapes):
    _, bundle = trained
    model = ServedModel.load(bundle)
    with client_of(shapes, model=model) as client:
        progress = _wait_predicted(client)
        assert progress == {"done": 8, "failed": 0, "total": 8}
        rows = client.get("/api/queue").json()["images"]
        expected = {}
        for row in rows:
            array = read_image(shapes / row["name"], channels=3)
            probabilities = model.predictor.probabilities([array])[0]
            expected[row["name"]] = image_uncertainty(probabilities)
            assert row["entropy"] == pytest.approx(expected[row["name"]][0], abs=1e-6)
            predicted = inflated(client.get(f"/api/images/{row['id']}/prediction"))
            assert np.array_equal(predicted, model.predictor.decide(probabilities))
        assert [row["state"] for row in rows[:2]] == ["predicted", "predicted"]
        for part in (rows[:2], rows[2:]):  # without a mask first, then the rest; each most uncertain first
            entropies = [row["entropy"] for row in part]
            assert entropies == sorted(entropies, reverse=True)
        summary = client.get("/api/session").json()
        assert summary["model"]["checksum"] == model.checksum and f"--init {bundle}" in summary["command"]


@pytest.mark.slow
def test_accepting_a_prediction_saves_it_as_corrected_with_the_model(trained, shapes):
    _, bundle = trained
    model = ServedModel.load(bundle)
    with client_of(shapes, model=model) as client:
        image = image_id("images/s07.jpg")
        predicted = inflated(client.get(f"/api/images/{image}/prediction"))
        response = save(client, image, predicted, "none", start="prediction")
        assert response.status_code == 200 and response.json()["state"] == "corrected"
        assert response.json()["record"]["model"] == model.checksum
    assert np.array_equal(read_png(shapes / "masks" / "s07.png"), predicted)


@pytest.mark.slow
def test_region_assist_is_the_models_connected_region(trained, shapes):
    _, bundle = trained
    with client_of(shapes, model=ServedModel.load(bundle)) as client:
        image = image_id("images/s00.jpg")
        predicted = inflated(client.get(f"/api/images/{image}/prediction"))
        import cv2

        y, x = map(int, np.argwhere(predicted == predicted.max())[0])
        answer = client.post(f"/api/images/{image}/region?x={x}&y={y}").json()
        count, labels = cv2.connectedComponents((predicted == predicted[y, x]).astype(np.uint8), connectivity=4)
        expected = labels == labels[y, x]
        region = np.frombuffer(zlib.decompress(base64.b64decode(answer["region"])), np.uint8)
        region = region.reshape(answer["height"], answer["width"]).astype(bool)
        full = np.zeros_like(expected)
        full[answer["y"]:answer["y"] + answer["height"], answer["x"]:answer["x"] + answer["width"]] = region
        assert answer["class"] == int(predicted[y, x]) and np.array_equal(full, expected)
        assert answer["pixels"] == int(expected.sum())
        for query in ("x=-1&y=0", "x=56&y=0", "x=0&y=40", "x=a&y=1", "y=1"):
            assert client.post(f"/api/images/{image}/region?{query}").status_code == 400, query
    with client_of(shapes) as client:
        assert client.post(f"/api/images/{image}/region?x=1&y=1").status_code == 404  # needs a model


def test_reload_takes_the_next_runs_model_and_ranks_again(trained, shapes, tmp_path):
    _, bundle = trained
    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    shutil.copy(bundle, run / "model.msb")
    model = ServedModel.load(run / "model.msb")
    with client_of(shapes, model=model) as client:
        _wait_predicted(client)
        summary = client.get("/api/session").json()
        assert summary["next_model"] == str(tmp_path / "runs" / "label1" / "model.msb")
        assert f"--out {tmp_path / 'runs' / 'label1'}" in summary["command"]
        assert client.post("/api/model/reload").status_code == 404  # nothing trained yet
        # "Retrained": the same architecture with other weights, where the command writes it.
        import torch
        from masksmith.bundle import load_bundle, save_bundle

        meta, weights = load_bundle(bundle)
        torch.manual_seed(1)
        save_bundle(tmp_path / "runs" / "label1" / "model.msb",
                    {k: (v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in weights.items()},
                    meta)
        before = {row["id"]: row["entropy"] for row in client.get("/api/queue").json()["images"]}
        reloaded = client.post("/api/model/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["model"]["file"] == str(tmp_path / "runs" / "label1" / "model.msb")
        assert reloaded.json()["next_model"] == str(tmp_path / "runs" / "label2" / "model.msb")
        _wait_predicted(client)
        after = {row["id"]: row["entropy"] for row in client.get("/api/queue").json()["images"]}
        assert after.keys() == before.keys() and after != before


def test_a_model_with_other_classes_is_refused(trained, tmp_path):
    _, bundle = trained
    values = np.full((20, 30), 255, np.uint8)
    values[:, :5] = 0
    data = _one_image_dataset(tmp_path / "binary", values)
    with pytest.raises(ConfigError, match=r"the model has 3 classes \[background, red box, blue box\] but .* has 2"):
        open_session(data, model=ServedModel.load(bundle))


def test_bad_and_oversized_images_are_a_clear_422(shapes):
    (shapes / "images" / "s07.jpg").write_bytes(b"not a jpeg")
    (shapes / "images" / "s06.jpg").unlink()
    (shapes / "images" / "bomb.png").write_bytes(bomb_png())  # 10^10 pixels declared: never decoded
    with client_of(shapes) as client:
        for name, words in (("images/s07.jpg", "s07.jpg"), ("images/bomb.png", "decompression bomb")):
            image = image_id(name)
            assert client.get(f"/api/images/{image}").status_code == 422
            response = client.get(f"/api/images/{image}/image")
            assert response.status_code == 422 and words in response.json()["error"], response.text
            refused = save(client, image, np.zeros((40, 56), np.uint8), "none", "empty")
            assert refused.status_code == 422 and words in refused.json()["error"]
        assert client.get("/api/session").json()["images"] == 8


def test_tiff_and_rotated_images_are_sent_upright_as_png(tmp_path):
    data = tmp_path / "odd"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(data / "images" / "t.tiff")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: read_image turns it upright, 20 wide and 30 high
    Image.fromarray(pixels).save(data / "images" / "r.jpg", exif=exif, quality=95)
    (data / "classes.txt").write_text("background\nthing\n")
    with client_of(data) as client:
        for name, shape in (("images/t.tiff", (20, 30)), ("images/r.jpg", (30, 20))):
            facts = _facts(client, image_id(name))
            assert (facts["height"], facts["width"]) == shape
            response = client.get(f"/api/images/{image_id(name)}/image")
            assert response.headers["content-type"] == "image/png"
            assert np.asarray(Image.open(io.BytesIO(response.content))).shape[:2] == shape


@pytest.mark.slow
def test_the_command_serves_the_page_on_loopback(shapes):
    import subprocess
    import sys

    import httpx

    process = subprocess.Popen([sys.executable, "-c", "from masksmith.cli import main; main()", "label", str(shapes),
                                "--port", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("masksmith label: http://127.0.0.1:"), first
        url = first.split()[2]
        lines = [process.stdout.readline() for _ in range(3)]
        assert "8 images, 6 with a mask; 3 classes, index masks" in lines[0]
        assert lines[1].strip().startswith("retrain  masksmith train")
        assert httpx.get(f"{url}api/session", timeout=30).json()["images"] == 8
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and '<script src="/static/label/label.js">' in page.text
        # Scripts and styles come from files only, so a Content-Security-Policy of 'self' allows the page.
        assert page.text.count("<script") == page.text.count("<script src=") and "<style" not in page.text
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", page.text)  # no inline event handlers
        for asset in ("/static/label/label.js", "/static/label/label.css", "/static/style.css"):
            assert httpx.get(url.rstrip("/") + asset, timeout=30).status_code == 200
    finally:
        process.terminate()
        process.wait(30)


def test_split_folders_an_unlabelled_test_split_gets_its_masks_folder(tmp_path, make_image_mask_pairs):
    data = tmp_path / "splits"
    make_image_mask_pairs(data / "train" / "images", data / "train" / "masks", ["a", "b"], size=(12, 16))
    make_image_mask_pairs(data / "val" / "images", data / "val" / "masks", ["c"], size=(12, 16))
    make_image_mask_pairs(data / "test" / "images", tmp_path / "unused", ["d"], size=(12, 16))
    with client_of(data) as client:
        rows = client.get("/api/queue").json()["images"]
        assert [(row["name"], row["state"]) for row in rows] == [
            ("test/images/d.png", "unlabelled"), ("train/images/a.png", "labelled"),
            ("train/images/b.png", "labelled"), ("val/images/c.png", "labelled")]
        mask = np.ones((12, 16), np.uint8)
        assert save(client, image_id("test/images/d.png"), mask, "none", "empty").status_code == 200
    assert np.array_equal(read_png(data / "test" / "masks" / "d.png"), mask)
    assert sorted(discover_dataset(data).splits) == ["test", "train", "val"]
