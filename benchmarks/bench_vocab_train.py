"""Test mAP of MSRN trained at 1,000 and 5,000 labels with the csv preset's defaults, against the label-frequency
baseline, over seeds.

Data: the family generator (`msrn.data.synthetic.ensure_synthetic(num_labels=C)`: labels are 12 shapes in one
colour per family of 12, an image shows one or two families), 64 px. Model and recipe: the csv preset as
`msrn train --dataset csv --model msrn_tiny --head HEAD --image-size 64 --batch-size 16 --pretrained none
--workers 0` runs it (lr 0.1 head / 0.01 backbone, no clipping). The mlp head runs where its fc1 stays within
MLP_LIMIT weights (1,000 labels on msrn_tiny; 5,000 would need 0.3 billion).

The label-frequency baseline scores every test image with each label's training frequency: one score per label,
so each label's AP is the AP of a ranking with every image tied (scikit-learn's average_precision_score).

--reference-weight trains with the reference's fixed group-loss weight 1e-4 instead of the weight msrn gives the
label count (msrn.models.gat.group_loss_weight), to show what the fix changes; a run that stops on a non-finite
loss is reported as such.

    python benchmarks/bench_vocab_train.py                              # 1,000 and 5,000 labels, seeds 0 1 2
    python benchmarks/bench_vocab_train.py --labels 1000 --seeds 0 --reference-weight

--issue-csv FOLDER writes the data set of issue 32 instead (400 images at 64 px, 320 train and 80 test, 1,000
labels with 3 to 8 per image, every label in training; label k is a square of its own colour at its own place)
and prints the command that stopped on `non-finite loss (inf) at epoch 1, step 4` before the fix.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn.metrics import average_precision_score

import msrn.models.msrn as msrn_model
from msrn.data.csvfile import read_csv_dataset
from msrn.data.synthetic import ensure_synthetic
from msrn.engine.config import preset_config
from msrn.engine.train import train
from msrn.errors import MSRNError
from msrn.models.gat import GROUP_LOSS_WEIGHT

MLP_LIMIT = 100_000_000  # fc1 weights above which the mlp head is not run
IMAGE_SIZE = 64


def write_issue_csv(folder: Path, labels: int = 1000, images: int = 400, train_images: int = 320) -> Path:
    """The data set of issue 32 as FOLDER/data.csv: 3 to 8 labels per image, each training image also taking
    three labels of a shuffled cycle so every label occurs in training."""
    rng = np.random.default_rng(0)
    names = [f"tag{i:04d}" for i in range(labels)]
    colours = rng.integers(0, 256, size=(labels, 3))
    cycle = rng.permutation(labels)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = ["image,labels,split"]
    for i in range(images):
        present = set(rng.choice(labels, size=int(rng.integers(3, 9)), replace=False).tolist())
        if i < train_images:
            present |= {int(cycle[(3 * i + j) % labels]) for j in range(3)}
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(img)
        for k in present:
            x, y = (k % 32) * 2, (k // 32) * 2
            draw.rectangle((x, y, x + 8, y + 8), fill=tuple(int(v) for v in colours[k]))
        img.save(folder / "img" / f"{i}.png")
        split = "train" if i < train_images else "test"
        rows.append(f"img/{i}.png,{'|'.join(names[k] for k in sorted(present))},{split}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


def frequency_baseline_map(train_targets: np.ndarray, test_targets: np.ndarray) -> float:
    """mAP (in %) of scoring every test image with each label's training frequency, over labels with a test positive."""
    freq = (train_targets == 1).mean(axis=0)
    aps = [
        average_precision_score(test_targets[:, j] == 1, np.full(len(test_targets), freq[j]))
        for j in range(test_targets.shape[1])
        if (test_targets[:, j] == 1).any()
    ]
    return 100.0 * float(np.mean(aps))


