"""Training beyond the paper, end to end on tiny data: the EMA + ASL + flip recipe, scores files, TensorBoard,
test-time flips, old checkpoints, partial labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import LABELS, make_csv
from sklearn.metrics import average_precision_score
from test_engine import _six_by_sklearn, train_args

from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli
from msrn.data import build_dataset
from msrn.errors import MSRNError

MODERN = ("--ema", "0.5", "--loss", "asl", "--tta", "flip")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-epoch run with EMA, ASL and test-time flips on colour-block data."""
    root = tmp_path_factory.mktemp("extras")
    csv_path = make_csv(root / "data")
    assert cli(train_args(csv_path, root / "run", *MODERN)) == 0
    return csv_path, root / "run"


def test_flip_tta_reproduces_the_run_and_averages_mirrored_logits(run: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    from msrn.inference.predictor import load

    csv_path, out = run
    m = json.loads((out / "metrics.json").read_text())
    assert m["weights"] == "ema" and json.loads((out / "config.json").read_text())["loss"] == "asl"
    evaluated = {}
    for tta in ("none", "flip"):
        report = tmp_path / f"{tta}.json"
        assert (
            cli(
                [
                    "evaluate",
                    "--dataset",
                    "csv",
                    "--data",
                    str(csv_path),
                    "--checkpoint",
                    str(out / "best.pt"),
                    "--json",
                    str(report),
                    "--workers",
                    "0",
                    "--tta",
                    tta,
                ]
            )
            == 0
        )
        evaluated[tta] = json.loads(report.read_text())
    assert evaluated["flip"]["ap_per_label"] == pytest.approx(m["ap_per_label"], abs=1e-9)  # the run's numbers
    assert evaluated["flip"]["loss"] != evaluated["none"]["loss"]
    image = Image.open(build_dataset("csv", csv_path, "test").images[0]).convert("RGB")
    plain, flipped = load(out / "best.pt"), load(out / "best.pt", tta="flip")
    probs = plain.probabilities([image, ImageOps.mirror(image)]).astype(np.float64)
    both = np.log(probs / (1 - probs))  # each one's logits
    want = 1 / (1 + np.exp(-(both[0] + both[1]) / 2))
    np.testing.assert_allclose(flipped.probabilities(image)[0], want, atol=2e-6)
    with pytest.raises(MSRNError, match="tta"):
        flipped.explain(image)


def test_evaluate_writes_every_images_probabilities(run: tuple[Path, Path], tmp_path: Path) -> None:
    csv_path, out = run
    """The --scores file holds every test image's probabilities, from which scikit-learn gets the report's
    figures. Mutation that survived before: an error inside msrn.metrics (e.g. CF1 as the mean of CP and CR),
    since the file's figures were recomputed with msrn.metrics itself."""
    scores, report = tmp_path / "new" / "scores.csv", tmp_path / "eval.json"
    assert (
        cli(
            [
                "evaluate",
                "--dataset",
                "csv",
                "--data",
                str(csv_path),
                "--checkpoint",
                str(out / "best.pt"),
                "--json",
                str(report),
                "--scores",
                str(scores),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    with open(scores, newline="") as f:
        rows = list(csv.reader(f))
    data = build_dataset("csv", csv_path, "test")
    assert rows[0] == ["image", *LABELS]
    assert [r[0] for r in rows[1:]] == [p.relative_to(data.root).as_posix() for p in data.images]
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert probs.shape == (len(data), len(LABELS))
    assert ((probs >= 0) & (probs <= 1)).all()
    m = json.loads(report.read_text())
    # a user's own metrics from the file (scikit-learn here) agree with msrn's report
    ap = [average_precision_score(data.targets[:, j] == 1, probs[:, j]) for j in range(len(LABELS))]
    assert m["mAP"] == pytest.approx(100 * np.mean(ap), abs=1e-5)
    six = _six_by_sklearn(probs, data.targets, np.full(len(LABELS), 0.5))
    for key in ("CF1", "OF1"):
        assert m[key] == pytest.approx(six[key], abs=1e-5), key
    assert not list(scores.parent.glob(".*.tmp"))


def test_tensorboard_events_hold_steps_epochs_and_figures(run: tuple[Path, Path]) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra is not installed"
    )
    _, out = run
    events = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    last = read_checkpoint(out / "last.pt")
    steps = last["global_step"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, steps + 1)) and all(np.isfinite(e.value) for e in loss)
    lrs = {tag: [e.value for e in events.Scalars(tag)] for tag in ("train/lr/backbone", "train/lr/head")}
    assert lrs["train/lr/head"][0] == pytest.approx(0.1) and lrs["train/lr/head"][-1] == pytest.approx(0.01)
    assert lrs["train/lr/backbone"][0] == pytest.approx(0.01)
    history = last["history"]
    per_epoch = steps // len(history)
    for tag, key in (("epoch/train_loss", "train_loss"), ("test/mAP", "mAP")):
        got = events.Scalars(tag)
        assert [e.step for e in got] == [per_epoch * (i + 1) for i in range(len(history))]
        np.testing.assert_allclose([e.value for e in got], [e[key] for e in history], rtol=1e-5)
    assert {"test/CF1", "test/OF1"} <= set(events.Tags()["scalars"])
    figures = events.Images("test/ap_per_label")
    assert len(figures) == len(history) and figures[0].width > 100 and figures[0].height > 100


def test_without_tensorboard_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import sys

    from msrn.engine.tensorboard import open_board

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    assert open_board(tmp_path / "tb", 1) is None
    out = tmp_path / "run"
    assert cli(train_args(make_csv(tmp_path / "data"), out, "--epochs", "1")) == 0
    assert not (out / "tensorboard").exists() and (out / "best.pt").is_file()
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    assert "pip install 'msrn[tensorboard]'" in " ".join(capsys.readouterr().out.split())


def test_checkpoints_from_before_these_options_still_load_and_resume(run: tuple[Path, Path], tmp_path: Path) -> None:
    from msrn.inference.predictor import load
    from msrn.io import atomic_save_torch

    csv_path, out = run
    new_keys = (
        "loss",
        "asl_gamma_neg",
        "asl_gamma_pos",
        "asl_clip",
        "focal_gamma",
        "focal_alpha",
        "ema",
        "ema_warmup",
        "tta",
    )
    for name in ("best.pt", "last.pt"):  # the files as the code before them wrote them
        ckpt = read_checkpoint(out / name)
        ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in new_keys}
        for key in ("ema", "weights"):
            ckpt.pop(key, None)
        ckpt["best"].pop("weights", None)
        atomic_save_torch(ckpt, tmp_path / name)
    predictor = load(tmp_path / "best.pt")
    assert predictor.labels == list(LABELS)
    assert (
        cli(
            [
                "train",
                "--dataset",
                "csv",
                "--data",
                str(csv_path),
                "--resume",
                str(tmp_path / "last.pt"),
                "--epochs",
                "3",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    resumed = read_checkpoint(tmp_path / "last.pt")
    assert resumed["epoch"] == 3 and resumed["config"]["loss"] == "softmargin" and resumed["config"]["ema"] is None


def test_training_with_unknown_entries_uses_only_known_ones(tmp_path: Path) -> None:
    """The loss sees the dataset's own encoding: every unknown entry of the CSV arrives as -2 (left out of the
    loss), none turned into a negative. The expected matrix is built here from the rows written. Mutation that
    survived before: the Trainer clamping the targets to min=0 before the loss (unknown and difficult entries
    then trained as negatives)."""
    from msrn.engine.config import preset_config
    from msrn.engine.train import Trainer
    from msrn.targets import UNKNOWN

    csv_path = make_csv(tmp_path / "data")
    lines = csv_path.read_text().splitlines()
    # hide "red" in every other training image: present or not, it becomes unknown there
    rows, want = [lines[0] + ",unknown"], []
    for i, line in enumerate(lines[1:]):
        image, labels, split = line.split(",")
        hidden = split == "train" and i % 2 == 0
        kept = [x for x in labels.split("|") if x and not (hidden and x == "red")]
        rows.append(f"{image},{'|'.join(kept)},{split},{'red' if hidden else ''}")
        if split == "train":  # the row the loss must see: 1 present, 0 absent, -2 unknown
            want.append([-2 if hidden and x == "red" else int(x in kept) for x in sorted(LABELS)])
    partial = tmp_path / "data" / "partial.csv"
    partial.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    cfg = preset_config(
        "csv",
        data=str(partial),
        out=str(out),
        model="msrn_tiny",
        pretrained="none",
        image_size=64,
        batch_size=8,
        epochs=1,
        workers=0,
        val_fraction=0.0,
    )
    trainer = Trainer(cfg)
    assert trainer.labelset.labels == sorted(LABELS)
    criterion, seen = trainer.criterion, []

    def recording(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.requires_grad:  # a training step, not an evaluation
            seen.append(targets.detach().cpu().numpy().copy())
        return criterion(logits, targets)

    trainer.criterion = recording
    trainer.fit()
    got = np.concatenate(seen)
    hidden = sum(row.count(-2) for row in want)
    assert hidden > 0
    assert int((got == UNKNOWN).sum()) == hidden
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want))  # each image once, as encoded
    ckpt = read_checkpoint(out / "best.pt")
    blue, red = LABELS.index("blue"), LABELS.index("red")
    assert ckpt["labelset"]["known"][blue, red] < ckpt["labelset"]["nums"][blue]  # P(red|blue) over known red
    assert torch.isfinite(ckpt["state_dict"]["head.fc2.weight"]).all()
