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
import ipaddress
import logging
import os
import sys
from dataclasses import dataclass

from msrn.errors import MSRNError
from msrn.inference.args import decoding_options
from msrn.inference.predictor import load_from_args
from msrn.inference.serving.lifecycle import GRACE_S, GracefulStop, make_server, return_freed_memory
from msrn.inference.serving.routes import TOKEN_ENV, ServeLimits, access_log, create_app
from msrn.options import (
    CheckpointOptions,
    add_options,
    device_option,
    exact_option,
    exif_orientation_option,
    max_megapixels_option,
    option,
    threshold_option,
)


@dataclass(frozen=True, kw_only=True)
class ServeOptions(ServeLimits, CheckpointOptions):
    """Options of `msrn serve`: the server's limits (ServeLimits), the model and the network side."""

    port: int = option(8000, "port to listen on (default 8000; 0 picks a free one)", low=0, high=65535)
    host: str = option("127.0.0.1", "address to bind (default 127.0.0.1: this computer only)")
    threshold: float | None = threshold_option(
        "report labels with probability >= T (default: the checkpoint's thresholds, else 0.5)"
    )
    device: str = device_option("cpu")
    token: str | None = option(
        None,
        "require 'Authorization: Bearer TOKEN' on every route but / and /healthz (default: the environment "
        f"variable {TOKEN_ENV}, which `ps` does not show)",
    )
    insecure_no_token: bool = option(
        False, "allow a non-loopback --host without a token: anyone who reaches the port can use it"
    )
    grace: float = option(
        GRACE_S,
        f"on SIGTERM, answer the requests in progress for at most S seconds (default {GRACE_S:g})",
        low=0,
        metavar="S",
    )
    exact: bool = exact_option()
    exif_orientation: str | None = exif_orientation_option()
    max_megapixels: float = max_megapixels_option()

    def limits(self) -> ServeLimits:
        """The server's limits alone, for create_app."""
        return ServeLimits(**{name: getattr(self, name) for name in ServeLimits.__dataclass_fields__})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn serve`."""
    add_options(parser, ServeOptions)


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this computer only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def serve_token(args: ServeOptions) -> str | None:
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


def main(args: argparse.Namespace | ServeOptions) -> int:
    """Run `msrn serve` until interrupted (Ctrl+C) or drained (SIGTERM)."""
    args = ServeOptions.from_args(args)
    token = serve_token(args)
    return_freed_memory()  # the command owns its process
    predictor = load_from_args(
        args, threshold=args.threshold, device=args.device, fast=not args.exact, **decoding_options(args)
    )
    app = create_app(predictor, args.limits(), token=token)
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