def mlp_fits(labels: int, pool_ratio: float = 0.2, width: int = 3 * 64, hidden: int = 256) -> bool:
    """Whether msrn_tiny's mlp head (fc1: (C + K) x 3D inputs, 256 outputs) stays within MLP_LIMIT weights."""
    return (labels + int(pool_ratio * labels)) * width * hidden <= MLP_LIMIT


def run_one(data: Path, head: str, seed: int, epochs: int, out: Path) -> dict:
    """Train one model with the csv preset's defaults; its last-epoch training loss and test mAP, or the error."""
    cfg = preset_config(
        "csv",
        data=str(data),
        out=str(out),
        model="msrn_tiny",
        head=head,
        image_size=IMAGE_SIZE,
        batch_size=16,
        pretrained="none",
        workers=0,
        epochs=epochs,
        seed=seed,
    )
    t0 = time.perf_counter()
    try:
        train(cfg)
    except MSRNError as e:
        return {"error": str(e), "seconds": time.perf_counter() - t0}
    metrics = json.loads((out / "metrics.json").read_text())
    log = (out / "log.txt").read_text().splitlines()
    losses = [float(line.split("| loss ")[1].split()[0]) for line in log if "| loss " in line]
    return {"mAP": metrics["mAP"], "train_loss": losses, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--heads", nargs="+", default=["elementwise", "mlp"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--test-images", type=int, default=200)
    p.add_argument("--reference-weight", action="store_true", help="the reference's fixed group-loss weight 1e-4")
    p.add_argument("--root", type=Path, default=None, help="where the data sets are generated (default: a temp folder)")
    p.add_argument("--issue-csv", type=Path, default=None, metavar="FOLDER", help="write issue 32's data set and stop")
    args = p.parse_args(argv)
    if args.issue_csv:
        csv = write_issue_csv(args.issue_csv)
        base = frequency_baseline_map(read_csv_dataset(csv, "train").targets, read_csv_dataset(csv, "test").targets)
        print(f"{csv}: label-frequency baseline mAP {base:.2f}; the issue's command:")
        print(f"msrn train --dataset csv --data {csv} --model msrn_tiny --head elementwise --image-size 64 "
              "--batch-size 16 --pretrained none --workers 0 --epochs 1")  # fmt: skip
        return 0
    if args.reference_weight:  # every fresh model gets the reference's weight whatever its label count
        msrn_model.group_loss_weight = lambda num_classes, num_groups: GROUP_LOSS_WEIGHT  # type: ignore[assignment]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        for c in args.labels:
            for seed in args.seeds:  # seed: the data set's and the run's
                data = ensure_synthetic(
                    root / f"family{c}-seed{seed}", seed=seed, num_train=max(400, -(-c // 3) + 100),
                    num_test=args.test_images, image_size=IMAGE_SIZE, num_labels=c,
                )  # fmt: skip
                csv = data / "annotations.csv"
                base = frequency_baseline_map(
                    read_csv_dataset(csv, "train").targets, read_csv_dataset(csv, "test").targets
                )
                for head in args.heads:
                    if head == "mlp" and not mlp_fits(c):
                        continue
                    r = run_one(csv, head, seed, args.epochs, Path(tmp) / f"run-{c}-{seed}-{head}")
                    rows.append({"labels": c, "seed": seed, "head": head, "baseline_mAP": base, **r})
                    print(json.dumps(rows[-1]), flush=True)
    weight = "reference 1e-4" if args.reference_weight else "by label count"
    print("\n| labels | head | seed | group-loss weight | train loss per epoch | test mAP | frequency baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['labels']} | {r['head']} | {r['seed']} | {weight} | {r['error']} | - | {r['baseline_mAP']:.2f} |"
            )
        else:
            loss = ", ".join(f"{v:.3f}" for v in r["train_loss"])
            found = f"{r['mAP']:.2f} | {r['baseline_mAP']:.2f}"
            print(f"| {r['labels']} | {r['head']} | {r['seed']} | {weight} | {loss} | {found} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
