"""msrn.models.ops: the faster 1x1 convolution and 2x2 max-pool give nn.Conv2d's and max_pool2d's values."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msrn.models.ops import conv1x1, max_pool2x2


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv1x1_equals_the_convolution(bias: bool, channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1, bias=bias)
    x = torch.randn(3, 24, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got, want = conv1x1(conv, x), conv(x)
    assert got.shape == (3, 40, 9, 7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_runs_the_modules_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = nn.Conv2d(8, 5, 1)
    x = torch.randn(2, 8, 6, 6)
    calls = []
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: calls.append("baddbmm"))
    monkeypatch.setattr(torch, "maximum", lambda *a, **k: calls.append("maximum"))
    y = conv1x1(conv, x)  # the weights need gradients: a graph is recorded
    assert torch.equal(y, conv(x)) and y.requires_grad
    assert torch.equal(max_pool2x2(y), F.max_pool2d(y, 2, 2))
    assert calls == []


def test_conv1x1_leaves_other_convolutions_to_the_module() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(conv1x1(conv, x), conv(x), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (3, 2), (56, 56)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool2x2_equals_max_pool2d_exactly(size: tuple[int, int], channels_last: bool) -> None:
    x = torch.randn(2, 3, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = max_pool2x2(x)
    assert torch.equal(got, F.max_pool2d(x, 2, 2))


def test_max_pool2x2_keeps_max_pool2d_gradient_on_ties() -> None:
    # every window holds a tie: max_pool2d sends the whole gradient to one element, maximum would split it
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    max_pool2x2(x).sum().backward()
    assert sorted(x.grad.flatten().tolist()) == [0.0] * 12 + [1.0] * 4
