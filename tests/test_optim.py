"""The optimisers and schedules of --optimizer and --schedule: the one-cycle rates per parameter group, AdamW's
decoupled decay, and a run that steps the one-cycle schedule every optimiser step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_helpers import make_csv, tiny_train_args
from torch import nn

from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli
from msrn.engine.optim import make_optimizer, make_scheduler


def _groups() -> list[dict]:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    return [{"params": a.parameters(), "lr": 0.01}, {"params": b.parameters(), "lr": 0.1}]


def test_one_cycle_rises_to_each_groups_own_rate_then_falls() -> None:
    opt = make_optimizer(_groups(), "sgd", 0.1, 0.9, 0.0)
    sched = make_scheduler(opt, "onecycle", (), 0.1, total_steps=100)
    # torch's one-cycle starts at peak / 25 and peaks after pct_start x total - 1 = 19 steps
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 / 25, 0.1 / 25])
    seen = []
    for _ in range(99):
        opt.step()
        sched.step()
        seen.append([g["lr"] for g in opt.param_groups])
    assert seen[18] == pytest.approx([0.01, 0.1])
    assert seen[-1][1] == pytest.approx(0.1 / 25 / 1e4)  # the final rate: initial / final_div_factor


def test_adamw_decays_weights_apart_from_the_gradient() -> None:
    """With a zero gradient, AdamW's step is w <- w (1 - lr wd): decoupled, unlike SGD's L2 term."""
    w = nn.Parameter(torch.full((3,), 2.0))
    opt = make_optimizer([{"params": [w], "lr": 0.1}], "adamw", 0.1, 0.9, 0.5)
    w.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))


@pytest.mark.slow
def test_a_one_cycle_run_steps_its_schedule_every_optimiser_step(tmp_path: Path) -> None:
    csv = make_csv(tmp_path / "data", n_train=24, n_test=8)
    args = tiny_train_args(csv, tmp_path / "run", "--optimizer", "adamw", "--schedule", "onecycle", "--lr", "0.001",
                           "--lr-backbone", "0.001", "--val-fraction", "0", batch_size=8, epochs=2)  # fmt: skip
    assert cli(args) == 0
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["global_step"] == 6  # 24 images / 8, two epochs
    assert state["scheduler"]["last_epoch"] == 6
    assert state["scheduler"]["total_steps"] == 6


def test_a_one_cycle_run_refuses_a_resume_with_another_epoch_count(tmp_path: Path, capsys) -> None:
    csv = make_csv(tmp_path / "data", n_train=8, n_test=4)
    common = ("--schedule", "onecycle", "--val-fraction", "0")
    assert cli(tiny_train_args(csv, tmp_path / "run", *common, batch_size=8, epochs=1)) == 0
    assert cli(tiny_train_args(csv, tmp_path / "run", *common, "--resume", batch_size=8, epochs=3)) == 2
    assert "--schedule onecycle was planned over 1 epochs" in capsys.readouterr().err
