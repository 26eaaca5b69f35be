"""Training without a host sync per step: the losses read in batches give the same run, and a
non-finite one still stops the run with its own step named before anything is written from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from data_helpers import noise_csv, tiny_train_args

import msrn.engine.losses as losses_module
import msrn.engine.trainer as train_module
from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli
from msrn.data.loader import default_workers

pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(csv: Path, out: Path, *extra: str) -> list[str]:
    """Two epochs of five steps of two images."""
    return tiny_train_args(csv, out, "--val-fraction", "0", "--lr-steps", "1", *extra, batch_size=2, epochs=2)


def _scalars(folder: Path) -> list[tuple[int, float]]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_losses_read_every_step_or_in_batches_give_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = noise_csv(tmp_path, {"train": 10, "test": 4})
    states = []
    for every in (1, 3, 1000):  # every step, across step and epoch ends, once per epoch
        monkeypatch.setattr(train_module, "SYNC_EVERY", every)
        out = tmp_path / f"run{every}"
        assert cli(_argv(csv, out, "--save-every", "4")) == 0
        state = read_checkpoint(out / "last.pt")
        states.append((state, _scalars(out / "tensorboard")))
    (first, steps), *others = states
    assert [s for s, _ in steps] == list(range(1, 11))  # one loss per optimiser step
    for state, other_steps in others:
        assert other_steps == steps
        untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in s["history"]] for s in (state, first)]
        assert untimed[0] == untimed[1] and state["running_loss"] == first["running_loss"]
        for key, value in first["state_dict"].items():
            assert torch.equal(state["state_dict"][key], value), key


def test_a_non_finite_loss_is_named_by_its_step_when_read_later(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = noise_csv(tmp_path, {"train": 10, "test": 4})
    monkeypatch.setattr(train_module, "SYNC_EVERY", 1000)  # read at the epoch's end only
    calls = []
    real = losses_module.soft_margin_loss

    def poisoned(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.requires_grad:
            calls.append(1)
        return real(logits, targets) * (float("nan") if len(calls) == 8 and logits.requires_grad else 1.0)

    monkeypatch.setattr(losses_module, "soft_margin_loss", poisoned)
    assert cli(_argv(csv, tmp_path / "run", "--save-every", "0")) == 2
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at epoch 2, step 3" in err  # the 8th step: 5 in epoch 1, the 3rd of epoch 2
    state = read_checkpoint(tmp_path / "run" / "last.pt")  # epoch 1's, written before the poisoned step
    assert state["global_step"] == 5
    assert all(bool(v.isfinite().all()) for v in state["state_dict"].values() if v.is_floating_point())


def test_default_workers_follow_the_cpus_and_the_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)  # 64 usable CPUs
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(cuda=True) == 8  # many cores: capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers(cuda=True) == 7  # 8 cores per GPU process, one left to the process itself
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert default_workers(cuda=True) == 0  # one core each: load in the process
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers(cuda=False) == 2  # CPU training: the model needs the cores


@pytest.mark.slow  # inductor compiles the training step for a minute or more on 2 cores
def test_compile_trains_as_eager_does(tmp_path: Path) -> None:
    csv = noise_csv(tmp_path, {"train": 10, "test": 4})
    states = []
    for extra in ((), ("--compile",)):
        out = tmp_path / f"run{len(extra)}"
        assert cli(_argv(csv, out, "--epochs", "1", "--save-every", "0", *extra)) == 0
        states.append(read_checkpoint(out / "last.pt"))
    eager, compiled = states
    assert compiled["config"]["compile"] and not eager["config"]["compile"]
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-4)
    for key, value in eager["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(compiled["state_dict"][key], value, rtol=1e-3, atol=1e-5), key
