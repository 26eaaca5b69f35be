"""Kill-and-resume: a run SIGKILLed at random moments and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import noise_csv, tiny_train_args

from msrn.checkpoint import read_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TIMEOUT = 60


def train_cmd(csv: Path, out: Path, *extra: str) -> list[str]:
    """The tiny training command: 18 train images (2 carved for validation), 5 steps an epoch, 3 epochs,
    with a moving average of the weights (its state must resume exactly too)."""
    args = tiny_train_args(
        csv, out, "--save-every", "3", "--ema", "0.8", "--ema-warmup", "4", *extra, batch_size=4, epochs=3
    )
    return [sys.executable, "-m", "msrn", *args]


def run_to_end(cmd: list[str]) -> None:
    """Run a command to completion, failing the test with its stderr if it fails."""
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]


def kill_when(cmd: list[str], ready: callable, delay: float) -> bool:
    """Start cmd, wait until ready() holds, sleep `delay`, SIGKILL it; False if it finished first."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never reached the kill point"
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def temp_files(out: Path) -> set[str]:
    """Names of last.pt's temporary files in the run folder (one exists while a save is under way)."""
    return {p.name for p in out.glob(".last.pt.*.tmp")}


def assert_same_run(a: Path, b: Path) -> None:
    """Weights, optimiser, schedule, counters, best and history of two runs agree (history up to timing)."""
    sa, sb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    for key in ("epoch", "step_in_epoch", "global_step", "best", "running_loss"):
        assert sa[key] == sb[key], key
    assert sa["state_dict"].keys() == sb["state_dict"].keys()
    for key, value in sa["state_dict"].items():
        torch.testing.assert_close(sb["state_dict"][key], value, atol=1e-6, rtol=0, msg=key)
    assert sa["scheduler"] == sb["scheduler"]
    assert sa["ema"].keys() == sb["ema"].keys() and int(sa["ema"]["n_averaged"]) == sa["global_step"]
    for key, value in sa["ema"].items():
        torch.testing.assert_close(sb["ema"][key], value, atol=1e-6, rtol=0, msg=key)
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for k, state in oa["state"].items():
        torch.testing.assert_close(ob["state"][k]["momentum_buffer"], state["momentum_buffer"], atol=1e-6, rtol=0)
    timeless = [[{k: v for k, v in e.items() if k != "seconds"} for e in s["history"]] for s in (sa, sb)]
    assert timeless[0] == timeless[1]
    best_a, best_b = read_checkpoint(a / "best.pt"), read_checkpoint(b / "best.pt")
    assert best_a["weights"] == best_b["weights"] == sa["best"]["weights"]
    for key, value in best_a["state_dict"].items():
        torch.testing.assert_close(best_b["state_dict"][key], value, atol=1e-6, rtol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma.keys() == mb.keys() and ma["epoch"] == mb["epoch"]
    np.testing.assert_allclose(ma["ap_per_label"], mb["ap_per_label"], atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The dataset and an uninterrupted reference run."""
    root = tmp_path_factory.mktemp("resume")
    csv = noise_csv(root, {"train": 20, "test": 6})
    run_to_end(train_cmd(csv, root / "A"))
    return csv, root / "A"


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL at random moments (mid-epoch, during saves), resume with and without a file: same end state."""
    csv, a = runs
    b = tmp_path / "B"
    rng = random.Random(1234)
    last = b / "last.pt"
    assert kill_when(train_cmd(csv, b), last.is_file, rng.uniform(0, 0.3))
    kills = 1
    assert read_checkpoint(last)["epoch"] < 3  # killed before the end
    old = temp_files(b)  # kill the moment a save has begun
    kills += kill_when(train_cmd(csv, b, "--resume"), lambda: bool(temp_files(b) - old), 0.0)
    read_checkpoint(last)  # a kill during a save leaves the previous last.pt, loadable
    kills += kill_when(train_cmd(csv, b, "--resume", str(last)), lambda: True, rng.uniform(1.0, 3.0))
    read_checkpoint(last)
    # only the data and the file: the run's folder, epochs and settings come from last.pt; 2 loader workers
    run_to_end([sys.executable, "-m", "msrn", "train", "--dataset", "csv", "--data", str(csv), "--resume", str(last)])
    assert kills >= 2
    assert not temp_files(b), "temporary files of killed saves are cleaned up on resume"
    assert_same_run(a, b)
    assert_one_curve(b, read_checkpoint(last)["global_step"])


def assert_one_curve(out: Path, steps: int) -> None:
    """The TensorBoard loss curve of a killed and resumed run has each step once (where tensorboard is installed)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # the optional extra: without it no events are written
        assert not (out / "tensorboard").exists()
        return
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))
