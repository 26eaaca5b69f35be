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
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ctypes.util
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS, open_image
from msrn.inference.args import add_decoding_arguments, decoding_options, load_from_args
from msrn.inference.draw import panel_size, panels
from msrn.inference.explain import concentration
from msrn.inference.predictor import Predictor
from msrn.models.msrn import MSRN
from msrn.options import add_checkpoint_arguments, add_fast_argument, add_runtime_arguments
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

    def __init__(self, predictor: Predictor, batch_size: int, max_wait: float, explain_k: int) -> None:
        self.predictor, self.batch_size, self.max_wait = predictor, max(1, batch_size), max(0.0, max_wait)
        self.explain_k = explain_k
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
            batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size:]
            return batch

    def _loop(self) -> None:
        """Run batches until closed; a failure answers its own batch's requests, never the thread."""
        while True:
            batch = self._next_batch()
            if not batch:
                return
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            self.largest = max(self.largest, len(batch))
            for explain in (False, True):
                part = [(x, f) for x, e, f in batch if e == explain]
                if not part:
                    continue
                try:
                    probs, ids, maps = self.predictor.run(torch.stack([x for x, _ in part]),
                                                          self.explain_k if explain else 0)
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
            {"label": explanation.labels[j], "score": round(explanation.scores[j], 6),
             "images": [_b64_png(p) for p in row],
             "peaks": [round(concentration(m[j]), 2) for m in explanation.maps]}
            for j, row in enumerate(panels(explanation))
        ]
    reported = {x["label"] for x in record["labels"]}
    out["scores"] = [
        {"label": predictor.labels[i], "score": round(float(probs[i]), 6),
         "threshold": round(float(predictor.thresholds[i]), 6), "reported": predictor.labels[i] in reported}
        for i in probs.argsort(kind="stable")[::-1][:SHOWN_SCORES]
    ]
    return out


def create_app(
    predictor: Predictor,
    explain_k: int = 3,
    max_upload_mb: float = MAX_UPLOAD_MB,
    queue: int = QUEUE,
    batch_size: int = BATCH_SIZE,
    batch_wait_ms: float = BATCH_WAIT_MS,
) -> Any:
    """The Flask application serving one predictor; its batching thread is `app.extensions["msrn"]`."""
    try:
        from flask import Flask, jsonify, request  # optional: the `serve` extra
    except ImportError:
        raise MSRNError("msrn serve needs Flask: pip install 'msrn[serve]'") from None
    if queue < 1 or batch_size < 1 or batch_wait_ms < 0:
        raise MSRNError("--queue and --batch-size must be at least 1, --batch-wait-ms at least 0")
    explain_k = explain_k if isinstance(predictor.model, MSRN) else 0
    page = resources.files("msrn.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    app = Flask("msrn.inference.serve")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.config["MSRN_QUEUE"] = queue
    batcher = Batcher(predictor, batch_size, batch_wait_ms / 1000, explain_k)
    app.extensions["msrn"] = batcher
    admission = Admission(queue)
    budget = PixelBudget(predictor.max_pixels or DEFAULT_MAX_PIXELS)

    @app.get("/")
    def index() -> Any:
        return page, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/api/info")
    def info() -> Any:
        return jsonify(labels=predictor.labels, image_size=predictor.image_size, explain=explain_k > 0,
                       max_upload_mb=max_upload_mb, max_megapixels=(predictor.max_pixels or 0) / 1e6,
                       batch_size=batch_size, queue=queue)

    @app.get("/healthz")
    def health() -> Any:
        return jsonify(status="ok", in_progress=admission.count, queue=queue, batches=batcher.batches,
                       images=batcher.images, largest_batch=batcher.largest)

    def tag(upload: Any, name: str, explain: bool) -> dict[str, Any]:
        """Decode within the pixel budget, keep only the input tensor (and a panel-sized copy), batch."""
        batcher.expect()
        try:
            with budget.reserve(declared_pixels(upload.stream)):
                image = open_image(upload.stream, name, exif_orientation=predictor.exif_orientation,
                                   max_pixels=predictor.max_pixels)
                x = predictor.transform(image)
                shown = image.resize(panel_size(image), Image.Resampling.BILINEAR) if explain else None
            del image
        except BaseException:
            batcher.withdraw()
            raise
        probs, ids, maps = batcher.submit(x, explain).result()
        expl = None if ids is None or shown is None else predictor.explanation(shown, name, probs, ids, maps)
        return answer(predictor, name, probs, expl)

    @app.post("/api/predict")
    def predict() -> Any:
        if not admission.enter():
            return (jsonify(error=f"the server is busy ({queue} requests in progress); retry in "
                                  f"{RETRY_AFTER_S} s"), 503, {"Retry-After": str(RETRY_AFTER_S)})
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

    return app


class Server:
    """The app on waitress, listening on a socket bound here (a taken port is one MSRNError line)."""

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
        max_body = app.config["MAX_CONTENT_LENGTH"]
        self._server = waitress.create_server(
            app, sockets=[sock], ident="msrn", threads=app.config["MSRN_QUEUE"] + SPARE_THREADS,
            max_request_body_size=2 * max_body + (1 << 20),  # beyond Flask's JSON 413: waitress's own
        )

    def serve_forever(self) -> None:
        """Answer requests until `shutdown` (or Ctrl+C)."""
        try:
            self._server.run()
        finally:
            self._server.task_dispatcher.shutdown()

    def shutdown(self) -> None:
        """Close the listening socket and every connection from the server's own thread; serving ends."""
        def close_all() -> None:
            for channel in list(self._server._map.values()):
                channel.close()

        self._server.trigger.pull_trigger(close_all)

    def server_close(self) -> None:
        """Stop the batching thread."""
        self.app.extensions["msrn"].close()


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
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this computer only)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="report labels with probability >= T (default: the checkpoint's thresholds, else 0.5)")
    parser.add_argument("--explain-labels", type=int, default=3, metavar="N",
                        help="attention panels for the N best labels, when a request asks (default 3)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest accepted upload")
    parser.add_argument("--queue", type=int, default=QUEUE, metavar="N",
                        help=f"requests in progress at once; more get 503 with Retry-After (default {QUEUE})")
    parser.add_argument("--batch-wait-ms", type=float, default=BATCH_WAIT_MS, metavar="MS",
                        help=f"longest wait for more requests to fill a batch (default {BATCH_WAIT_MS:g})")
    add_runtime_arguments(parser, batch_size=BATCH_SIZE, device="cpu")  # requests batched into one forward pass
    add_fast_argument(parser)
    add_decoding_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run `msrn serve` until interrupted."""
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise MSRNError("--threshold must lie in [0, 1]")
    return_freed_memory()  # the command owns its process
    predictor = load_from_args(args, threshold=args.threshold, device=args.device, fast=not args.exact,
                               **decoding_options(args))
    app = create_app(predictor, max(0, args.explain_labels), args.max_upload_mb, args.queue, args.batch_size,
                     args.batch_wait_ms)
    server = make_server(app, args.host, args.port)
    print(f"msrn serve: {args.checkpoint} on http://{args.host}:{server.port}/ (Ctrl+C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
