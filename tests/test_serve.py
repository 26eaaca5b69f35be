"""msrn serve: the JSON API through Flask's test client and on waitress under concurrent load, and the page
end to end in headless chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
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

from msrn.errors import MSRNError
from msrn.inference.predictor import load
from msrn.models import create_model, model_state

pytest.importorskip("flask", reason="flask not installed (pip install 'msrn[serve]')")

import msrn.inference.serving.lifecycle as lifecycle  # noqa: E402  (needs flask)
import msrn.inference.serving.routes as routes  # noqa: E402
from msrn.inference.serve import ServeOptions, serve_token  # noqa: E402
from msrn.inference.serving.batching import Batcher  # noqa: E402
from msrn.inference.serving.lifecycle import GracefulStop, make_server  # noqa: E402
from msrn.inference.serving.routes import ServeLimits, create_app  # noqa: E402

LABELS = ["cat", "dog", "car", "tree", "sky"]
CHROMIUM = os.environ.get("MSRN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
    return create_app(load(checkpoints["msrn"]), ServeLimits(explain_labels=3, max_upload_mb=1)).test_client()


def _post(client, data: bytes, name: str = "scene.png", explain: bool = False):
    """POST one file to /api/predict."""
    form = {"image": (io.BytesIO(data), name), **({"explain": "1"} if explain else {})}
    return client.post("/api/predict", data=form, content_type="multipart/form-data")


def test_predict_api_returns_record_scores_and_panels(client, checkpoints: dict) -> None:
    r = _post(client, _png(), explain=True)
    assert r.status_code == 200
    data = r.get_json()
    assert data["record"] == {
        **load(checkpoints["msrn"]).predict(Image.open(io.BytesIO(_png())))[0],
        "image": "scene.png",
    }
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
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    parts = [head + data + b"\r\n"]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
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
    expected = {
        r["image"].rsplit("/", 1)[-1]: r
        for r in load(checkpoints["msrn"]).predict([tmp_path / n for n in good], threshold=0.0)
    }
    bad = {
        "broken.jpg": (b"\xff\xd8\xff\xe0 nothing more", 400, "cannot decode image"),
        "bomb.png": (bomb_png(3000, 3000), 400, "megapixels"),
        "cut.png": (_png()[:80], 400, "cannot decode image"),
        "huge.png": (b"\0" * (1024 * 1024 + 10), 413, "larger than 1 MB"),
    }
    jobs = [(n, d, 200, "") for n, d in good.items()] * 2 + [(n, *v) for n, v in bad.items()] * 2
    predictor = load(checkpoints["msrn"], max_pixels=4_000_000)
    app = create_app(predictor, ServeLimits(max_upload_mb=1, queue=32, batch_size=4, batch_wait_ms=50))
    with _serving(app) as url, ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _upload(url, job[1], job[0], explain="1" if "1" in job[0] else "0"), jobs))
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
    app = create_app(predictor, ServeLimits(queue=2))
    with _serving(app) as url, ThreadPoolExecutor(2) as pool:
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
        assert _metric(app, "msrn_refused_total", reason="busy") == 1
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


# -- facing a network: token, metrics, access log, drain ---------------------------------------------------


def _metric(app, name: str, **labels: str) -> float | None:
    """One sample's value from the app's /metrics text (parsed with prometheus_client), None when absent."""
    from prometheus_client.parser import text_string_to_metric_families  # optional: the serve extra

    text = app.test_client().get("/metrics", headers=app.config.get("TEST_AUTH", {})).get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_token_guards_every_route_but_the_page_and_healthz(checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []
    real = routes.hmac.compare_digest
    monkeypatch.setattr(routes.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    client = create_app(load(checkpoints["msrn"]), token="s3cret-token").test_client()
    good = {"Authorization": "Bearer s3cret-token"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "s3cret-token"},
        {"Authorization": "Basic s3cret-token"},
    ):
        for method, path in (("get", "/api/info"), ("get", "/metrics"), ("post", "/api/predict")):
            r = getattr(client, method)(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert "Bearer" in r.get_json()["error"] and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert compared  # the token is compared with hmac.compare_digest (constant time)
    assert client.get("/api/info", headers=good).get_json()["labels"] == LABELS
    assert client.get("/metrics", headers=good).status_code == 200
    r = client.post(
        "/api/predict", data={"image": (io.BytesIO(_png()), "a.png")}, headers=good, content_type="multipart/form-data"
    )
    assert r.status_code == 200 and r.get_json()["record"]["image"] == "a.png"
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


@pytest.mark.parametrize(
    ("host", "env", "insecure", "outcome"),
    [
        ("127.0.0.1", None, False, None),
        ("::1", None, False, None),
        ("localhost", None, False, None),
        ("0.0.0.0", None, False, "refused"),
        ("10.1.2.3", None, False, "refused"),
        ("myhost", None, False, "refused"),
        ("0.0.0.0", "from-env", False, "from-env"),
        ("0.0.0.0", None, True, None),
    ],
)
def test_non_loopback_without_token_is_refused_unless_insecure(
    host: str,
    env: str | None,
    insecure: bool,
    outcome: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.delenv("MSRN_SERVE_TOKEN", raising=False)
    if env:
        monkeypatch.setenv("MSRN_SERVE_TOKEN", env)
    args = ServeOptions(checkpoint="best.pt", host=host, insecure_no_token=insecure)
    if outcome == "refused":
        with pytest.raises(MSRNError, match="--insecure-no-token"):
            serve_token(args)
        return
    assert serve_token(args) == outcome
    assert ("WARNING" in capsys.readouterr().err) == insecure


def test_metrics_count_known_traffic(checkpoints: dict) -> None:
    """Two tagged images, one unreadable upload, one info request, one 503 while draining: each counted."""
    app = create_app(load(checkpoints["msrn"]), ServeLimits(max_upload_mb=1, batch_size=4))
    client = app.test_client()
    assert _post(client, _png()).status_code == 200
    assert _post(client, _png((64, 64))).status_code == 200
    assert _post(client, b"not an image", "x.png").status_code == 400
    assert client.get("/api/info").status_code == 200
    app.extensions["msrn_draining"].set()
    refused = _post(client, _png())
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 503
    app.extensions["msrn_draining"].clear()
    assert _metric(app, "msrn_requests_total", route="/api/predict", status="200") == 2
    assert _metric(app, "msrn_requests_total", route="/api/predict", status="400") == 1
    assert _metric(app, "msrn_requests_total", route="/api/predict", status="503") == 1
    assert _metric(app, "msrn_requests_total", route="/api/info", status="200") == 1
    assert _metric(app, "msrn_request_seconds_count", route="/api/predict") == 4
    assert _metric(app, "msrn_request_seconds_bucket", route="/api/predict", le="+Inf") == 4
    assert _metric(app, "msrn_refused_total", reason="draining") == 1
    assert _metric(app, "msrn_unreadable_uploads_total") == 1
    assert _metric(app, "msrn_images_total") == 2
    assert _metric(app, "msrn_batch_images_count") == 2 and _metric(app, "msrn_batch_images_sum") == 2
    assert _metric(app, "msrn_queue_depth") == 0
    other = create_app(load(checkpoints["msrn"]))  # a registry per app: nothing shared
    assert _metric(other, "msrn_images_total") == 0


def test_access_log_line_and_request_id(client, caplog: pytest.LogCaptureFixture) -> None:
    """One JSON line per request (time, id, route, status, images, ms); the id is returned in X-Request-ID,
    a client's own id is kept when it is sane and replaced when not."""
    with caplog.at_level("INFO", logger="msrn.serve.access"):
        mine = client.post(
            "/api/predict",
            data={"image": (io.BytesIO(_png()), "s.png")},
            content_type="multipart/form-data",
            headers={"X-Request-ID": "lb-1234.abc"},
        )
        bad_id = client.get("/api/info", headers={"X-Request-ID": "has spaces <b>" + "x" * 200})
        client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert mine.headers["X-Request-ID"] == "lb-1234.abc"
    assert len(bad_id.headers["X-Request-ID"]) == 32 and "<" not in bad_id.headers["X-Request-ID"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "msrn.serve.access"]
    assert len(lines) == 3
    assert {k for k in lines[0]} >= {"time", "id", "route", "status", "images", "ms"}
    assert (lines[0]["id"], lines[0]["route"], lines[0]["status"], lines[0]["images"]) == (
        "lb-1234.abc",
        "/api/predict",
        200,
        1,
    )
    assert (lines[1]["id"], lines[1]["route"], lines[1]["images"]) == (bad_id.headers["X-Request-ID"], "/api/info", 0)
    assert (lines[2]["status"], lines[2]["images"]) == (400, 0) and lines[2]["ms"] >= 0


