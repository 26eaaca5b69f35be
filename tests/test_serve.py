"""msrn serve: the JSON API through Flask's test client and on waitress under concurrent load, and the page
end to end in headless chromium."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from image_helpers import bomb_png, sideways_jpeg
from PIL import Image

from msrn.inference.predictor import load
from msrn.models import create_model
from msrn.models.loading import model_state

pytest.importorskip("flask", reason="flask not installed (pip install 'msrn[serve]')")

from msrn.inference.serve import Batcher, create_app, make_server  # noqa: E402  (needs flask)

LABELS = ["cat", "dog", "car", "tree", "sky"]
CHROMIUM = os.environ.get("MSRN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _png(size: tuple[int, int] = (120, 90)) -> bytes:
    """A small picture: sky, grass and a red disc."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = (120, 170, 230)
    arr[yy > 0.65 * h] = (70, 140, 60)
    arr[(xx - 0.3 * w) ** 2 + (yy - 0.5 * h) ** 2 < (0.18 * h) ** 2] = (200, 60, 40)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny MSRN and baseline checkpoints."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    torch.save(model_state(create_model("msrn_tiny", labels=LABELS), image_size=64), root / "msrn.pt")
    torch.save(model_state(create_model("baseline_tiny", labels=LABELS), image_size=64), root / "base.pt")
    return {"msrn": root / "msrn.pt", "baseline": root / "base.pt", "root": root}


@pytest.fixture(scope="module")
def client(checkpoints: dict):
    """Flask test client of the app over the tiny MSRN."""
    return create_app(load(checkpoints["msrn"]), explain_k=3, max_upload_mb=1).test_client()


def _post(client, data: bytes, name: str = "scene.png", explain: bool = False):
    """POST one file to /api/predict."""
    form = {"image": (io.BytesIO(data), name), **({"explain": "1"} if explain else {})}
    return client.post("/api/predict", data=form, content_type="multipart/form-data")


def test_predict_api_returns_record_scores_and_panels(client, checkpoints: dict) -> None:
    r = _post(client, _png(), explain=True)
    assert r.status_code == 200
    data = r.get_json()
    assert data["record"] == {**load(checkpoints["msrn"]).predict(Image.open(io.BytesIO(_png())))[0],
                              "image": "scene.png"}
    assert [s["score"] for s in data["scores"]] == sorted((s["score"] for s in data["scores"]), reverse=True)
    assert len(data["depths"]) == 3 and len(data["panels"]) == 3
    panel = data["panels"][0]
    assert panel["label"] == data["scores"][0]["label"] and len(panel["images"]) == 3
    assert Image.open(io.BytesIO(base64.b64decode(panel["images"][0]))).format == "PNG"
    assert client.get("/api/info").get_json()["labels"] == LABELS
    assert b"Drop an image here" in client.get("/").data
    plain = _post(client, _png()).get_json()  # explanations cost time: only on request
    assert plain["panels"] == [] and plain["depths"] == [] and plain["scores"] == data["scores"]
    assert plain["record"] == data["record"]
    health = client.get("/healthz").get_json()
    assert health["status"] == "ok" and health["in_progress"] == 0 and health["images"] >= 2


def test_bad_uploads_get_one_line_json_errors(client) -> None:
    bad = _post(client, b"definitely not an image", "notes.png")
    assert bad.status_code == 400 and bad.get_json()["error"].startswith("notes.png: cannot decode image")
    empty = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert empty.status_code == 400 and "'image'" in empty.get_json()["error"]
    big = _post(client, b"\0" * (2 * 1024 * 1024))
    assert big.status_code == 413 and "larger than 1 MB" in big.get_json()["error"]
    truncated = _post(client, _png()[:60])
    assert truncated.status_code == 400 and "\n" not in truncated.get_json()["error"]


def test_baseline_is_served_without_panels(checkpoints: dict) -> None:
    client = create_app(load(checkpoints["baseline"])).test_client()
    data = _post(client, _png()).get_json()
    assert data["panels"] == [] and len(data["scores"]) == 5
    assert client.get("/api/info").get_json()["explain"] is False


@pytest.fixture
def live_server(checkpoints: dict) -> Iterator[str]:
    """The app on a free loopback port, served from a thread."""
    with _serving(create_app(load(checkpoints["msrn"]))) as url:
        yield url


@pytest.mark.slow  # drives a real browser
def test_page_in_headless_chromium(live_server: str, checkpoints: dict) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set MSRN_CHROMIUM)")
    image = checkpoints["root"] / "scene.png"
    image.write_bytes(_png((160, 120)))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(live_server)
            sync_api.expect(page.locator("#model-info")).to_contain_text("5 labels")
            page.set_input_files("#file", str(image))
            sync_api.expect(page.locator("#panels img.panel")).to_have_count(9, timeout=30_000)
            sync_api.expect(page.locator("#labels .label-row")).to_have_count(5)
            assert page.locator("#status").inner_text().startswith("scene.png:")
            assert page.locator("#panels .col-title").all_inner_texts()[0].startswith("depth 1")
            loaded = page.eval_on_selector_all("#panels img.panel", "imgs => imgs.every(i => i.naturalWidth > 0)")
            assert loaded
            if os.environ.get("MSRN_SCREENSHOT"):
                page.screenshot(path=os.environ["MSRN_SCREENSHOT"], full_page=True)
            bad = checkpoints["root"] / "broken.png"
            bad.write_bytes(b"nope")
            page.set_input_files("#file", str(bad))
            sync_api.expect(page.locator("#status.error")).to_contain_text("broken.png: cannot decode image")
        finally:
            browser.close()


