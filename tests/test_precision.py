"""Precision on every device: fp32 against float64, and bf16/fp16 autocast training steps.

Each check runs on the CPU in the normal suite; its CUDA variant is marked `cuda` and skipped without
a GPU (`pytest -m cuda` runs those alone, as benchmarks/gpu_check.sh does).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from msrn.engine.evaluate import autocast
from msrn.engine.losses import soft_margin_loss as training_loss
from msrn.models import create_model, placeholder_vectors

CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
)
DEVICES = ["cpu", CUDA]
C = 6


def _model() -> nn.Module:
    """msrn_tiny with a label graph that has edges (random symmetric counts)."""
    rng = np.random.default_rng(0)
    nums = rng.integers(50, 200, C)
    p = rng.uniform(0, 0.8, (C, C))
    counts = np.floor(np.minimum.outer(nums, nums) * (p + p.T) / 2).astype(np.int64)
    np.fill_diagonal(counts, 0)
    torch.manual_seed(0)
    return create_model(
        "msrn_tiny", num_classes=C, num_groups=2, word_vectors=placeholder_vectors(C), cooccurrence=(counts, nums)
    )


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 64, 64, generator=g)
    targets = (torch.rand(n, C, generator=g) < 0.3).long()
    targets[:, 0] = -1  # a difficult entry per image: positive for the training loss
    return x, targets


@pytest.fixture
def no_tf32():
    """fp32 means fp32 on CUDA: TF32 matmuls and convolutions off for the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_forward_and_gradients_match_float64(device: str, no_tf32: None) -> None:
    model = _model()
    exact = copy.deepcopy(model).double()
    x, targets = _batch()
    results = []
    for net, dev, dtype in ((model.to(device), device, torch.float32), (exact, "cpu", torch.float64)):
        net.train()
        sem = net.semantics()
        logits = net(x.to(dev, dtype), semantics=sem)
        (training_loss(logits, targets.to(dev)) + sem.group_loss).backward()
        net.eval()
        with torch.no_grad():
            evaluated = net(x.to(dev, dtype))
        results.append((logits, evaluated, {n: p.grad for n, p in net.named_parameters()}))
    (train32, eval32, grads32), (train64, eval64, grads64) = results
    assert _rel(train32, train64) < 1e-4 and _rel(eval32, eval64) < 1e-4
    worst = max(_rel(grads32[n], grads64[n]) for n in grads64 if grads64[n].abs().max() > 0)
    assert worst < 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_training_steps_stay_finite_and_learn(device: str, amp: str) -> None:
    """The trainer's pieces (autocast, loss, GradScaler for fp16 on CUDA) on one fixed batch."""
    dev = torch.device(device)
    model = _model().to(dev)
    x, targets = _batch()
    x, targets = x.to(dev), targets.to(dev)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        with autocast(dev, amp):
            low = model(x)
    assert low.dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)  # autocast really ran
    assert torch.isfinite(low).all() and _rel(low.float(), reference) < (0.05 if amp == "bf16" else 0.01)
    model.train()
    opt = torch.optim.SGD(model.param_groups(0.1, 0.01), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16" and dev.type == "cuda")
    losses = []
    for _ in range(5):
        with autocast(dev, amp):
            sem = model.semantics()
            logits = model(x, semantics=sem)
            loss = training_loss(logits, targets) + sem.group_loss.float()
        assert torch.isfinite(logits).all() and torch.isfinite(loss)
        losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert losses[-1] < losses[0], losses