def test_shutdown_without_waitress_trigger(checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The public fallbacks of Server (no waitress trigger, no dispatcher): requests are answered, serving ends."""
    monkeypatch.setattr(lifecycle, "_loop_caller", lambda server: None)
    monkeypatch.setattr(lifecycle, "_stop_worker_threads", lambda server: None)
    with _serving(create_app(load(checkpoints["msrn"]))) as url:  # _serving asserts the thread ended
        assert _upload(url, _png(), "a.png")[0] == 200
        assert json.loads(urllib.request.urlopen(url + "healthz", timeout=10).read())["status"] == "ok"


def test_sigterm_drains_16_requests_in_flight(checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM with 16 requests admitted and held in the model: a new request gets 503 + Retry-After at once,
    all 16 are answered with predict's scores, and serving ends with status 0 well within the grace period."""
    predictor = load(checkpoints["msrn"])
    release = threading.Event()
    run = predictor.run

    def held_run(*args, **kwargs):
        assert release.wait(60)
        return run(*args, **kwargs)

    sizes = [(120, 90), (64, 64), (90, 160), (200, 120)] * 4
    expected = predictor.probabilities([Image.open(io.BytesIO(_png(s))) for s in sizes])
    monkeypatch.setattr(predictor, "run", held_run)
    app = create_app(predictor, ServeLimits(queue=16, batch_size=4))
    server = make_server(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/"
    results: dict = {}
    safety = threading.Timer(120, server.shutdown)  # never hang the test run

    def clients() -> None:
        try:
            with ThreadPoolExecutor(16) as pool:
                futures = [pool.submit(_upload, url, _png(s), f"img{i}.png") for i, s in enumerate(sizes)]
                deadline = time.monotonic() + 60
                while json.loads(urllib.request.urlopen(url + "healthz", timeout=10).read())["in_progress"] < 16:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGTERM)
                t0 = time.monotonic()
                results["late"] = _upload(url, _png(), "late.png")
                results["late_s"] = time.monotonic() - t0
                release.set()
                results["answers"] = [f.result(timeout=60) for f in futures]
        except BaseException as e:  # noqa: BLE001  (reported by the test body)
            results["error"] = e
            release.set()
            server.shutdown()

    thread = threading.Thread(target=clients)
    safety.start()
    thread.start()
    t0 = time.monotonic()
    try:
        with GracefulStop(app, grace=20) as stop:
            server.serve_forever()
    finally:
        safety.cancel()
        thread.join(60)
        server.server_close()
    assert "error" not in results, results.get("error")
    assert stop.status == 0 and time.monotonic() - t0 < 60
    status, body, headers = results["late"]
    assert status == 503 and headers["Retry-After"] == "1" and "shutting down" in body["error"]
    assert results["late_s"] < 5
    assert [a[0] for a in results["answers"]] == [200] * 16
    for i, (_, body, _) in enumerate(results["answers"]):
        scores = {s["label"]: s["score"] for s in body["scores"]}
        assert body["record"]["image"] == f"img{i}.png"
        assert max(abs(scores[lab] - expected[i][LABELS.index(lab)]) for lab in scores) <= 1e-5


@pytest.mark.slow  # starts `msrn serve` in a subprocess
def test_msrn_serve_process_drains_on_sigterm_and_exits_0(checkpoints: dict) -> None:
    """The real command: SIGTERM while 16 requests are being sent; each gets 200 or 503, the process exits 0,
    and stderr holds one JSON access line per request."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MSRN_SERVE_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "msrn",
            "serve",
            "--checkpoint",
            str(checkpoints["msrn"]),
            "--port",
            "0",
            "--grace",
            "20",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        while "on http://" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "msrn serve ended before listening"
        url = re.search(r"(http://\S+/)", line).group(1)
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_upload, url, _png(), f"p{i}.png") for i in range(16)]
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in futures]
        assert proc.wait(60) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert all(a[2]["Retry-After"] == "1" for a in answers if a[0] == 503)
    logged = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert sorted(x["status"] for x in logged if x["route"] == "/api/predict") == sorted(statuses)
    assert "SIGTERM" in err


def test_second_sigterm_stops_at_once(checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request held in the model, SIGTERM (drain begins), SIGTERM again: serving ends at once with 143."""
    predictor = load(checkpoints["msrn"])
    release, started = threading.Event(), threading.Event()
    run = predictor.run

    def held_run(*args, **kwargs):
        started.set()
        release.wait(60)
        return run(*args, **kwargs)

    monkeypatch.setattr(predictor, "run", held_run)
    app = create_app(predictor)
    server = make_server(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/"
    safety = threading.Timer(120, server.shutdown)

    def client() -> None:
        with contextlib.suppress(Exception):  # the connection may be cut: that is the point
            _upload(url, _png(), "held.png")

    def signals() -> None:
        assert started.wait(60)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    threads = [threading.Thread(target=client, daemon=True), threading.Thread(target=signals, daemon=True)]
    safety.start()
    for t in threads:
        t.start()
    t0 = time.monotonic()
    try:
        with GracefulStop(app, grace=60) as stop:
            server.serve_forever()
        ended = time.monotonic() - t0
    finally:
        safety.cancel()
        release.set()
        server.server_close()
    assert stop.status == 143 and ended < 30  # not the 60 s the held request would have been given
    drains = [t for t in threading.enumerate() if t.name == "msrn-drain"]
    for t in drains:  # released, the held request finishes; the drain thread ends without a late SIGTERM
        t.join(30)
    assert not any(t.is_alive() for t in drains)
