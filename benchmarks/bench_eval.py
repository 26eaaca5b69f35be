"""Evaluation throughput: images per second through the whole pipeline (JPEG decode, PIL bilinear
resize, normalise, batch, model) against the data pipeline alone and the model alone.

Shows whether decoding and transforms keep up with the model, for DataLoader workers 0/1/2.
The pipeline is the project's: msrn.engine.evaluate.predict_logits over an ImageDataset with
TestTransform and build_loader, on a folder of generated JPEGs (COCO-like 640x480 by default).

    python benchmarks/bench_eval.py            # 24 images, msrn_resnet101, batch 4, 2 threads
    python benchmarks/bench_eval.py --quick
    python benchmarks/bench_eval.py --device cuda --amp bf16 --batch 16 --images 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msrn.data.base import ImageDataset, MultiLabelData
from msrn.data.loader import build_loader
from msrn.data.transforms import TestTransform
from msrn.engine.evaluate import autocast, predict_logits
from msrn.models import create_model


def make_jpegs(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Write `count` photo-like JPEGs (smooth colour fields plus noise, quality 90) and return their paths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        fx, fy, ph = rng.uniform(0.002, 0.03, 3), rng.uniform(0.002, 0.03, 3), rng.uniform(0, 6.3, 3)
        img = np.stack([np.sin(xx * fx[c] + yy * fy[c] + ph[c]) for c in range(3)], -1) * 100 + 128  # H x W x 3
        img += rng.normal(0, 12, img.shape)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def data_only(data: MultiLabelData, size: int, batch: int, workers: int) -> float:
    """Images per second of decode + transform + collate alone (second pass: workers already started)."""
    loader = build_loader(ImageDataset(data, TestTransform(size)), batch, shuffle=False, workers=workers, seed=0)
    for _ in loader:
        pass
    t0 = time.perf_counter()
    n = sum(images.shape[0] for images, _, _ in loader)
    return n / (time.perf_counter() - t0)


def model_only(model: torch.nn.Module, size: int, batch: int, steps: int, device: torch.device, amp: str) -> float:
    """Images per second of the model on a ready batch (after one warm-up call)."""
    x = torch.randn(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad(), autocast(device, amp):
        model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 images, workers 0 and 2")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", default="msrn_resnet101")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--optimized", action="store_true", help="use msrn.models.optimize_for_inference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=("none", "bf16"), help="bf16 autocast (explicit opt-in)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.workers = 8, [0, 2]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = create_model(args.model, num_classes=args.classes, num_groups=args.groups).to(device).eval()
    if args.optimized:
        from msrn.models import optimize_for_inference

        model = optimize_for_inference(model)
    print(
        f"# {args.model}{' (optimized)' if args.optimized else ''}, {args.images} JPEGs {args.width}x{args.height} "
        f"-> {args.size}, batch {args.batch}, device {args.device}, amp {args.amp}, threads {args.threads}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images, args.width, args.height)
        labels = [str(i) for i in range(args.classes)]
        data = MultiLabelData("bench", "test", Path(tmp), paths, labels, np.zeros((len(paths), args.classes)))
        steps = max(1, args.images // args.batch)
        alone = model_only(model, args.size, args.batch, steps, device, args.amp)
        print(f"model alone: {alone:.2f} img/s")
        print("| workers | data pipeline alone img/s | whole evaluation img/s | whole / model alone |")
        print("|---|---|---|---|")
        for w in args.workers:
            data_rate = data_only(data, args.size, args.batch, w)
            t0 = time.perf_counter()
            scores = predict_logits(model, data, args.size, args.batch, w, device, args.amp, desc="bench")
            whole = len(paths) / (time.perf_counter() - t0)
            assert scores.shape == (len(paths), args.classes)
            print(f"| {w} | {data_rate:.1f} | {whole:.2f} | {whole / alone:.2f} |", flush=True)


if __name__ == "__main__":
    main()
