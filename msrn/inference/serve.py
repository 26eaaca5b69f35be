"""`msrn serve`: a web page and a JSON API that tag uploaded images, on the waitress WSGI server.

Endpoints: `GET /` (the page, msrn/inference/static/index.html), `GET /api/info`, `GET /healthz` and
`POST /api/predict` (multipart field `image`; `explain=1` adds attention panels), which answers
with the image's record as `msrn predict` writes it, its best scores and, when asked, base64 PNG
attention panels for the top labels at each depth the model reads.

Load is bounded: at most `queue` requests are in progress; one more gets 503 with Retry-After at
once. An admitted upload is decoded within a pixel budget (so memory does not grow with the
number of clients; the header's pixel count is checked first), reduced at once to the model's
input tensor, and handed to one batching thread, which runs the requests that arrive together as
one batch: up to `batch_size`, waiting at most `batch_wait_ms` for requests still being decoded.
Bad uploads get a JSON `{"error"}` with status 400 (413 when too large). Binds 127.0.0.1 unless
told otherwise.

Facing a network (docs/predict.md, "Serving behind a load balancer"): with a token every route but
`/` and `/healthz` needs `Authorization: Bearer TOKEN`; `/metrics` is Prometheus text; every request
gets an id (X-Request-ID) and one JSON access-log line; SIGTERM drains: new requests get 503, the
admitted ones are answered, then the server exits 0 (at most `grace` seconds later).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ctypes.util
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from importlib import resources
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS, open_image
from msrn.inference.args import add_decoding_arguments, decoding_options
from msrn.inference.draw import panel_size, panels
from msrn.inference.explain import concentration, is_explainable
from msrn.inference.predictor import Predictor, load_from_args
from msrn.options import add_checkpoint_arguments, add_fast_argument, add_runtime_arguments, bounded
from msrn.plots import image_png

MAX_UPLOAD_MB = 20
SHOWN_SCORES = 10  # scores listed on the page, best first
QUEUE = 16  # requests in progress at once; more get 503
BATCH_SIZE = 8
BATCH_WAIT_MS = 5.0
RETRY_AFTER_S = 1
SPARE_THREADS = 4  # server threads beyond the queue, so that a request over the bound is refused at once
TRUE = ("1", "true", "yes", "on")
M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2
IMAGE_BLOCK = 64 << 20  # bytes per Pillow image block (its default: 16 MB)
TOKEN_ENV = "MSRN_SERVE_TOKEN"
OPEN_ROUTES = ("/", "/healthz")  # no token needed: the static page and the load balancer's probe
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's X-Request-ID is kept when it looks like this
GRACE_S = 25.0  # SIGTERM to exit at most; under Kubernetes' default 30 s before its SIGKILL
FLUSH_S = 0.5  # after the last admitted request is answered: time for the server to send the bytes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
access_log = logging.getLogger("msrn.serve.access")


def _b64_png(image: Image.Image) -> str:
    """A PIL image as a base64 PNG string for a data: URL."""
    return base64.b64encode(image_png(image)).decode("ascii")


class Admission:
    """At most `limit` requests in progress; one more is refused at once instead of waiting."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Take a place if one is free; False when all are taken."""
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        """Give the place back."""
        with self._lock:
            self.count -= 1


class PixelBudget:
    """Bounds the pixels being decoded at once, so decoding memory is bounded whatever clients send.

    An image larger than the whole budget waits until it can decode alone.
    """

    def __init__(self, total: int) -> None:
        self.total, self.used = max(1, int(total)), 0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget (at most all of it) for the duration of the block."""
        pixels = min(max(0, pixels), self.total)
        with self._cv:
            self._cv.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self._cv:
                self.used -= pixels
                self._cv.notify_all()


def declared_pixels(stream: IO[bytes]) -> int:
    """The pixel count a file's header declares (0 when it has none that Pillow reads); rewinds the stream."""
    try:
        with Image.open(stream) as img:
            return img.width * img.height
    except Exception:  # noqa: BLE001  (anything unreadable is reported by the real decode, with its reason)
        return 0
    finally:
        stream.seek(0)