def _multipart(data: bytes, name: str, **fields: str) -> tuple[bytes, str]:
    """A multipart/form-data body with the file as field `image`, and its Content-Type."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    parts = [head + data + b"\r\n"]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
              for k, v in fields.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _upload(url: str, data: bytes, name: str, **fields: str) -> tuple[int, dict, dict]:
    """POST to a live server's /api/predict: status, JSON body (or {}), headers."""
    body, kind = _multipart(data, name, **fields)
    req = urllib.request.Request(url + "api/predict", body, {"Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if text.startswith(b"{") else {}, dict(e.headers)


@contextlib.contextmanager
def _serving(app) -> Iterator[str]:
    """The app on waitress on a free loopback port, served from a thread."""
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive()


def test_concurrent_mixed_uploads_get_their_status_and_predicts_scores(checkpoints: dict, tmp_path) -> None:
    """Good, sideways, corrupt, bomb and too-large uploads at once: each its status; good ones get predict's scores."""
    good = {}
    for i, size in enumerate([(120, 90), (64, 64), (300, 200), (90, 160), (50, 70), (200, 200)]):
        good[f"good{i}.png"] = _png(size)
    good["phone.jpg"] = sideways_jpeg(Image.open(io.BytesIO(_png((160, 120)))))
    for name, data in good.items():
        (tmp_path / name).write_bytes(data)
    expected = {r["image"].rsplit("/", 1)[-1]: r for r in load(checkpoints["msrn"]).predict(
        [tmp_path / n for n in good], threshold=0.0)}
    bad = {"broken.jpg": (b"\xff\xd8\xff\xe0 nothing more", 400, "cannot decode image"),
           "bomb.png": (bomb_png(3000, 3000), 400, "megapixels"),
           "cut.png": (_png()[:80], 400, "cannot decode image"),
           "huge.png": (b"\0" * (1024 * 1024 + 10), 413, "larger than 1 MB")}
    jobs = [(n, d, 200, "") for n, d in good.items()] * 2 + [(n, *v) for n, v in bad.items()] * 2
    predictor = load(checkpoints["msrn"], max_pixels=4_000_000)
    app = create_app(predictor, max_upload_mb=1, queue=32, batch_size=4, batch_wait_ms=50)
    with _serving(app) as url, ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _upload(url, job[1], job[0], explain="1" if "1" in job[0] else "0"),
                                jobs))
        health = json.loads(urllib.request.urlopen(url + "healthz", timeout=10).read())
    for (name, _, status, words), (got, body, _) in zip(jobs, answers, strict=True):
        assert got == status, (name, got, body)
        if status != 200:
            assert words in body["error"] and "\n" not in body["error"]
            continue
        scores = {s["label"]: s["score"] for s in body["scores"]}
        want = {x["label"]: x["score"] for x in expected[name]["labels"]}
        assert scores.keys() == want.keys()
        assert max(abs(scores[k] - want[k]) for k in want) <= 1e-5, name
        assert body["record"]["image"] == name and len(body["panels"]) == (3 if "1" in name else 0)
    assert health["images"] == 2 * len(good) and health["in_progress"] == 0


def test_full_queue_answers_503_at_once(checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = load(checkpoints["msrn"])
    release, started = threading.Event(), threading.Event()
    run = predictor.run

    def held_run(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return run(*args, **kwargs)

    monkeypatch.setattr(predictor, "run", held_run)
    with _serving(create_app(predictor, queue=2)) as url, ThreadPoolExecutor(2) as pool:
        first = [pool.submit(_upload, url, _png(), f"held{i}.png") for i in range(2)]
        assert started.wait(30)
        deadline = time.monotonic() + 30
        while json.loads(urllib.request.urlopen(url + "healthz", timeout=10).read())["in_progress"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        status, body, headers = _upload(url, _png(), "third.png")
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in body["error"]
        assert time.monotonic() - t0 < 5  # refused at once, not queued behind the held requests
        release.set()
        assert [f.result(timeout=60)[0] for f in first] == [200, 200]
        assert _upload(url, _png(), "later.png")[0] == 200


def test_batcher_runs_requests_that_arrive_together_as_one_batch(checkpoints: dict) -> None:
    predictor = load(checkpoints["msrn"])
    images = [Image.open(io.BytesIO(_png(size))) for size in [(120, 90), (64, 64), (90, 160)]]
    batcher = Batcher(predictor, batch_size=4, max_wait=30.0, explain_k=0)
    try:
        t0 = time.monotonic()
        batcher.expect()
        (alone, _, _) = batcher.submit(predictor.transform(images[0]), False).result(timeout=30)
        assert time.monotonic() - t0 < 10  # nobody else decoding: no wait for company
        for _ in images:
            batcher.expect()
        futures = [batcher.submit(predictor.transform(img), False) for img in images]
        rows = np.stack([f.result(timeout=30)[0] for f in futures])
    finally:
        batcher.close()
    assert (batcher.batches, batcher.largest) == (2, 3)  # the three announced requests ran together
    np.testing.assert_allclose(rows, predictor.probabilities(images), atol=1e-5)
    np.testing.assert_allclose(alone, rows[0], atol=1e-5)
