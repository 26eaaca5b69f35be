"""Signals stop training at a step boundary with last.pt written there; --resume then ends bit for bit
where an uninterrupted run does. Exit statuses: 143 (SIGTERM), 130 (SIGINT), 75 (the requeue signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_helpers import noise_csv, tiny_train_args

from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli
from msrn.engine import trainer as train_module
from msrn.engine.preemption import REQUEUE_STATUS, parse_signal
from msrn.errors import MSRNError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_thread_per_module: None) -> None:
    """One thread for every run here, the uninterrupted one included: bitwise equality needs the same
    reduction order."""


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve training and four test images: three steps an epoch at batch 4."""
    return noise_csv(tmp_path_factory.mktemp("preempt"), {"train": 12, "test": 4})


def train_argv(csv: Path, out: Path, *extra: str) -> list[str]:
    """Two epochs of three steps, with an EMA of the weights; last.pt only at epoch ends (and on a signal)."""
    return tiny_train_args(
        csv, out, "--save-every", "0", "--val-fraction", "0", "--ema", "0.8", *extra, batch_size=4, epochs=2
    )


def assert_bitwise_equal(a: dict, b: dict) -> None:
    """Weights, EMA, optimiser and scheduler state, counters and history of two last.pt agree exactly."""
    for key in ("epoch", "step_in_epoch", "global_step", "best", "running_loss", "scheduler"):
        assert a[key] == b[key], key
    for part in ("state_dict", "ema"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"]), k
    drop = [[{k: v for k, v in e.items() if k != "seconds"} for e in s["history"]] for s in (a, b)]
    assert drop[0] == drop[1]


@pytest.fixture(scope="module")
def uninterrupted(csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert cli(train_argv(csv, out)) == 0
    return read_checkpoint(out / "last.pt")


def signal_during_step(monkeypatch: pytest.MonkeyPatch, signum: int, step: int) -> None:
    """Send this process `signum` in the middle of optimiser step `step` (1-based, global)."""
    real = train_module.Trainer.forward_backward

    def forward_backward(self: train_module.Trainer, *args: object, **kwargs: object) -> float:
        value = real(self, *args, **kwargs)
        if self.global_step + 1 == step:
            os.kill(os.getpid(), signum)
        return value

    monkeypatch.setattr(train_module.Trainer, "forward_backward", forward_backward)


@pytest.mark.parametrize(
    ("signame", "status", "extra"), [("SIGTERM", 143, ()), ("SIGUSR1", REQUEUE_STATUS, ("--requeue-signal", "USR1"))]
)
def test_signal_saves_mid_epoch_and_resume_is_bitwise_exact(
    csv: Path,
    tmp_path: Path,
    uninterrupted: dict,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    signame: str,
    status: int,
    extra: tuple[str, ...],
) -> None:
    """A signal during step 2 of epoch 1: that step finishes, last.pt holds step 2 (mid-epoch), one log line,
    the documented status; --resume ends with the uninterrupted run's exact state."""
    out = tmp_path / "run"
    signum = getattr(signal, signame)
    before = signal.getsignal(signum)
    with monkeypatch.context() as patch:
        signal_during_step(patch, signum, step=2)
        assert cli(train_argv(csv, out, *extra)) == status
    assert signal.getsignal(signum) is before  # handlers are the caller's again
    saved = read_checkpoint(out / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 2, 2)
    lines = [line for line in (out / "log.txt").read_text().splitlines() if "stopped on" in line]
    assert len(lines) == 1 and signame in lines[0] and f"exit status {status}" in lines[0]
    assert not (out / "best.pt").exists()  # no epoch had ended
    capsys.readouterr()
    assert cli(train_argv(csv, out, "--resume")) == 0
    assert_bitwise_equal(read_checkpoint(out / "last.pt"), uninterrupted)


def test_signal_during_evaluation_stops_after_the_epoch_end(
    csv: Path, tmp_path: Path, uninterrupted: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT while epoch 1 is evaluated: the epoch end completes (best.pt, last.pt) and the run exits 130."""
    out = tmp_path / "run"
    real = train_module.Trainer.evaluate_weights

    def evaluate_weights(self: train_module.Trainer) -> dict:
        results = real(self)
        os.kill(os.getpid(), signal.SIGINT)
        return results

    with monkeypatch.context() as patch:
        patch.setattr(train_module.Trainer, "evaluate_weights", evaluate_weights)
        assert cli(train_argv(csv, out)) == 130
    saved = read_checkpoint(out / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 0, 3)
    assert read_checkpoint(out / "best.pt")["epoch"] == 1
    assert cli(train_argv(csv, out, "--resume")) == 0
    assert_bitwise_equal(read_checkpoint(out / "last.pt"), uninterrupted)


def test_non_finite_loss_still_stops_with_signal_handling_active(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The watchdog's non-finite-loss stop is unchanged: exit 2 and one error line."""
    assert cli(train_argv(csv, tmp_path / "run", "--lr", "1e30", "--lr-backbone", "1e30")) == 2
    assert "non-finite" in capsys.readouterr().err


STOP_SCRIPT = """
import os, signal, sys, time
from msrn.engine.preemption import StopSignals, parse_signal
signum, repeat = getattr(signal, sys.argv[1]), float(sys.argv[2])
with StopSignals(parse_signal("USR1")) as stop:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)
    print("requested", stop.signum, stop.status(stop.signum), flush=True)
    if repeat >= 0:
        time.sleep(repeat)
        os.kill(os.getpid(), signum)
        time.sleep(0.5)
        print("still running", flush=True)
"""


@pytest.mark.parametrize(("signame", "status"), [("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", REQUEUE_STATUS)])
def test_first_signal_asks_second_exits_at_once(signame: str, status: int) -> None:
    """The first signal only records the request; a second one, later than the repeat window, exits at once
    with the first one's status; a copy within the window (torchrun forwarding Ctrl-C) is ignored."""
    signum = getattr(signal, signame)

    def run(repeat: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", STOP_SCRIPT, signame, str(repeat)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )

    asked = run(-1)
    assert asked.returncode == 0 and asked.stdout.split() == ["requested", str(int(signum)), str(status)]
    t0 = time.monotonic()
    second = run(1.2)
    assert second.returncode == status and "still running" not in second.stdout
    assert "second signal" in second.stderr and time.monotonic() - t0 < 30
    copy = run(0.1)
    assert copy.returncode == 0 and "still running" in copy.stdout


def test_requeue_signal_names() -> None:
    assert parse_signal("USR1") == parse_signal("SIGUSR1") == signal.SIGUSR1
    assert parse_signal(None) is None and parse_signal("none") is None
    for bad in ("USR9", "TERM", "KILL"):
        with pytest.raises(MSRNError, match="--requeue-signal"):
            parse_signal(bad)


@pytest.mark.slow
def test_sigterm_from_outside_saves_and_exits_143(csv: Path, tmp_path: Path) -> None:
    """A real `msrn train` process SIGTERMed from outside once training has begun: exit 143 soon, with a
    last.pt of the step it stopped at and the log line."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "msrn", *train_argv(csv, out, "--epochs", "50")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "log.txt").is_file() or "train csv" not in (out / "log.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(60) == 143
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = read_checkpoint(out / "last.pt")
    assert 0 < saved["global_step"] < 100
    assert f"global step {saved['global_step']}" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers(csv: Path, tmp_path: Path) -> None:
    """SIGTERM to the whole process group (as SLURM or a terminal sends it), with 2 loader worker processes:
    the workers ignore it, the main process saves last.pt and exits 143 (not a 'worker exited' error)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "msrn", *train_argv(csv, out, "--epochs", "50", "--workers", "2")]
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while not (out / "log.txt").is_file() or "epoch 1/50" not in (out / "log.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    assert "stopped on SIGTERM" in (out / "log.txt").read_text()
    assert read_checkpoint(out / "last.pt")["global_step"] >= 3
