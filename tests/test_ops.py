"""msrn.models._ops: the faster 1x1 convolution, 2x2 max-pool and linear give the plain modules' values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msrn.models import _ops as ops
from msrn.models._ops import conv1x1, linear, max_pool2x2


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


needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn) CPU backend"
)


def _count_onednn(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch of every call that reaches oneDNN's inner product."""
    calls: list[int] = []
    real = torch._C._nn.mkldnn_linear

    def spy(x, w, b):
        calls.append(x.shape[0])
        return real(x, w, b)

    monkeypatch.setattr(ops, "_onednn_linear", spy)
    return calls


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_the_layer_at_every_batch(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3000, 70, bias=bias)
    calls = _count_onednn(monkeypatch)
    for batch in (1, 2, 3, 4, 5, 9):
        x = torch.randn(batch, 3000)
        with torch.no_grad():
            got, want = linear(layer, x), layer(x)
        assert got.shape == (batch, 70) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert calls == [4, 5, 9]  # batches below ONEDNN_MIN_BATCH stay with MKL


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # mkldnn.flags() restores a TF32 setting and says so
@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # deprecated, but what the ONNX exporter still runs
def test_linear_keeps_the_layer_under_autograd_autocast_and_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = nn.Linear(64, 8)
    x = torch.randn(6, 64)
    calls = _count_onednn(monkeypatch)
    y = linear(layer, x)  # the weights need gradients
    y.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(layer, x).dtype == torch.bfloat16  # autocast still picks the dtype

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return linear(self.layer, t)

    with torch.no_grad():
        traced = torch.jit.trace(Head(), x, check_trace=False)
    assert "mkldnn" not in str(traced.graph)  # a traced or exported graph holds only portable ops
    assert calls == []
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        linear(layer, x)
    assert calls == []
    with torch.no_grad():
        linear(layer, x)
    assert calls == [6]


def test_linear_falls_back_to_the_public_layer_without_a_working_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """mkldnn_linear is private: checked_onednn_linear refuses it when absent, raising or wrong, and
    `linear` then gives nn.Linear's result through the public path."""

    def raising(x, w, b):
        raise RuntimeError("mkldnn_linear: unsupported")

    def wrong(x, w, b):
        return torch._C._nn.mkldnn_linear(x, w, b * 2)

    for broken in (None, raising, wrong):
        assert ops.checked_onednn_linear(broken) is None
    monkeypatch.setattr(ops, "_onednn_linear", None)
    monkeypatch.setattr(ops, "_ONEDNN_BUILT", False)
    layer = nn.Linear(300, 20)
    x = torch.randn(9, 300)
    with torch.no_grad():
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=0, atol=0)
    if torch.backends.mkldnn.is_available():
        assert ops.checked_onednn_linear(torch._C._nn.mkldnn_linear) is torch._C._nn.mkldnn_linear
