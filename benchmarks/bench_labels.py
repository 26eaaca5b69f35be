"""Time and peak memory per image against the number of labels C, for both MSRN heads and the bare backbone.

Sweep (default): msrn_tiny (small backbone, D = 64) at 128 px, batch 4, C = 20, 80, 300, 1000, 5000, K = C/20
groups; rows `mlp`, `elementwise` and `backbone` (baseline_tiny: the same backbone with pooling and a linear
layer). Each configuration runs in its own process (one thread) so that its peak resident memory is its own:
inference (eval forward) and training step (forward, backward, SGD step) time per image, the median of
--repeats after one warm-up, and the peak resident memory during the steps above the memory held before
them, per image. The mlp row stops where its fc1 passes MLP_SWEEP_LIMIT weights (it needs fp32 weights,
gradient and momentum: 1.2 GB x 3 at 5,000 labels on msrn_tiny).

--target: the issue's check on ResNet-101 at 448 px: the classifier weights of elementwise at 1,000 labels
against mlp's at 80 (counted, built on the meta device), and one run of the training-step time of both at
the same batch (--target-batch), as a ratio.

    python benchmarks/bench_labels.py                    # the sweep, a markdown table
    python benchmarks/bench_labels.py --target           # ResNet-101 448 px check (minutes on a CPU)
    python benchmarks/bench_labels.py --metrics          # evaluation and label report at 5,000 labels
    python benchmarks/bench_labels.py --export           # ONNX export at 5,000 labels

--metrics times, at 5,000 labels: the co-occurrence graph of a 20,000-image training split (6 labels per
image), multilabel_metrics and per-label thresholds on 5,000 x 5,000 scores, and the label report with its
drawings (ngram vectors), against METRICS_BOUND_S each.

--export times `export_onnx` (trace, onnx check, onnxruntime parity run) of the 5,000-label element-wise
model of tests/test_many_labels.py (msrn_tiny, semantic_dim 16, 16 groups, 64 px, one thread), and counts
the graph's nodes and the file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from msrn.models import create_model
from msrn.models._registry import head_class

SIZES = (20, 80, 300, 1000, 5000)
METRICS_BOUND_S = 60.0  # seconds each step of --metrics may take at 5,000 labels on one CPU core
MLP_SWEEP_LIMIT = 100_000_000  # fc1 weights above which the mlp row is not run in the sweep


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(row: str, c: int, model_name: str, image_size: int, batch: int, repeats: int) -> dict:
    """One configuration in this process: times per image and peak memory per image."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if row == "backbone":
        model = create_model(model_name.replace("msrn_", "baseline_"), num_classes=c)
    else:
        model = create_model(model_name, num_classes=c, head=row, num_groups=max(1, c // 20))
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("backbone.", "conv_buffer")))
    x = torch.randn(batch, 3, image_size, image_size)
    y = (torch.rand(batch, c) < 0.05).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        if hasattr(model, "semantics"):  # MSRN: the semantics once, for the logits and the group loss
            sem = model.semantics()
            logits, gloss = model(x, semantics=sem), sem.group_loss
        else:
            logits, gloss = model(x), 0.0
        loss = torch.nn.functional.multilabel_soft_margin_loss(logits, y) + gloss
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad():
            model(x)

    before = rss_mb()
    times = {}
    for name, fn, mode in (("train", train_step, True), ("infer", infer, False)):
        model.train(mode)
        fn()  # warm-up (and the momentum buffers' first allocation)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs) / batch
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "row": row,
        "labels": c,
        "head_weights": head,
        "train_ms": 1e3 * times["train"],
        "infer_ms": 1e3 * times["infer"],
        "peak_mb_per_image": max(0.0, peak - before) / batch,
    }


