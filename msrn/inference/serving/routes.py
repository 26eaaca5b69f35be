"""The Flask app of `msrn serve`: its routes (the page, /api/info, /healthz, /metrics, /api/predict), the token
check, the request ids and access log, the Prometheus metrics and the shape of an answer."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS, open_image
from msrn.inference.draw import panel_size, panels
from msrn.inference.explain import concentration, is_explainable
from msrn.inference.predictor import Predictor
from msrn.inference.serving.batching import Admission, Batcher, PixelBudget, declared_pixels
from msrn.inference.serving.lifecycle import InFlight
from msrn.options import Options, batch_size_option, option
from msrn.plots import image_png

MAX_UPLOAD_MB = 20
SHOWN_SCORES = 10  # scores listed on the page, best first
QUEUE = 16  # requests in progress at once; more get 503
BATCH_SIZE = 8
BATCH_WAIT_MS = 5.0
RETRY_AFTER_S = 1
TRUE = ("1", "true", "yes", "on")
TOKEN_ENV = "MSRN_SERVE_TOKEN"
OPEN_ROUTES = ("/", "/healthz")  # no token needed: the static page and the load balancer's probe
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's X-Request-ID is kept when it looks like this
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
access_log = logging.getLogger("msrn.serve.access")


@dataclass(frozen=True, kw_only=True)
class ServeLimits(Options):
    """What one server takes on: `create_app`'s limits, and the flags of `msrn serve` that set them."""

    explain_labels: int = option(
        3, "attention panels for the N best labels, when a request asks (default 3; 0: none)", low=0, metavar="N"
    )
    max_upload_mb: float = option(
        MAX_UPLOAD_MB, f"largest accepted upload (default {MAX_UPLOAD_MB})", low=0, bounds="(]", metavar="MB"
    )
    queue: int = option(
        QUEUE, f"requests in progress at once; more get 503 with Retry-After (default {QUEUE})", low=1, metavar="N"
    )
    batch_size: int = batch_size_option(BATCH_SIZE, "requests batched into one forward pass")
    batch_wait_ms: float = option(
        BATCH_WAIT_MS,
        f"longest wait for more requests to fill a batch (default {BATCH_WAIT_MS:g})",
        low=0,
        metavar="MS",
    )


def _b64_png(image: Image.Image) -> str:
    """A PIL image as a base64 PNG string for a data: URL."""
    return base64.b64encode(image_png(image)).decode("ascii")


