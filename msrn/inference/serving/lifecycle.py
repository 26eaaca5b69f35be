"""The process around `msrn serve`'s app: waitress on a socket bound here, SIGTERM draining (new requests
refused, those in progress answered, then exit) and the allocator settings that give freed memory back."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from PIL import Image

from msrn.errors import MSRNError

SPARE_THREADS = 4  # server threads beyond the queue, so that a request over the bound is refused at once
M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2
IMAGE_BLOCK = 64 << 20  # bytes per Pillow image block (its default: 16 MB)
GRACE_S = 25.0  # SIGTERM to exit at most; under Kubernetes' default 30 s before its SIGKILL
FLUSH_S = 0.5  # after the last admitted request is answered: time for the server to send the bytes


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