def run_isolated(row: str, c: int, model: str, image_size: int, batch: int, repeats: int) -> dict:
    """measure() in a fresh process, so its peak memory is its own."""
    code = (
        f"import json, sys; sys.path.insert(0, 'benchmarks'); from bench_labels import measure; "
        f"print(json.dumps(measure({row!r}, {c}, {model!r}, {image_size}, {batch}, {repeats})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def classifier_weights(head: str, c: int, groups: int, width: int, hidden: int) -> int:
    """Weights of the classifier alone (fc1 + fc2, or W + B), counted on the meta device."""
    with torch.device("meta"):
        return sum(
            p.numel()
            for p in head_class(head)(
                num_classes=c, rows=c + groups, width=width, hidden=hidden, groups=True
            ).parameters()
        )


def sweep(args: argparse.Namespace) -> list[dict]:
    rows = []
    for c in args.sizes:
        for row in ("backbone", "mlp", "elementwise"):
            if row == "mlp" and (c + max(1, c // 20)) * 3 * 64 * 256 > MLP_SWEEP_LIMIT:
                continue
            result = run_isolated(row, c, "msrn_tiny", args.image_size, args.batch, args.repeats)
            rows.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], base: dict[str, float]) -> str:
    lines = [
        "| labels | row | weights outside the backbone | train ms/image | infer ms/image | "
        "train x (backbone, 20) | peak MiB/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['labels']} | {r['row']} | {r['head_weights'] / 1e6:.2f}M | {r['train_ms']:.1f} | "
            f"{r['infer_ms']:.1f} | {r['train_ms'] / base['train_ms']:.2f} | {r['peak_mb_per_image']:.1f} |"
        )
    return "\n".join(lines)


def target(args: argparse.Namespace) -> None:
    d, hidden = 512, 2048
    mlp80 = classifier_weights("mlp", 80, 4, 3 * d, hidden)  # COCO: K = int(0.05 x 80) = 4
    ew1000 = classifier_weights("elementwise", 1000, 50, 3 * d, hidden)
    print(
        f"classifier weights, ResNet-101: mlp at 80 labels {mlp80 / 1e6:.1f}M, elementwise at 1,000 labels "
        f"{ew1000 / 1e6:.2f}M, ratio {ew1000 / mlp80:.4f}"
    )
    mlp = run_isolated("mlp", 80, "msrn_resnet101", 448, args.target_batch, 1)
    ew = run_isolated("elementwise", 1000, "msrn_resnet101", 448, args.target_batch, 1)
    print(json.dumps({"mlp_80": mlp, "elementwise_1000": ew}))
    print(
        f"training step per image at batch {args.target_batch}, 448 px: mlp 80 labels {mlp['train_ms'] / 1e3:.2f} s, "
        f"elementwise 1,000 labels {ew['train_ms'] / 1e3:.2f} s, ratio {ew['train_ms'] / mlp['train_ms']:.2f}"
    )


def metrics_at_scale(c: int = 5000, images: int = 5000, train_images: int = 20_000) -> dict[str, float]:
    """Seconds of each evaluation-side step at c labels (see the module docstring)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from msrn.data.base import MultiLabelData
    from msrn.labels.graph import adjacency, count_cooccurrence
    from msrn.labels.labelset import build_label_set
    from msrn.labels.report import write_report
    from msrn.metrics import multilabel_metrics, per_label_thresholds

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    family = rng.integers(0, c // 10, size=(train_images, 1)) * 10 + rng.integers(0, 10, size=(train_images, 6))
    train = np.zeros((train_images, c), dtype=np.int8)
    np.put_along_axis(train, family, 1, axis=1)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    adjacency(count_cooccurrence(train))
    out["graph from 20,000 training images"] = time.perf_counter() - t0
    targets = train[:images]
    scores = np.where(targets == 1, rng.random(targets.shape) * 0.6 + 0.4, rng.random(targets.shape) * 0.7)
    t0 = time.perf_counter()
    multilabel_metrics(scores.astype(np.float32), targets)
    out["multilabel_metrics, 5,000 images"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_label_thresholds(scores, targets)
    out["per-label thresholds, 5,000 images"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        labels = [f"tag{i:04d}" for i in range(c)]
        data = MultiLabelData(
            "csv", "train", Path(tmp), [Path(tmp) / f"{i}.png" for i in range(train_images)], labels, train
        )
        t0 = time.perf_counter()
        ls = build_label_set(data, "ngram")
        out["label set (ngram vectors, graph)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_report(ls, tmp)
        out["label report and drawings"] = time.perf_counter() - t0
    return out


def export_at_scale(c: int = 5000) -> dict:
    """Seconds, graph nodes and MiB of the ONNX export of a c-label element-wise msrn_tiny at 64 px."""
    import tempfile

    import onnx  # optional: the `export` extra

    from msrn.inference.export import export_onnx

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(
        "msrn_tiny",
        num_classes=c,
        head="elementwise",
        num_groups=16,
        word_vectors=None,
        label_dims=(16, 16),
        semantic_dim=16,
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/big.onnx"
        t0 = time.perf_counter()
        diff = export_onnx(model, path, image_size=64)
        seconds = time.perf_counter() - t0
        nodes = len(onnx.load(path).graph.node)
        mib = os.path.getsize(path) / 2**20
    return {"labels": c, "seconds": seconds, "nodes": nodes, "MiB": mib, "max diff": diff}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target", action="store_true", help="the ResNet-101 448 px check instead of the sweep")
    p.add_argument("--target-batch", type=int, default=2)
    p.add_argument("--metrics", action="store_true", help="time evaluation and the label report at 5,000 labels")
    p.add_argument("--export", action="store_true", help="time the ONNX export at 5,000 labels")
    args = p.parse_args(argv)
    if args.export:
        print(json.dumps(export_at_scale()))
        return 0
    if args.metrics:
        times = metrics_at_scale()
        print("| step at 5,000 labels | seconds |\n|---|---|")
        for name, seconds in times.items():
            print(f"| {name} | {seconds:.1f} |")
        slow = [name for name, seconds in times.items() if seconds > METRICS_BOUND_S]
        print(f"bound {METRICS_BOUND_S:.0f} s each: " + (f"exceeded by {', '.join(slow)}" if slow else "all within"))
        return 1 if slow else 0
    if args.target:
        target(args)
        return 0
    rows = sweep(args)
    base = next(r for r in rows if r["row"] == "backbone")
    print(table(rows, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
