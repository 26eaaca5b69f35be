"""msrn serve: the JSON API through Flask's test client, and the page end to end in headless chromium."""
from __future__ import annotations

import base64
import io
import os
import shutil
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from msrn.models import create_model
from msrn.models.loading import model_state
from msrn.predict import load

pytest.importorskip("flask", reason="flask not installed (pip install 'msrn[serve]')")

from msrn.serve import create_app, make_server  # noqa: E402  (needs flask)

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


def _post(client, data: bytes, name: str = "scene.png"):
    """POST one file to /api/predict."""
    return client.post("/api/predict", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_predict_api_returns_record_scores_and_panels(client, checkpoints: dict) -> None:
    r = _post(client, _png())
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
    server = make_server(create_app(load(checkpoints["msrn"])), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.shutdown()
        thread.join(5)


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
