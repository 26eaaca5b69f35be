"""Serving under load: `msrn serve` in its own process, driven from this one over loopback.

Starts `python -m msrn serve` on 127.0.0.1 with a small random model saved as a checkpoint
(msrn_resnet18, 80 labels, 224 px: no training, the weights do not matter for speed), then:

1. throughput: photo-like JPEGs of three sizes sent by 1, 4 and 16 concurrent clients (each
   client sends its next request when it has the answer), reporting images per second, p50 and
   p95 latency, the mean batch the server ran and its peak RSS above its warm RSS; the same at
   16 clients against a second server that runs one image at a time (`--batch-size 1`), to show
   what micro-batching adds. The runs of both servers alternate for `--rounds` rounds, and each
   configuration keeps its best round (the least disturbed by other load on the machine);
2. hostile load: 16 concurrent 6000x4000 JPEGs, then a mix of 100-megapixel PNGs (refused from
   their header), 42-megapixel RGBA PNGs (decoded, one at a time within the pixel budget),
   6000x4000 JPEGs and garbage, all at once, then the 16 JPEGs again (memory must not creep):
   statuses and peak RSS above the warm RSS.

Every request is bounded (a count per run and a timeout); every answer's status is counted. The
machine may be shared, so compare the ratios within one run rather than absolute figures.

    python benchmarks/bench_serve.py                  # a few minutes on 2 cores
    python benchmarks/bench_serve.py --quick          # fewer requests
    python benchmarks/bench_serve.py --compare-with /tmp/old   # this checkout's server against another's

`--compare-with DIR` runs only a side-by-side: a batching server from this checkout and one from
DIR (e.g. `git worktree add /tmp/old <commit>`), warmed alike, driven in alternation (1 and 16
clients, 640x480 and 1600x1200), each keeping its best of `--rounds`, with the ratio per run.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msrn.models import create_model, model_state

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per request: an answer must come within this


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth colour fields, upscaled, plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    w, h = max(8, width // 8), max(8, height // 8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f, ph = rng.uniform(0.01, 0.2, (3, 2)), rng.uniform(0, 6.3, 3)
    base = np.stack([np.sin(xx * f[c, 0] + yy * f[c, 1] + ph[c]) for c in range(3)], -1) * 100 + 128
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-10, 11, arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes of an image."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def blocky_png(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A real PNG of width x height made of large flat blocks: decodes to its full size, compresses well."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (max(1, height // 100), max(1, width // 100), len(mode)), dtype=np.uint8)
    img = Image.fromarray(small, mode).resize((width, height), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def flat_png_header(width: int, height: int) -> bytes:
    """A valid RGB PNG of width x height zeros, compressed row by row (a 100-megapixel file of ~0.3 MB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (3 * width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    """A multipart/form-data body with the file as field `image`, and its Content-Type."""
    b = uuid.uuid4().hex
    head = (
        f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


class ServerProcess:
    """`python -m msrn serve` on a free loopback port, with its memory read from /proc."""

    def __init__(self, checkpoint: Path, *options: str, root: Path = REPO) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "msrn",
                "serve",
                "--checkpoint",
                str(checkpoint),
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                *options,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        line = self.proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            self.stop()
            raise SystemExit(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.port = int(found.group(1))
        self.warm = 0.0  # RSS after the warm-up, set by the caller
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained

    def _status(self, key: str) -> float:
        """A /proc/PID/status memory figure in GB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024**2
        return float("nan")

    def rss(self) -> float:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak(self) -> float:
        return self._status("VmHWM")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Sampler:
    """Samples the server's RSS every few milliseconds while a run lasts (the kernel's mark may lag)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server, self.top, self._stop = server, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.top = max(self.top, self.server.rss())

    def __enter__(self) -> Sampler:
        self.server.reset_peak()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.top = max(self.top, self.server.peak())


def health(port: int) -> dict:
    """GET /healthz."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def send(port: int, body: bytes, kind: str) -> tuple[int, float]:
    """One POST /api/predict: status and seconds to the full answer (status 0: no answer)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", "/api/predict", body, {"Content-Type": kind})
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def drive(server: ServerProcess, bodies: list[tuple[bytes, str]], concurrency: int, count: int) -> dict:
    """`count` requests cycling through `bodies` from `concurrency` clients; throughput, latency, memory
    (the peak over the server's RSS after its warm-up)."""
    lock, results, next_index = threading.Lock(), [], [0]
    before = health(server.port)

    def client() -> None:
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                return
            status, seconds = send(server.port, *bodies[i % len(bodies)])
            with lock:
                results.append((status, seconds))

    with Sampler(server) as sampler:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    after = health(server.port)
    batches = max(1, after["batches"] - before["batches"])
    ok = [s for status, s in results if status == 200]
    return {
        "images_per_s": len(ok) / wall,
        "p50": float(np.percentile(ok, 50)) if ok else float("nan"),
        "p95": float(np.percentile(ok, 95)) if ok else float("nan"),
        "statuses": Counter(s for s, _ in results),
        "answered": sum(status != 0 for status, _ in results),
        "sent": count,
        "peak_over_warm_gb": sampler.top - server.warm,
        "mean_batch": (after["images"] - before["images"]) / batches,
    }


def row(label: str, r: dict) -> str:
    """One markdown table row."""
    statuses = " ".join(f"{k}x{v}" for k, v in sorted(r["statuses"].items()))
    return (
        f"| {label} | {r['images_per_s']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['mean_batch']:.1f} | "
        f"{r['peak_over_warm_gb']:.2f} | {r['answered']}/{r['sent']} | {statuses} |"
    )


HEADER = (
    "| run | images/s | p50 s | p95 s | mean batch | peak RSS over warm, GB | answered | statuses |\n"
    "|---|---|---|---|---|---|---|---|"
)


def compare(ckpt: Path, other: Path, photos: dict, rounds: int, per_client: int) -> None:
    """This checkout's batching server against `other`'s, driven in alternation; the best round of each."""
    with ServerProcess(ckpt) as here, ServerProcess(ckpt, root=other) as there:
        for server in (here, there):
            drive(server, photos["640x480"], 2, 4)
            server.warm = server.rss()
        runs = [(name, c) for name in ("640x480", "1600x1200") for c in (1, 16)]
        best: dict = {}
        for _ in range(max(1, rounds)):
            for name, c in runs:
                for who, server in (("here", here), ("there", there)):
                    r = drive(server, photos[name], c, max(8, per_client * c) if c > 1 else 3 * per_client)
                    if (who, name, c) not in best or r["images_per_s"] > best[who, name, c]["images_per_s"]:
                        best[who, name, c] = r
    print(HEADER)
    for name, c in runs:
        print(row(f"{name}, {c} client(s), {REPO.name} (this checkout)", best["here", name, c]))
        print(row(f"{name}, {c} client(s), {other}", best["there", name, c]))
        ratio = best["here", name, c]["images_per_s"] / best["there", name, c]["images_per_s"]
        print(f"| {name}, {c} client(s): this checkout / {other.name} | {ratio:.2f}x | | | | | | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="msrn_resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--labels", type=int, default=80)
    p.add_argument("--quick", action="store_true", help="fewer requests per run")
    p.add_argument("--part", choices=("all", "throughput", "hostile"), default="all", help="which runs")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the throughput runs (best kept)")
    p.add_argument(
        "--compare-with",
        type=Path,
        metavar="DIR",
        help="only compare this checkout's server with the one in DIR (another checkout)",
    )
    args = p.parse_args()
    per_client = 2 if args.quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.manual_seed(0)
        model = create_model(args.model, labels=[f"label{i}" for i in range(args.labels)]).eval()
        torch.save(model_state(model, args.image_size), ckpt)
        del model
        sizes = {"640x480": (640, 480), "1600x1200": (1600, 1200), "4000x3000": (4000, 3000)}
        photos = {
            name: [multipart(jpeg(photo(w, h, s)), f"{name}-{s}.jpg") for s in range(4)]
            for name, (w, h) in sizes.items()
        }
        big = jpeg(photo(6000, 4000, 9), quality=95)
        huge_png, rgba_png = flat_png_header(10_000, 10_000), blocky_png(7000, 6000)
        print(
            f"bodies: 6000x4000 JPEG {len(big) / 1e6:.1f} MB, 100 MP PNG {len(huge_png) / 1e6:.2f} MB, "
            f"42 MP RGBA PNG {len(rgba_png) / 1e6:.2f} MB"
        )
        print(f"{args.model}, {args.labels} labels, {args.image_size} px; torch threads {torch.get_num_threads()}")
        if args.compare_with is not None:
            compare(ckpt, args.compare_with.resolve(), photos, args.rounds, per_client)
            return
        lines = []
        with ServerProcess(ckpt) as server, ServerProcess(ckpt, "--batch-size", "1") as single:
            for warming in (server, single):
                drive(warming, photos["640x480"], 2, 4)
                warming.warm = warming.rss()
            lines.append(f"warm server RSS: {server.warm:.2f} GB")
            for name, bodies in photos.items() if args.part != "hostile" else ():
                large = name == "4000x3000"  # decoding-bound: one round of the batching server
                runs = [(server, c, f"{name}, {c} client(s), batching") for c in (1, 4, 16)]
                runs += [] if large else [(single, 16, f"{name}, 16 clients, --batch-size 1")]
                best: dict[str, dict] = {}
                for _ in range(1 if large else max(1, args.rounds)):
                    for target, c, label in runs:
                        r = drive(target, bodies, c, max(8, per_client * c) if c > 1 else 3 * per_client)
                        if label not in best or r["images_per_s"] > best[label]["images_per_s"]:
                            best[label] = r
                lines += [row(label, best[label]) for _, _, label in runs]
                rate = {label: r["images_per_s"] for label, r in best.items()}
                lines.append(
                    f"| {name}: 16 clients / 1 client, batching | "
                    f"{rate[runs[2][2]] / rate[runs[0][2]]:.2f}x | | | | | | |"
                )
                if not large:
                    lines.append(
                        f"| {name}: 16 clients, batching / one image at a time | "
                        f"{rate[runs[2][2]] / rate[runs[3][2]]:.2f}x | | | | | | |"
                    )
            if args.part != "throughput":
                r = drive(server, [multipart(big, "phone.jpg")], 16, 16)
                lines.append(row("hostile: 16 x 6000x4000 JPEG at once", r))
                mix = (
                    [multipart(huge_png, "huge.png")] * 2
                    + [multipart(os.urandom(200_000), "garbage.jpg")] * 2
                    + [multipart(rgba_png, "rgba.png"), multipart(big, "phone.jpg")]
                )
                r = drive(server, mix, 16, 24)
                lines.append(row("hostile: 100 MP PNG, garbage, 42 MP RGBA PNG, 6000x4000 JPEG", r))
                r = drive(server, [multipart(big, "phone.jpg")], 16, 16)
                lines.append(row("hostile: 16 x 6000x4000 JPEG at once, again", r))
            lines.append(f"server RSS after: {server.rss():.2f} GB")
    print(HEADER)
    print("\n".join(line for line in lines if line.startswith("|")))
    print("\n".join(line for line in lines if not line.startswith("|")))


if __name__ == "__main__":
    main()