class Batcher:
    """One thread runs the model on the requests that arrive together, as one batch.

    A request announces itself (`expect`) before it decodes and then `submit`s its input tensor (or
    `withdraw`s). A batch starts with the first waiting tensor and takes more up to batch_size,
    waiting at most max_wait seconds, and only while announced requests are still decoding.
    """

    def __init__(
        self,
        predictor: Predictor,
        batch_size: int,
        max_wait: float,
        explain_k: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.predictor, self.batch_size, self.max_wait = predictor, max(1, batch_size), max(0.0, max_wait)
        self.explain_k, self.on_batch = explain_k, on_batch
        self._cv = threading.Condition()
        self._waiting: list[tuple[torch.Tensor, bool, Future]] = []
        self._coming = 0
        self._closed = False
        self.batches = self.images = self.largest = 0
        self._thread = threading.Thread(target=self._loop, name="msrn-batcher", daemon=True)
        self._thread.start()

    def expect(self) -> None:
        """A request is decoding and will submit or withdraw."""
        with self._cv:
            self._coming += 1

    def withdraw(self) -> None:
        """An announced request will not submit (its upload was refused)."""
        with self._cv:
            self._coming -= 1
            self._cv.notify_all()

    def submit(self, x: torch.Tensor, explain: bool) -> Future:
        """Queue one transformed image (3 x S x S); the Future gives (probabilities, label ids, maps)."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise MSRNError("the server is shutting down")
            self._coming -= 1
            self._waiting.append((x, explain, future))
            self._cv.notify_all()
        return future

    def close(self) -> None:
        """Stop the thread once the waiting requests are answered."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(10)

    def _next_batch(self) -> list[tuple[torch.Tensor, bool, Future]]:
        """Wait for a first request, then for more while others decode (bounded by max_wait)."""
        with self._cv:
            self._cv.wait_for(lambda: self._waiting or self._closed)
            deadline = time.monotonic() + self.max_wait
            while len(self._waiting) < self.batch_size and self._coming > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size :]
            return batch

    def _loop(self) -> None:
        """Run batches until closed; a failure answers its own batch's requests, never the thread."""
        while True:
            batch = self._next_batch()
            if not batch:
                return
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            self.largest = max(self.largest, len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for explain in (False, True):
                part = [(x, f) for x, e, f in batch if e == explain]
                if not part:
                    continue
                try:
                    probs, ids, maps = self.predictor.run(
                        torch.stack([x for x, _ in part]), self.explain_k if explain else 0
                    )
                except Exception as e:  # noqa: BLE001  (the requests learn of it; the server goes on)
                    for _, f in part:
                        f.set_exception(e)
                    continue
                for r, (_, f) in enumerate(part):
                    f.set_result((probs[r], None if ids is None else ids[r], [m[r] for m in maps]))


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


class InFlight:
    """WSGI middleware counting requests from arrival until their response is closed (handed to the server)."""

    def __init__(self, app: Callable) -> None:
        from werkzeug.wsgi import ClosingIterator  # optional: Flask's own dependency, there whenever Flask is

        self.app, self.count, self._closing = app, 0, ClosingIterator
        self._cv = threading.Condition()

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        with self._cv:
            self.count += 1
        try:
            return self._closing(self.app(environ, start_response), self._done)
        except BaseException:
            self._done()
            raise

    def _done(self) -> None:
        with self._cv:
            self.count -= 1
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in progress; False if some still are after `timeout` seconds."""
        with self._cv:
            return self._cv.wait_for(lambda: self.count == 0, timeout)


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


def create_app(
    predictor: Predictor,
    explain_k: int = 3,
    max_upload_mb: float = MAX_UPLOAD_MB,
    queue: int = QUEUE,
    batch_size: int = BATCH_SIZE,
    batch_wait_ms: float = BATCH_WAIT_MS,
    token: str | None = None,
) -> Any:
    """The Flask application serving one predictor; its batching thread is `app.extensions["msrn"]`, its
    metrics `app.extensions["msrn_metrics"]`, its request counter `app.extensions["msrn_in_flight"]`, and
    setting `app.extensions["msrn_draining"]` makes it refuse new requests (503)."""
    try:
        from flask import Flask, g, jsonify, request  # optional: the `serve` extra
    except ImportError:
        raise MSRNError("msrn serve needs Flask: pip install 'msrn[serve]'") from None
    if queue < 1 or batch_size < 1 or batch_wait_ms < 0:
        raise MSRNError("--queue and --batch-size must be at least 1, --batch-wait-ms at least 0")
    if token is not None and not token.strip():
        raise MSRNError(f"the token is empty: give --token (or {TOKEN_ENV}) a secret, or leave it out")
    explain_k = explain_k if is_explainable(predictor.model) else 0
    page = resources.files("msrn.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    app = Flask("msrn.inference.serve")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.config["MSRN_QUEUE"] = queue
    admission = Admission(queue)
    metrics = Metrics(lambda: admission.count, batch_size)
    batcher = Batcher(predictor, batch_size, batch_wait_ms / 1000, explain_k, on_batch=metrics.batches.observe)
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


def _loop_caller(server: Any) -> Callable[[Callable[[], None]], None] | None:
    """waitress's way to run a function on its event loop's thread (its trigger), where this waitress has it.

    Not public API: without it, Server.shutdown closes the connections from the calling thread (the
    loop polls, so a closed socket is dropped there; see test_shutdown_without_waitress_trigger).
    """
    pull = getattr(getattr(server, "trigger", None), "pull_trigger", None)
    return pull if callable(pull) else None


def _stop_worker_threads(server: Any) -> None:
    """End waitress's request threads where this waitress exposes its dispatcher (not public API; without
    it they stay, idle daemon threads, until the process ends)."""
    shutdown = getattr(getattr(server, "task_dispatcher", None), "shutdown", None)
    if callable(shutdown):
        shutdown()


class Server:
    """The app on waitress, listening on a socket bound here (a taken port is one MSRNError line).

    Only waitress's public API: create_server (with a connection map of our own), run and close.
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        try:
            import waitress  # optional: the `serve` extra
        except ImportError:
            raise MSRNError("msrn serve needs waitress: pip install 'msrn[serve]'") from None
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family)
        except OSError as e:
            raise MSRNError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.port = sock.getsockname()[1]
        self.app = app
        self.connections: dict = {}  # waitress's socket map: the listener, its wake-up pipe, every connection
        max_body = app.config["MAX_CONTENT_LENGTH"]
        self._server = waitress.create_server(
            app,
            map=self.connections,
            sockets=[sock],
            ident="msrn",
            threads=app.config["MSRN_QUEUE"] + SPARE_THREADS,
            max_request_body_size=2 * max_body + (1 << 20),  # beyond Flask's JSON 413: waitress's own
            asyncore_use_poll=True,  # poll() drops a socket closed by another thread; select() would fail on it
        )

    def serve_forever(self) -> None:
        """Answer requests until `shutdown`, Ctrl+C or (inside GracefulStop) a drained SIGTERM."""
        try:
            self._server.run()
        finally:
            _stop_worker_threads(self._server)

    def shutdown(self) -> None:
        """Close the listening socket and every connection; serve_forever then returns."""

        def close_all() -> None:
            for channel in list(self.connections.values()):
                channel.close()

        call = _loop_caller(self._server)
        if call is not None:
            call(close_all)
        else:
            close_all()

    def server_close(self) -> None:
        """Stop the batching thread."""
        self.app.extensions["msrn"].close()


