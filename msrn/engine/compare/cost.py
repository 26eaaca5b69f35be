"""What a head costs beside the bare backbone it reads: weights, FLOPs, training and inference time per image,
and how alike the vectors it learns per label end up.

Times are measured in one process, in interleaved rounds (the backbone, then every head, again), so each
ratio compares measurements taken under the same load; FLOPs are counted by torch's FlopCounterMode
(matrix products and convolutions, 2 per multiply-add) on one image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msrn.models import ResNet


class BareBackbone(nn.Module):
    """The backbone alone: the feature maps at every depth, no pooling and no head (the cost reference)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.backbone = ResNet(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([f.mean() for f in self.backbone.forward_features(x)]).sum()  # a scalar to train on


def head_parameters(model: nn.Module) -> int:
    """Weights outside the backbone: everything the head adds (MSRN's conv_buffer and ProjectM layers too)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))


def flops_per_image(model: nn.Module, image_size: int) -> int:
    """Forward FLOPs of one image in evaluation mode."""
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: nn.Module, batch: int, image_size: int, device: torch.device, train: bool) -> Callable[[], None]:
    """One training step (forward, loss, backward, SGD step) or one inference pass, on a fixed random batch."""
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if not train:
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(x)

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step() -> None:
        out = model(x)
        loss = out if out.ndim == 0 else F.multilabel_soft_margin_loss(out, torch.zeros_like(out))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _seconds(run: Callable[[], None], iters: int, device: torch.device) -> float:
    """The fastest of `iters` timed calls after a warm-up: on a shared machine the other jobs only ever add
    time, so the minimum is the steadiest estimate of the call's own cost."""
    run()  # warm-up: allocations, cuDNN's choice of kernels
    best = float("inf")
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def time_per_image(
    models: Mapping[str, nn.Module],
    image_size: int,
    batch: int,
    device: torch.device,
    rounds: int = 3,
    iters: int = 3,
) -> dict[str, dict[str, list[float]]]:
    """name -> {"train": [...], "infer": [...]}: seconds per image in each of `rounds` interleaved rounds
    (every model measured once per round, in turn, as the fastest of `iters` batches)."""
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "infer": []} for name in models}
    for model in models.values():
        model.to(device)
    for _ in range(rounds):
        for mode in ("train", "infer"):
            for name, model in models.items():
                run = _step(model, batch, image_size, device, train=mode == "train")
                times[name][mode].append(_seconds(run, iters, device) / batch)
    for model in models.values():
        model.to("cpu")
    return times


def relative_cost(times: dict[str, dict[str, list[float]]], name: str, reference: str) -> dict[str, dict]:
    """Per mode: `name`'s fastest time over the rounds as a multiple of `reference`'s (load only adds time),
    with the range of the ratios round by round, and its milliseconds per image."""
    out: dict[str, dict] = {}
    for mode in ("train", "infer"):
        ratios = [a / b for a, b in zip(times[name][mode], times[reference][mode], strict=True)]
        out[mode] = {
            "x_backbone": round(min(times[name][mode]) / min(times[reference][mode]), 3),
            "range": [round(min(ratios), 3), round(max(ratios), 3)],
            "ms_per_image": round(1000 * min(times[name][mode]), 3),
        }
    return out


@torch.no_grad()
def label_cosine(model: nn.Module) -> float | None:
    """Mean pairwise cosine similarity of the vectors a head learns per label (`label_representations()`,
    C x D); None for a head that exposes none. 1: every label has the same vector."""
    get = getattr(model, "label_representations", None)
    vectors = get() if callable(get) else None
    if vectors is None or vectors.shape[0] < 2:
        return None
    unit = F.normalize(vectors.detach().float(), dim=1)
    c = unit.shape[0]
    return float(((unit @ unit.T).sum() - c) / (c * (c - 1)))
