"""optimize_for_inference keeps the logits (within 1e-4 relative) and is eval-only."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from model_helpers import randomise_batchnorms
from torch import nn

from msrn.models import attention, create_model
from msrn.models._fuse import fold_batchnorms, optimize_for_inference, use_fast_paths
from msrn.models.resnet import ResNet


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("channels_last", [True, False])
def test_msrn_tiny_logits_match(channels_last: bool) -> None:
    torch.manual_seed(0)
    model = create_model("msrn_tiny", num_classes=6, num_groups=2)
    randomise_batchnorms(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        fast = optimize_for_inference(model, channels_last=channels_last)
        got = fast(x)
    assert got.shape == want.shape == (2, 6)
    assert _rel(got, want) < 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert fast.labels == model.labels


def test_small_resnet_features_match() -> None:
    torch.manual_seed(0)
    net = ResNet("resnet_tiny")
    randomise_batchnorms(net, seed=1)
    net.eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        want = net(x)
        got = optimize_for_inference(net)(x)
    assert _rel(got, want) < 1e-4


def test_fold_counts_every_conv_bn_pair() -> None:
    net = ResNet("resnet_tiny")  # stem + 4 blocks x 2 + 3 downsample branches
    assert fold_batchnorms(net) == 1 + 4 * 2 + 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_eval_only() -> None:
    fast = optimize_for_inference(create_model("msrn_tiny", num_classes=4, num_groups=1))
    assert not fast.training
    with pytest.raises(RuntimeError, match="eval-only"):
        fast.train()
    assert not any(p.requires_grad for p in fast.parameters())


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs C++")
def test_compiled_model_matches_eager_and_runs_the_attention_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model = create_model("msrn_tiny", num_classes=5, num_groups=1)
    randomise_batchnorms(model, seed=1)
    model.eval()
    traced = []  # one entry per attention call: was dynamo tracing it?
    real = attention._exp_tiles

    def spy(*args):
        traced.append(torch.compiler.is_compiling())
        return real(*args)

    monkeypatch.setattr(attention, "_exp_tiles", spy)
    for form in ("fused", "chunked"):  # inference's default on CPU, and the tiles
        monkeypatch.setattr(attention, "default_form", lambda f, s, form=form: form)
        fast = optimize_for_inference(model, compile=True)
        with torch.no_grad():
            for seed in range(2):
                x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
                assert _rel(fast(x), model(x)) < 1e-4
    assert traced and not any(traced), "torch.compile should leave the tiled attention to eager"


def test_fast_paths_switch_the_plain_modules_and_keep_the_numbers() -> None:
    """The model is written with nn.Conv2d, nn.MaxPool2d and nn.Linear; use_fast_paths switches those outside the
    backbone (1x1 convolutions, the pool, the head's linears) and leaves the weights, keys and gradients alone."""
    torch.manual_seed(0)
    plain = create_model("msrn_tiny", num_classes=4).train()
    kinds = {type(m) for name, m in plain.named_modules() if not name.startswith("backbone")}
    assert {nn.Conv2d, nn.MaxPool2d, nn.Linear} <= kinds
    fast = use_fast_paths(copy.deepcopy(plain))
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert [type(m).__name__ for m in (fast.depth_conv[0], fast.pool, fast.head.fc1)] == [
        "FastConv1x1",
        "FastMaxPool2x2",
        "FastLinear",
    ]
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d) or not isinstance(m, nn.Conv2d) for m in fast.backbone.modules())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, fast):
        model.zero_grad()
        model(x, attention="naive").sum().backward()
        grads.append(model.head.fc1.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
