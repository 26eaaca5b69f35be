"""Is the default tagging path exact? The folded model (the default of predict, serve and evaluate)
against the literal computation (`--exact`), both against the same network in float64.

The network is random, with its batch-norm statistics calibrated on the images as training
would set them, so activations have a trained network's size (random running statistics make a
ResNet-101's layer4 reach 1e7, where every float32 path is chaotic). Reports the largest
probability difference of each float32 path from float64, from each other, and between batch 1
and the same image inside a batch of B (what micro-batching changes), and the time of each path;
then the same for each of the default's two rewritings alone (batch norm folded, channels-last),
and how far the literal path moves with the thread count or the input's memory layout.

    python benchmarks/bench_fast_default.py                      # msrn_resnet101, 448 px, batch 4
    python benchmarks/bench_fast_default.py --model msrn_tiny --image-size 64
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from msrn.inference.predictor import Predictor
from msrn.models import create_model, optimize_for_inference


def calibrated_model(name: str, x: torch.Tensor, labels: int, seed: int) -> nn.Module:
    """A random model whose batch norms hold random affine parameters and the statistics of x."""
    torch.manual_seed(seed)
    model = create_model(name, labels=[f"label{i}" for i in range(labels)])
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def timed(
    probabilities: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, rounds: int
) -> tuple[np.ndarray, float]:
    """Probabilities and the best of `rounds` times (after one warm-up call)."""
    probs = probabilities(x)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        probabilities(x)
        best = min(best, time.perf_counter() - t0)
    return probs, best


def part_of_default(model: nn.Module, **options: bool) -> Callable[[torch.Tensor], np.ndarray]:
    """Probabilities from the model with one part of the default's rewriting (fold_bn or channels_last) off."""
    part = optimize_for_inference(model, **options)

    def probabilities(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(part(x)).numpy()

    return probabilities


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="msrn_resnet101")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--labels", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s, b = args.image_size, args.batch
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * b, 3, s, s), generator=gen, dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = ((images.float() / 255 - mean[:, None, None]) / std[:, None, None]).contiguous()
    model = calibrated_model(args.model, x[b:], args.labels, seed=0)
    x = x[:b]
    with torch.no_grad():
        reference = torch.sigmoid(copy.deepcopy(model).double()(x.double())).numpy()
    exact, fast = Predictor(model, s, fast=False), Predictor(model, s, fast=True)
    (pe, te) = timed(lambda v: exact.run(v)[0], x, args.rounds)
    (pf, tf) = timed(lambda v: fast.run(v)[0], x, args.rounds)
    pe1, pf1 = exact.run(x[:1])[0], fast.run(x[:1])[0]
    print(f"{args.model} at {s} px, batch {b}, {args.labels} labels, {args.threads} threads")
    print(
        f"  max |p - p_float64|: --exact {np.abs(pe - reference).max():.2e}, default {np.abs(pf - reference).max():.2e}"
    )
    print(f"  max |p_default - p_exact|: {np.abs(pf - pe).max():.2e}")
    print(
        f"  batch 1 against the same image in a batch of {b}: --exact {np.abs(pe1 - pe[:1]).max():.2e}, "
        f"default {np.abs(pf1 - pf[:1]).max():.2e}"
    )
    print(f"  time per batch: --exact {te:.2f} s, default {tf:.2f} s ({tf / te:.2f}x)")
    for title, options in (
        ("batch norm folded only", dict(channels_last=False)),
        ("channels-last only", dict(fold_bn=False)),
    ):
        pp, tp = timed(part_of_default(model, **options), x, args.rounds)
        print(
            f"  {title}: max |p - p_float64| {np.abs(pp - reference).max():.2e}, "
            f"max |p - p_exact| {np.abs(pp - pe).max():.2e}, time {tp / te:.2f}x --exact"
        )
    torch.set_num_threads(1)
    pe_one = exact.run(x)[0]
    torch.set_num_threads(args.threads)
    pe_cl = exact.run(x.contiguous(memory_format=torch.channels_last))[0]
    print(
        f"  --exact against itself: 1 thread vs {args.threads}: {np.abs(pe_one - pe).max():.2e}, "
        f"the same input stored channels-last: {np.abs(pe_cl - pe).max():.2e}"
    )


if __name__ == "__main__":
    main()
