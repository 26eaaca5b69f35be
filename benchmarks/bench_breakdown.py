"""Where MSRN's inference time goes beyond its backbone: each stage of `MSRN.forward` timed alone.

Stages, in forward order (COCO configuration by default: 80 labels, 4 groups, 448x448, fp32):
  backbone     ResNet-101 forward_features (layer2, layer3, layer4 outputs)
  conv_buffer  conv_buffer1 on layer2 and conv_buffer2 on layer3, then the three 2x2 max-pools
               (MSRN.pooled_maps)
  project      the three 1x1 convolutions to D (MSRN.project, the reference's ProjectM)
  semantics    fc_label, the label GAT and the group pooling (weights only, no image)
  attention    the label-guided attention at the three depths
  classifier   tanh, fc1 (264M weights for COCO), LeakyReLU, fc2
Each stage runs on the previous stage's saved output; rounds interleave the stages, and the table
gives the best and the median of each with its share of the backbone's best time. Three more rows
time conv_buffer, project and the classifier as the plain nn.Conv2d, nn.MaxPool2d and nn.Linear
modules (msrn.models._ops replaces their calls in inference), for comparison.

    python benchmarks/bench_breakdown.py --batch 4 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from msrn.models import create_model, use_fast_paths
from msrn.models._ops import conv1x1
from msrn.models.attention import label_attention


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet101")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(f"msrn_{args.arch}", num_classes=args.classes, num_groups=args.groups).eval()
    fast = use_fast_paths(copy.deepcopy(model))  # the same weights in the fast forms (inference, training)
    x = torch.randn(args.batch, 3, args.size, args.size)
    pool = torch.nn.MaxPool2d(2, 2)
    saved: dict[str, object] = {}

    def backbone() -> None:
        saved["c"] = model.backbone.forward_features(x)

    def conv_buffer() -> None:
        saved["m"] = fast.pooled_maps(saved["c"])

    def project() -> None:
        saved["f"] = [conv1x1(proj, m).flatten(2) for proj, m in zip(model.project, saved["m"])]

    def conv_buffer_modules() -> None:
        c2, c3, c4 = saved["c"]
        saved["mm"] = [pool(m) for m in (model.depth_conv[0](c2), model.depth_conv[1](c3), c4)]

    def project_modules() -> None:
        saved["fm"] = [proj(m).flatten(2) for proj, m in zip(model.project, saved["mm"])]

    def semantics() -> None:
        saved["s"] = model.semantics().rows()

    def attention() -> None:
        saved["a"] = torch.cat([label_attention(f, saved["s"]) for f in saved["f"]], -1)

    def classifier() -> None:
        fast.head(saved["a"])

    def classifier_modules() -> None:
        model.head(saved["a"])

    stages = [
        backbone,
        conv_buffer,
        project,
        semantics,
        attention,
        classifier,
        conv_buffer_modules,
        project_modules,
        classifier_modules,
    ]
    times: dict[str, list[float]] = {s.__name__: [] for s in stages}
    with torch.inference_mode():
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for stage in stages:
                t0 = time.perf_counter()
                stage()
                if rnd:
                    times[stage.__name__].append(time.perf_counter() - t0)
    base = min(times["backbone"])
    print(
        f"# msrn_{args.arch}, {args.classes} labels, {args.groups} groups, {args.size}x{args.size}, "
        f"batch {args.batch}, threads {args.threads}, {args.rounds} rounds, torch {torch.__version__}"
    )
    print("| stage | best s | median s | x backbone (best) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {min(ts) / base:.3f} |")
    extra = sum(min(ts) for name, ts in times.items() if name != "backbone" and not name.endswith("_modules"))
    print(f"| all but the backbone | {extra:.3f} | | {extra / base:.3f} |")


if __name__ == "__main__":
    main()
