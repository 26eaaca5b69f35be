"""Admission and batching of `msrn serve`: at most `queue` requests in progress (one more is refused at once),
a pixel budget that bounds the memory of the uploads being decoded, and one thread that runs the requests
arriving together as one batch."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import IO

import torch
from PIL import Image

from msrn.errors import MSRNError
from msrn.inference.predictor import Predictor


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
