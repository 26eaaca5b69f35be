"""The training engine, evaluation and demo on tiny data (CPU, seconds)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msrn.checkpoint import load_model
from msrn.cli import main as cli
from msrn.config import PRESETS, TrainConfig, preset_config
from msrn.errors import MSRNError

LABELS = ("blue", "green", "red")
METRIC_KEYS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "CR_top3", "CF1_top3", "OP_top3",
               "OR_top3", "OF1_top3", "ap_per_label")


def make_csv(root: Path, n_train: int = 40, n_test: int = 13, seed: int = 0) -> Path:
    """Colour-block images: a label's colour fills its own region when the label is present."""
    rng = np.random.default_rng(seed)
    regions = {"red": (slice(0, 16), slice(0, 32)), "green": (slice(16, 32), slice(0, 16)),
               "blue": (slice(16, 32), slice(16, 32))}
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows = ["image,labels,split"]
    (root / "img").mkdir(parents=True)
    for i in range(n_train + n_test):
        present = [lab for lab in LABELS if rng.random() < 0.5]
        arr = rng.integers(90, 140, (32, 32, 3), dtype=np.uint8)
        for lab in present:
            arr[regions[lab]] = colours[lab]
        Image.fromarray(arr).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'|'.join(present)},{'train' if i < n_train else 'test'}")
    path = root / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def train_args(csv: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "csv", "--data", str(csv), "--out", str(out), "--model", "msrn_tiny",
            "--image-size", "64", "--batch-size", "8", "--epochs", "2", "--workers", "0", "--lr-steps", "1",
            "--pretrained", "none", "--val-fraction", "0", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("engine")
    csv = make_csv(root / "data")
    assert cli(train_args(csv, root / "run")) == 0
    return csv, root / "run"


def test_run_folder_holds_everything(run: tuple[Path, Path]) -> None:
    _, out = run
    for name in ("last.pt", "best.pt", "metrics.json", "config.json", "log.txt", "history.png", "ap_per_label.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in m, key
    assert m["labels"] == list(LABELS) and m["epoch"] == 2 and m["selected_by"] == "last epoch"
    assert 0 <= m["mAP"] <= 100 and len(m["ap_per_label"]) == 3
    assert "epoch 2/2" in (out / "log.txt").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr_backbone"] == PRESETS["csv"]["lr_backbone"] and cfg["image_size"] == 64


def test_evaluate_reproduces_the_run_metrics(run: tuple[Path, Path], tmp_path: Path) -> None:
    csv, out = run
    report = tmp_path / "eval.json"
    assert cli(["evaluate", "--dataset", "csv", "--data", str(csv), "--checkpoint", str(out / "best.pt"),
                "--json", str(report), "--workers", "0", "--exact"]) == 0
    ours, run_m = json.loads(report.read_text()), json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(run_m[key], abs=1e-9), key
    assert ours["tuned_on_this_split"]["tuned"] is True
    fast = tmp_path / "fast.json"
    assert cli(["evaluate", "--dataset", "csv", "--data", str(csv), "--checkpoint", str(out / "best.pt"),
                "--json", str(fast), "--workers", "0"]) == 0  # the default: the folded model
    assert json.loads(fast.read_text())["mAP"] == pytest.approx(ours["mAP"], abs=1e-6)


def test_checkpoints_record_how_the_training_images_were_decoded(run: tuple[Path, Path]) -> None:
    _, out = run  # a CSV dataset: a user's photos, turned upright by their EXIF orientation
    assert torch.load(out / "best.pt", weights_only=True)["exif_orientation"] is True
    assert load_model(out / "best.pt").exif_orientation is True


def test_schedule_and_parameter_groups(run: tuple[Path, Path]) -> None:
    _, out = run
    ckpt = torch.load(out / "last.pt", weights_only=True)
    groups = {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}
    # lr_steps=1: both rates were multiplied by 0.1 once, when epoch 1 ended
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * 0.1)
    assert groups["head"]["lr"] == pytest.approx(0.1 * 0.1)
    assert groups["backbone"]["momentum"] == 0.9 and groups["head"]["weight_decay"] == 1e-4
    names = [k for k in ckpt["state_dict"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    slow = [k for k in names if k.startswith(("backbone.", "conv_buffer"))]
    assert len(groups["backbone"]["params"]) == len(slow)
    assert ckpt["epoch"] == 2 and ckpt["step_in_epoch"] == 0 and ckpt["global_step"] == 2 * 5


def test_validation_split_selects_and_tunes_thresholds(tmp_path: Path) -> None:
    from msrn.checkpoint import load_model

    csv = make_csv(tmp_path / "data", seed=1)
    out = tmp_path / "run"
    args = train_args(csv, out, "--val-fraction", "0.25", "--tune-thresholds", "--epochs", "1")
    assert cli(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["selected_by"] == "validation mAP"
    assert set(m["thresholds_by_label"]) == set(LABELS)
    model = load_model(out / "best.pt")
    assert model.thresholds.shape == (3,)
    assert np.allclose(model.thresholds.numpy(), [m["thresholds_by_label"][k] for k in LABELS])


def test_presets_carry_the_paper_recipe() -> None:
    coco = preset_config("coco2014", data="x")
    assert (coco.model, coco.image_size, coco.batch_size, coco.lr, coco.lr_backbone) == (
        "msrn_resnet101", 448, 16, 0.1, 0.01)
    assert coco.pool_ratio == 0.05 and preset_config("voc2007", data="x").pool_ratio == 0.2
    assert preset_config("voc2007", data="x", epochs=3, lr=None).epochs == 3
    with pytest.raises(MSRNError, match="unknown dataset"):
        preset_config("imagenet", data="x")
    with pytest.raises(MSRNError, match="validation split"):
        preset_config("voc2007", data="x", tune_thresholds=True, val_fraction=0.0)
    assert TrainConfig.from_dict(coco.to_dict()) == coco


def test_difficult_labels_count_as_positive_in_training() -> None:
    from msrn.engine.train import training_loss

    logits = torch.randn(4, 3)
    t = torch.tensor([[1, 0, -1], [0, -1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(training_loss(logits, t), training_loss(logits, (t != 0).float()))
    assert not torch.allclose(training_loss(logits, t), training_loss(logits, t.clamp(min=0)))


def test_missing_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(train_args(tmp_path / "nope.csv", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.csv" in err


def test_demo_trains_msrn_and_baseline(tmp_path: Path) -> None:
    from msrn.engine.demo import run_demo, write_summary

    summary = run_demo(tmp_path, epochs=1, workers=0)
    assert set(summary) == {"msrn", "baseline"}
    assert summary["msrn"]["model"] == "msrn_tiny" and summary["baseline"]["model"] == "baseline_tiny"
    text = write_summary(tmp_path, summary)
    assert "| msrn |" in text and (tmp_path / "summary.json").is_file()
    assert all(0 < s["mAP"] <= 100 for s in summary.values())
