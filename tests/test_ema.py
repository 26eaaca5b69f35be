"""The moving average of the weights: its arithmetic, its BatchNorm buffers, and what a run does with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from data_helpers import make_csv
from test_engine import train_args
from torch import nn

from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli
from msrn.engine.ema import WeightEMA, ema_decay
from msrn.models import load_checkpoint


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("warmup", [0, 3])
def test_ema_follows_its_formula_for_weights_and_batchnorm_buffers(warmup: int) -> None:
    net = _net()
    ema = WeightEMA(net, decay=0.9, warmup=warmup)
    expected = None
    for n in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics
        ema.update(net)
        current = {k: v.double() for k, v in net.state_dict().items() if v.is_floating_point()}
        if expected is None:  # the first update copies the model
            expected = current
        else:
            d = 0.9 if warmup == 0 else 0.9 * (1 - math.exp(-n / warmup))
            expected = {k: d * expected[k] + (1 - d) * current[k] for k in current}
    got = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value, rtol=1e-5, atol=1e-6, msg=key)
    assert "1.running_mean" in expected and int(ema.state_dict()["n_averaged"]) == 5


def test_warmup_ramps_the_decay_up() -> None:
    assert ema_decay(0.999, 0, 1) == 0.999
    ramp = [ema_decay(0.999, 100, n) for n in (1, 10, 100, 1000)]
    assert ramp == sorted(ramp) and ramp[0] < 0.01 and 0.998 < ramp[-1] < 0.999


def test_state_round_trips_strictly() -> None:
    net = _net()
    a = WeightEMA(net, 0.5)
    a.update(net)
    b = WeightEMA(_net(), 0.5)
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value)


@pytest.mark.parametrize("val", ["0", "0.25"])
def test_run_evaluates_both_and_best_pt_says_which(tmp_path: Path, val: str) -> None:
    csv = make_csv(tmp_path / "data")
    out = tmp_path / "run"
    assert cli(train_args(csv, out, "--ema", "0.5", "--val-fraction", val)) == 0
    last, best = read_checkpoint(out / "last.pt"), read_checkpoint(out / "best.pt")
    history = last["history"]
    assert all({"mAP", "ema_mAP", "ema_test_loss"} <= set(e) for e in history)
    m = json.loads((out / "metrics.json").read_text())
    assert best["weights"] == m["weights"] == last["best"]["weights"] and last["weights"] == "live"
    ema_state = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    if val == "0":  # no validation split: the last epoch's averaged weights
        assert best["weights"] == "ema" and m["selected_by"] == "last epoch"
        chosen = ema_state
    else:
        e = history[m["epoch"] - 1]
        assert best["weights"] == ("ema" if e["ema_val_mAP"] > e["val_mAP"] else "live")
        chosen = ema_state if m["epoch"] == len(history) and best["weights"] == "ema" else None
        if m["epoch"] == len(history) and best["weights"] == "live":
            chosen = last["state_dict"]
    if chosen is not None:
        for key, value in chosen.items():
            assert torch.equal(best["state_dict"][key], value), key
    assert m["mAP"] == pytest.approx(history[m["epoch"] - 1]["ema_mAP" if m["weights"] == "ema" else "mAP"])
    assert not torch.equal(last["state_dict"]["head.fc2.weight"], ema_state["head.fc2.weight"])
    load_checkpoint(out / "best.pt")  # the averaged weights load like any checkpoint