def answer(predictor: Predictor, name: str, probs: np.ndarray, explanation: Any) -> dict[str, Any]:
    """The JSON answer for one image: its record, its best scores and (if explained) attention panels."""
    record = predictor.record(name, probs)
    out: dict[str, Any] = {"record": record, "depths": [], "panels": []}
    if explanation is not None:
        out["depths"] = explanation.depth_titles()
        out["panels"] = [
            {
                "label": explanation.labels[j],
                "score": round(explanation.scores[j], 6),
                "images": [_b64_png(p) for p in row],
                "peaks": [round(concentration(m[j]), 2) for m in explanation.maps],
            }
            for j, row in enumerate(panels(explanation))
        ]
    reported = {x["label"] for x in record["labels"]}
    out["scores"] = [
        {
            "label": predictor.labels[i],
            "score": round(float(probs[i]), 6),
            "threshold": round(float(predictor.thresholds[i]), 6),
            "reported": predictor.labels[i] in reported,
        }
        for i in probs.argsort(kind="stable")[::-1][:SHOWN_SCORES]
    ]
    return out


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (so that apps, and tests, do not share)."""

    def __init__(self, queue_depth: Callable[[], float], batch_size: int) -> None:
        try:
            import prometheus_client as prom  # optional: the `serve` extra
        except ImportError:
            raise MSRNError("msrn serve needs prometheus_client: pip install 'msrn[serve]'") from None
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "msrn_requests", "Requests answered, by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = prom.Histogram(
            "msrn_request_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = prom.Gauge(
            "msrn_queue_depth", "Prediction requests admitted and in progress", registry=self.registry
        )
        self.queue.set_function(queue_depth)
        self.batches = prom.Histogram(
            "msrn_batch_images",
            "Images per forward pass (micro-batch size)",
            buckets=tuple(range(1, batch_size + 1)),
            registry=self.registry,
        )
        self.refused = prom.Counter(
            "msrn_refused", "Requests refused with 503, by reason (busy, draining)", ["reason"], registry=self.registry
        )
        self.unreadable = prom.Counter(
            "msrn_unreadable_uploads", "Uploads that were not a readable image (400)", registry=self.registry
        )
        self.images = prom.Counter("msrn_images", "Images tagged", registry=self.registry)
        self.text = lambda: prom.generate_latest(self.registry)
        self.content_type = prom.CONTENT_TYPE_LATEST


def token_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header is `Bearer TOKEN`, compared in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    ok_scheme = scheme.lower() == "bearer"
    return hmac.compare_digest(given.strip().encode(), token.encode()) and ok_scheme


def create_app(predictor: Predictor, limits: ServeLimits | None = None, token: str | None = None) -> Any:
    """The Flask application serving one predictor within `limits` (default: ServeLimits()).

    Its batching thread is `app.extensions["msrn"]`, its metrics `app.extensions["msrn_metrics"]`, its request
    counter `app.extensions["msrn_in_flight"]`; setting `app.extensions["msrn_draining"]` makes it refuse new
    requests (503)."""
    try:
        from flask import Flask, g, jsonify, request  # optional: the `serve` extra
    except ImportError:
        raise MSRNError("msrn serve needs Flask: pip install 'msrn[serve]'") from None
    limits = limits or ServeLimits()
    queue, batch_size, max_upload_mb = limits.queue, limits.batch_size, limits.max_upload_mb
    if token is not None and not token.strip():
        raise MSRNError(f"the token is empty: give --token (or {TOKEN_ENV}) a secret, or leave it out")
    explain_k = limits.explain_labels if is_explainable(predictor.model) else 0
    page = resources.files("msrn.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    app = Flask("msrn.inference.serve")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.config["MSRN_QUEUE"] = queue
    admission = Admission(queue)
    metrics = Metrics(lambda: admission.count, batch_size)
    batcher = Batcher(predictor, batch_size, limits.batch_wait_ms / 1000, explain_k, on_batch=metrics.batches.observe)
    draining = threading.Event()
    app.extensions.update(msrn=batcher, msrn_metrics=metrics, msrn_draining=draining)
    budget = PixelBudget(predictor.max_pixels or DEFAULT_MAX_PIXELS)

    def refuse(reason: str, message: str) -> Any:
        metrics.refused.labels(reason).inc()
        return jsonify(error=message), 503, {"Retry-After": str(RETRY_AFTER_S)}

    @app.before_request
    def admit() -> Any:
        """Name the request, then refuse it while draining or without the token (the open routes excepted)."""
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        g.start, g.images = time.perf_counter(), 0
        if draining.is_set():
            if request.path == "/healthz":
                return jsonify(status="draining"), 503, {"Retry-After": str(RETRY_AFTER_S)}
            return refuse("draining", f"the server is shutting down; retry in {RETRY_AFTER_S} s (another replica)")
        if (
            token is not None
            and request.path not in OPEN_ROUTES
            and not token_matches(request.headers.get("Authorization"), token)
        ):
            return (
                jsonify(error="unauthorised: send the header 'Authorization: Bearer <token>'"),
                401,
                {"WWW-Authenticate": 'Bearer realm="msrn"'},
            )
        return None

    @app.after_request
    def record(response: Any) -> Any:
        """Count and time the request, write its access-log line and return its id."""
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        seconds = time.perf_counter() - g.start
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        response.headers["X-Request-ID"] = g.request_id
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "id": g.request_id,
                        "method": request.method,
                        "route": route,
                        "status": response.status_code,
                        "images": g.images,
                        "ms": round(seconds * 1000, 2),
                    }
                )
            )
        return response

    @app.get("/")
    def index() -> Any:
        return page, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/api/info")
    def info() -> Any:
        return jsonify(
            labels=predictor.labels,
            image_size=predictor.image_size,
            explain=explain_k > 0,
            max_upload_mb=max_upload_mb,
            max_megapixels=(predictor.max_pixels or 0) / 1e6,
            batch_size=batch_size,
            queue=queue,
        )

    @app.get("/healthz")
    def health() -> Any:
        return jsonify(
            status="ok",
            in_progress=admission.count,
            queue=queue,
            batches=batcher.batches,
            images=batcher.images,
            largest_batch=batcher.largest,
        )

    @app.get("/metrics")
    def prometheus() -> Any:
        return metrics.text(), 200, {"Content-Type": metrics.content_type}

    def tag(upload: Any, name: str, explain: bool) -> dict[str, Any]:
        """Decode within the pixel budget, keep only the input tensor (and a panel-sized copy), batch."""
        batcher.expect()
        try:
            with budget.reserve(declared_pixels(upload.stream)):
                image = open_image(
                    upload.stream, name, exif_orientation=predictor.exif_orientation, max_pixels=predictor.max_pixels
                )
                x = predictor.transform(image)
                shown = image.resize(panel_size(image), Image.Resampling.BILINEAR) if explain else None
            del image
        except MSRNError:
            batcher.withdraw()
            metrics.unreadable.inc()
            raise
        except BaseException:
            batcher.withdraw()
            raise
        probs, ids, maps = batcher.submit(x, explain).result()
        expl = None if ids is None or shown is None else predictor.explanation(shown, name, probs, ids, maps)
        g.images = 1
        metrics.images.inc()
        return answer(predictor, name, probs, expl)

    @app.post("/api/predict")
    def predict() -> Any:
        if not admission.enter():
            return refuse("busy", f"the server is busy ({queue} requests in progress); retry in {RETRY_AFTER_S} s")
        try:
            upload = request.files.get("image")
            if upload is None:
                return jsonify(error="no image in the request (send it as the multipart field 'image')"), 400
            explain = explain_k > 0 and request.values.get("explain", "").strip().lower() in TRUE
            return jsonify(tag(upload, Path(upload.filename or "upload").name, explain))
        except MSRNError as e:
            return jsonify(error=str(e)), 400
        finally:
            admission.leave()

    @app.errorhandler(413)
    def too_large(_e: Exception) -> Any:
        return jsonify(error=f"the upload is larger than {max_upload_mb:g} MB"), 413

    @app.errorhandler(500)
    def failed(e: Exception) -> Any:
        cause = getattr(e, "original_exception", None) or e
        return jsonify(error=f"internal error: {type(cause).__name__}: {cause}".splitlines()[0]), 500

    # Flask's documented way to add WSGI middleware, which mypy reads as replacing a method
    app.wsgi_app = in_flight = InFlight(app.wsgi_app)  # type: ignore[method-assign]
    app.extensions["msrn_in_flight"] = in_flight
    return app
