"""Training watches itself: non-finite loss, unwritable or full output folders, damaged checkpoints on resume."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
import torch
from data_helpers import noise_csv, tiny_train_args

import msrn.engine.losses as losses_module
from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    """Eight training and four test images, 64 px, four labels."""
    return noise_csv(tmp_path, {"train": 8, "test": 4})


def train_argv(csv: Path, out: Path, *extra: str) -> list[str]:
    """Two epochs of two steps each, last.pt after every step."""
    return tiny_train_args(csv, out, "--save-every", "1", "--val-fraction", "0", *extra, batch_size=4, epochs=2)


def one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one `msrn train: error:` line on stderr; return it."""
    assert cli(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("msrn train: error: "), errors
    return errors[0]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN loss at the third step stops the run with a clear line; last.pt of step 2 loads, all finite."""
    calls = []
    real = losses_module.soft_margin_loss  # what the trainer's default --loss softmargin calls

    def poisoned(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.requires_grad:  # training steps only: the reported test loss goes through the same function
            calls.append(1)
        return real(logits, targets) * (float("nan") if len(calls) == 3 and logits.requires_grad else 1.0)

    monkeypatch.setattr(losses_module, "soft_margin_loss", poisoned)
    line = one_error_line(capsys, train_argv(csv, tmp_path / "run"))
    assert "non-finite loss" in line and "epoch 2, step 1" in line and "last.pt is intact" in line
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert state["global_step"] == 2 and state["epoch"] == 1
    assert all(bool(v.isfinite().all()) for v in state["state_dict"].values() if v.is_floating_point())


def test_exploding_learning_rate_stops(csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--lr 1e30 diverges within a few steps: stopped with one line, any last.pt left holds finite weights."""
    line = one_error_line(capsys, train_argv(csv, tmp_path / "run", "--lr", "1e30", "--lr-backbone", "1e30"))
    assert "non-finite" in line
    last = tmp_path / "run" / "last.pt"
    if last.exists():
        state = read_checkpoint(last)["state_dict"]
        assert all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("where", ["parent-is-a-file", "proc"])
def test_unwritable_output_is_reported_before_any_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    """An output folder that cannot exist (even for root) fails first: the missing data is never reached."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run" if where == "parent-is-a-file" else Path("/proc/msrn-run")
    start = time.monotonic()
    line = one_error_line(capsys, train_argv(tmp_path / "absent.csv", out))
    assert "is not writable" in line and str(out) in line
    assert time.monotonic() - start < 10


def test_full_disk_keeps_previous_checkpoint(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC halfway through step 3's save: one line, epoch 1's last.pt survives, no temporary file is left."""
    real_save, saves = torch.save, []

    def save_until_full(obj: object, handle: object, *args: object, **kwargs: object) -> None:
        saves.append(1)
        if len(saves) < 5:  # last.pt at steps 1 and 2, best.pt and last.pt at the end of epoch 1
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    out = tmp_path / "run"
    line = one_error_line(capsys, train_argv(csv, out))
    assert "No space left on device" in line and "last.pt" in line and "intact" in line
    state = read_checkpoint(out / "last.pt")
    assert state["global_step"] == 2 and state["epoch"] == 1
    assert read_checkpoint(out / "best.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_corrupt_last_pt_on_resume_changes_nothing(csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A truncated last.pt on --resume: one line naming it and saying best.pt is intact; no file is touched."""
    out = tmp_path / "run"
    assert cli(train_argv(csv, out, "--epochs", "1")) == 0
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])

    def files() -> dict:  # every file below the run folder, TensorBoard's event files too
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}

    before = files()
    capsys.readouterr()
    line = one_error_line(capsys, train_argv(csv, out, "--resume"))
    assert str(last) in line and "truncated or corrupt" in line and f"{out / 'best.pt'} is intact" in line
    assert files() == before


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--device", "bogus"], "is not a device"),
        (["--workers", "-1"], "--workers must be >= 0, not -1"),
        (["--image-size", "32"], "needs --image-size >= 64"),
        (["--resume", "{best}"], "lacks the training state"),
    ],
)
def test_user_errors_are_one_line(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], words: str
) -> None:
    """A bad device, negative workers, too small images or resuming from a weights-only file: one line each."""
    best = tmp_path / "best.pt"
    torch.save({"format": "msrn", "epoch": 1, "state_dict": {}}, best)
    argv = train_argv(csv, tmp_path / "run", *(item.format(best=best) for item in extra))
    assert words in one_error_line(capsys, argv)
