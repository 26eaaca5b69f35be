"""Images per second of the training loader alone (JPEG decode, multi-scale crop, flip, resize to 448,
normalise, collate, pinned when CUDA is there) on N worker processes, on generated COCO-like JPEGs,
and what a COCO-sized epoch would take against a model's training rate.

An epoch takes as long as the slower of the two: the loader feeds at most its own rate.

    python benchmarks/bench_loader.py --images 256 --workers 0 2 4 8 --model-rate 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import make_jpegs  # noqa: E402  (a sibling script, not a package)

from msrn.data.base import ImageDataset, MultiLabelData  # noqa: E402
from msrn.data.loader import build_loader  # noqa: E402
from msrn.data.transforms import TrainTransform  # noqa: E402

COCO_TRAIN_IMAGES = 82081  # COCO 2014 train, the paper's training split


def loader_rate(data: MultiLabelData, size: int, batch: int, workers: int) -> float:
    """Images per second over the second of two passes (the first starts the persistent workers)."""
    loader = build_loader(ImageDataset(data, TrainTransform(size)), batch, shuffle=True, workers=workers, seed=0)
    for _ in loader:
        pass
    t0 = time.perf_counter()
    n = sum(images.shape[0] for images, _, _ in loader)
    return n / (time.perf_counter() - t0)


def measure(
    folder: Path, images: int, workers: list[int], size: int = 448, batch: int = 32, width: int = 640, height: int = 480
) -> dict[int, float]:
    """{workers: images/s} on `images` generated JPEGs of width x height written into folder."""
    paths = make_jpegs(folder, images, width, height)
    labels = [str(i) for i in range(80)]
    targets = (np.random.default_rng(0).random((len(paths), 80)) < 0.05).astype(np.int64)
    data = MultiLabelData("bench", "train", folder, paths, labels, targets)
    return {w: loader_rate(data, size, batch, w) for w in workers}


def epoch_estimate(loader_img_s: float, model_img_s: float, images: int = COCO_TRAIN_IMAGES) -> dict:
    """Seconds of a training epoch over `images` when the loader gives loader_img_s and the model takes
    model_img_s, and which one bounds it."""
    rate = min(loader_img_s, model_img_s)
    return {"images": images, "seconds": images / rate, "bound_by": "loader" if loader_img_s < model_img_s else "model"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--model-rate", type=float, help="the model's training images/s, for the epoch estimate")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rates = measure(Path(tmp), args.images, args.workers, args.size, args.batch)
    print(
        f"# {args.images} JPEGs 640x480 -> train transform at {args.size}, batch {args.batch}, "
        f"pin_memory {torch.cuda.is_available()}, torch {torch.__version__}"
    )
    print("| workers | loader alone img/s | COCO epoch (82,081 images) at the loader's rate |")
    print("|---|---|---|")
    for w, r in rates.items():
        print(f"| {w} | {r:.1f} | {COCO_TRAIN_IMAGES / r / 60:.1f} min |")
    if args.model_rate:
        best = max(rates.values())
        est = epoch_estimate(best, args.model_rate)
        print(
            f"model {args.model_rate:.1f} img/s, loader {best:.1f} img/s: an epoch takes "
            f"{est['seconds'] / 60:.1f} min, bound by the {est['bound_by']}"
        )


if __name__ == "__main__":
    main()