class GracefulStop:
    """While active (a `with` block in the main thread around serve_forever), SIGTERM drains the server:
    new requests get 503 with Retry-After (and /healthz 503, so a load balancer moves on), every request
    already in progress is answered, then serve_forever returns, at most `grace` seconds (+ FLUSH_S) later.
    A second SIGTERM stops at once. `status` is then the exit status: 0 when everything was answered."""

    def __init__(self, app: Any, grace: float = GRACE_S) -> None:
        self.app, self.grace = app, grace
        self.status = 0
        self._draining, self._drained, self._closed = False, False, False
        self._lock = threading.Lock()  # the drain thread's wake-up never outlives the `with` block
        self._previous: Any = None

    def __enter__(self) -> GracefulStop:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        with self._lock:
            self._closed = True
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self._closed:  # a wake-up that was already on its way when serving ended
            return
        if self._drained:  # the drain thread's wake-up: the loop ends (waitress's run() takes SystemExit)
            raise SystemExit(self.status)
        if self._draining:
            print("msrn serve: second SIGTERM: stopping now", file=sys.stderr, flush=True)
            self.status = 143
            raise SystemExit(self.status)
        self._draining = True
        self.app.extensions["msrn_draining"].set()
        in_flight = self.app.extensions["msrn_in_flight"]
        print(
            f"msrn serve: SIGTERM: refusing new requests, answering {in_flight.count} in progress "
            f"(at most {self.grace:g} s)",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=self._drain, args=(in_flight,), name="msrn-drain", daemon=True).start()

    def _drain(self, in_flight: InFlight) -> None:
        answered = in_flight.wait_idle(self.grace)
        time.sleep(FLUSH_S)
        if not answered:
            print(
                f"msrn serve: {in_flight.count} request(s) still in progress after {self.grace:g} s; stopping",
                file=sys.stderr,
                flush=True,
            )
            self.status = 1
        with self._lock:
            if self._closed:  # serving already ended (a second SIGTERM): nobody to wake
                return
            self._drained = True
            main = threading.main_thread().ident
            assert main is not None  # the main thread is running: this server was started from it
            signal.pthread_kill(main, signal.SIGTERM)  # wakes the loop's poll at once


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A waitress server for the app; port 0 picks a free one (see `.port`)."""
    return Server(app, host, port)


def return_freed_memory() -> None:
    """Make memory freed after a request go back to the system or to the next request.

    Two allocator habits kept what decoding freed: glibc gives threads that allocate at the same
    time heaps of their own (up to 8 per core) and keeps memory freed in each, and once a block
    under its mapping bound (32 MB) has been freed it carves later ones from those heaps instead of
    mapping them. Pillow's image blocks are set above that bound (IMAGE_BLOCK), so they are always
    mapped and unmapped, and glibc to two heaps shared by all threads, which reuse what is freed;
    torch's allocations are left as they are. The memory this saves is measured in BENCHMARKS.md
    ("Serving"). glibc only for the heaps; call it before threads start.
    """
    Image.core.set_block_size(IMAGE_BLOCK)
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        if name:
            ctypes.CDLL(name).mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn serve`."""
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--port", type=bounded(int, 0, 65535), default=8000, help="port to listen on (default 8000; 0 picks a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="report labels with probability >= T (default: the checkpoint's thresholds, else 0.5)",
    )
    parser.add_argument(
        "--explain-labels",
        type=bounded(int, low=0),
        default=3,
        metavar="N",
        help="attention panels for the N best labels, when a request asks (default 3)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=bounded(float, low=0, bounds="(]"),
        default=MAX_UPLOAD_MB,
        help="largest accepted upload",
    )
    parser.add_argument(
        "--queue",
        type=bounded(int, low=1),
        default=QUEUE,
        metavar="N",
        help=f"requests in progress at once; more get 503 with Retry-After (default {QUEUE})",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=bounded(float, low=0),
        default=BATCH_WAIT_MS,
        metavar="MS",
        help=f"longest wait for more requests to fill a batch (default {BATCH_WAIT_MS:g})",
    )
    add_runtime_arguments(parser, batch_size=BATCH_SIZE, device="cpu")  # requests batched into one forward pass
    parser.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on every route but / and /healthz "
        f"(default: the environment variable {TOKEN_ENV}, which `ps` does not show)",
    )
    parser.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="allow a non-loopback --host without a token: anyone who reaches the port can use it",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE_S,
        metavar="S",
        help=f"on SIGTERM, answer the requests in progress for at most S seconds (default {GRACE_S:g})",
    )
    add_fast_argument(parser)
    add_decoding_arguments(parser)


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this computer only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def serve_token(args: argparse.Namespace) -> str | None:
    """--token, else $MSRN_SERVE_TOKEN; refuses a non-loopback --host without one unless --insecure-no-token."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        if not args.insecure_no_token:
            raise MSRNError(
                f"--host {args.host} lets other computers in, and there is no token: set {TOKEN_ENV} "
                "(or --token), or pass --insecure-no-token to serve without authentication"
            )
        print(
            f"msrn serve: WARNING: --insecure-no-token: anyone who reaches {args.host}:{args.port} can use this server",
            file=sys.stderr,
        )
    return token


def main(args: argparse.Namespace) -> int:
    """Run `msrn serve` until interrupted (Ctrl+C) or drained (SIGTERM)."""
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise MSRNError("--threshold must lie in [0, 1]")
    if args.grace < 0:
        raise MSRNError(f"--grace {args.grace:g}: give the seconds to wait, 0 or more")
    token = serve_token(args)
    return_freed_memory()  # the command owns its process
    predictor = load_from_args(
        args, threshold=args.threshold, device=args.device, fast=not args.exact, **decoding_options(args)
    )
    app = create_app(
        predictor,
        args.explain_labels,
        args.max_upload_mb,
        args.queue,
        args.batch_size,
        args.batch_wait_ms,
        token=token,
    )
    server = make_server(app, args.host, args.port)
    if not access_log.handlers:  # one JSON line per request on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
    print(
        f"msrn serve: {args.checkpoint} on http://{args.host}:{server.port}/"
        f"{' (token required)' if token else ''} (Ctrl+C stops; SIGTERM drains)",
        file=sys.stderr,
        flush=True,
    )
    try:
        with GracefulStop(app, args.grace) as stop:
            server.serve_forever()
    finally:
        server.server_close()
    return stop.status
