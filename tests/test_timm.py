"""timm backbones under the MSRN head (`--model msrn_timm --backbone NAME`).

timm needs torchvision, which does not import beside the torch this project pins, so these tests
run in a second environment (torch 2.14.1, torchvision 0.29.1, timm) and skip elsewhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from msrn.cli import main as cli
from msrn.errors import MSRNError
from msrn.models import create_model

LABELS = ["a", "b", "c", "d"]
SMALL = "convnext_atto"  # 3.7M weights: maps at strides 4, 8, 16, 32


def _timm_or_skip():
    try:
        import timm
    except Exception as e:  # ImportError, or torchvision failing beside this torch
        pytest.skip(
            f"timm is not importable here ({type(e).__name__}: {str(e)[:80]}); it needs torchvision, "
            "so run these in an environment with torch 2.14.1, torchvision 0.29.1 and timm"
        )
    return timm


@pytest.mark.parametrize("name", [SMALL, "efficientnet_b0", "resnet18"])
def test_head_reads_the_maps_at_strides_8_16_32(name: str) -> None:
    _timm_or_skip()
    torch.manual_seed(0)
    model = create_model("msrn_timm", labels=LABELS, backbone=name).eval()
    assert model.cfg.backbone == f"timm:{name}"
    x = torch.randn(2, 3, 96, 96)
    maps = model.backbone.forward_features(x)
    assert [m.shape[-1] for m in maps] == [12, 6, 3] and tuple(m.shape[1] for m in maps) == model.backbone.channels
    with torch.no_grad():
        assert model(x).shape == (2, len(LABELS))


def test_channels_last_maps_are_turned_to_channels_first() -> None:
    _timm_or_skip()
    torch.manual_seed(0)
    model = create_model("msrn_timm", labels=LABELS, backbone="swin_tiny_patch4_window7_224").eval()  # its size: 224
    assert model.backbone.channels_last
    maps = model.backbone.forward_features(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(192, 28, 28), (384, 14, 14), (768, 7, 7)]


def test_checkpoint_round_trip_and_timm_weight_file(tmp_path: Path) -> None:
    timm = _timm_or_skip()
    from msrn.models import load_checkpoint, model_state
    from msrn.models.timm_backbone import load_timm_pretrained

    torch.manual_seed(0)
    model = create_model("msrn_timm", labels=LABELS, backbone=SMALL).eval()
    torch.save(model_state(model, 96), tmp_path / "m.pt")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(tmp_path / "m.pt").model(x), model(x))
    # a timm weight file (the whole classifier, as timm's hub serves it) loads through timm's own mechanism
    torch.manual_seed(1)
    torch.save(timm.create_model(SMALL).state_dict(), tmp_path / "imagenet.pth")
    load_timm_pretrained(model.backbone, tmp_path / "imagenet.pth")
    body, weights = model.backbone.body.state_dict(), torch.load(tmp_path / "imagenet.pth")
    assert len(body) < len(weights)  # the features lack the classifier head
    for got, want in zip(body.values(), weights.values()):  # both in module order, the head last
        assert torch.equal(got, want)


def test_models_without_the_three_strides_are_refused() -> None:
    _timm_or_skip()
    with pytest.raises(MSRNError, match="strides 8, 16 and 32"):
        create_model("msrn_timm", labels=LABELS, backbone="vit_tiny_patch16_224")
    with pytest.raises(MSRNError, match="--backbone NAME"):
        create_model("msrn_timm", labels=LABELS)


def test_train_command_with_a_timm_backbone(tmp_path: Path) -> None:
    _timm_or_skip()
    from data_helpers import make_csv
    from test_engine import train_args

    from msrn.checkpoint import read_checkpoint

    out = tmp_path / "run"
    args = train_args(make_csv(tmp_path / "data", n_train=16, n_test=8), out, "--epochs", "1")
    args[args.index("msrn_tiny")] = "msrn_timm"
    assert cli([*args, "--backbone", SMALL]) == 0
    ckpt = read_checkpoint(out / "best.pt")
    assert ckpt["model"]["config"]["backbone"] == f"timm:{SMALL}" and ckpt["config"]["backbone"] == SMALL


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_without_timm_the_option_says_what_to_install(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from data_helpers import make_csv
    from test_engine import train_args

    args = train_args(make_csv(tmp_path / "data", n_train=8, n_test=4), tmp_path / "run")
    args[args.index("msrn_tiny")] = "msrn_timm"
    assert cli([*args, "--backbone", SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install timm torchvision" in err
