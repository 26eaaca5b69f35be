"""The training engine, evaluation and demo on tiny data (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import LABELS, make_csv, tiny_train_args
from PIL import Image

from msrn.cli import main as cli
from msrn.engine.config import PRESETS, TrainConfig, preset_config
from msrn.errors import MSRNError
from msrn.models import load_checkpoint

METRIC_KEYS = (
    "mAP",
    "CP",
    "CR",
    "CF1",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
    "ap_per_label",
)


def train_args(csv: Path, out: Path, *extra: str) -> list[str]:
    return tiny_train_args(csv, out, "--lr-steps", "1", "--val-fraction", "0", *extra, batch_size=8, epochs=2)


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


def test_evaluate_reproduces_the_run_metrics(
    run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`msrn evaluate` on best.pt gives the run's figures, and both are right: mAP, AP per label and CP..OF1
    by scikit-learn, the reference's tuned figures by the loop restatement in reference_impl, all from the
    model's logits. Mutation that survived before: any error inside the metrics (e.g. CF1 as the mean of CP
    and CR), since the expected values came from msrn.metrics itself."""
    from reference_impl import reference_top_k_matrix, reference_tuned_search
    from sklearn.metrics import average_precision_score

    from msrn.data import build_dataset
    from msrn.engine.evaluate import predict_logits

    csv, out = run
    report = tmp_path / "eval.json"
    assert (
        cli(
            [
                "evaluate",
                "--dataset",
                "csv",
                "--data",
                str(csv),
                "--checkpoint",
                str(out / "best.pt"),
                "--json",
                str(report),
                "--workers",
                "0",
                "--exact",
            ]
        )
        == 0
    )
    ours, run_m = json.loads(report.read_text()), json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(run_m[key], abs=1e-9), key
    assert ours["loss"] == pytest.approx(run_m["loss"], rel=1e-6)  # the group loss comes from the weights alone
    # the reference's figures tuned on the test split: only here, labelled, from the same logits
    assert "TUNED ON THE TEST SET ITSELF" in capsys.readouterr().out
    tuned = ours["tuned_on_test_set"]
    assert tuned["split"] == "test" and "not a fair number" in tuned["note"]
    test = build_dataset("csv", str(csv), "test")
    loaded = load_checkpoint(out / "best.pt")
    logits = predict_logits(loaded.model, test, loaded.image_size, 4, 0, torch.device("cpu"))
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ap = [100 * average_precision_score(test.targets[:, j] == 1, probs[:, j]) for j in range(3)]
    assert (test.targets == 1).any(axis=0).all()  # every label has a positive: each has an AP
    want = {"mAP": float(np.mean(ap)), **_six_by_sklearn(probs, test.targets, np.full(3, 0.5))}
    for key, value in want.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert ours["ap_per_label"] == pytest.approx(ap, abs=1e-6)
    scores32 = torch.from_numpy(logits.astype(np.float32))
    for suffix, scores in (("", logits), ("_top3", reference_top_k_matrix(scores32, 3))):
        threshold, six = reference_tuned_search(scores, test.targets)
        assert tuned[f"threshold{suffix}"] == threshold
        for key, value in six.items():
            assert tuned[f"{key}{suffix}"] == pytest.approx(100.0 * value, abs=1e-9), key
    assert "tuned_on_test_set" not in run_m
    fast = tmp_path / "fast.json"
    assert (
        cli(
            [
                "evaluate",
                "--dataset",
                "csv",
                "--data",
                str(csv),
                "--checkpoint",
                str(out / "best.pt"),
                "--json",
                str(fast),
                "--workers",
                "0",
            ]
        )
        == 0
    )  # the default: the folded model
    assert json.loads(fast.read_text())["mAP"] == pytest.approx(ours["mAP"], abs=1e-6)


def test_checkpoints_record_how_the_training_images_were_decoded(run: tuple[Path, Path]) -> None:
    _, out = run  # a CSV dataset: a user's photos, turned upright by their EXIF orientation
    assert torch.load(out / "best.pt", weights_only=True)["exif_orientation"] is True
    assert load_checkpoint(out / "best.pt").exif_orientation is True


def test_schedule_and_parameter_groups(run: tuple[Path, Path]) -> None:
    _, out = run
    ckpt = torch.load(out / "last.pt", weights_only=True)
    groups = {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}
    # lr_steps=1: both rates were multiplied by 0.1 once, when epoch 1 ended
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * 0.1)
    assert groups["head"]["lr"] == pytest.approx(0.1 * 0.1)
    assert groups["backbone"]["momentum"] == 0.9 and groups["head"]["weight_decay"] == 1e-4
    names = [k for k in ckpt["state_dict"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    slow = [k for k in names if k.startswith(("backbone.", "depth_conv"))]
    assert len(groups["backbone"]["params"]) == len(slow)
    assert ckpt["epoch"] == 2 and ckpt["step_in_epoch"] == 0 and ckpt["global_step"] == 2 * 5


def _six_by_sklearn(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (percent) at per-label thresholds, by scikit-learn: macro and micro precision and
    recall (an undefined ratio counts 0), CF1 the F1 of CP and CR."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    truth, predicted = targets == 1, probs >= thresholds[None, :]
    cp = 100 * precision_score(truth, predicted, average="macro", zero_division=0)
    cr = 100 * recall_score(truth, predicted, average="macro", zero_division=0)
    return {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
        "OP": 100 * precision_score(truth, predicted, average="micro", zero_division=0),
        "OR": 100 * recall_score(truth, predicted, average="micro", zero_division=0),
        "OF1": 100 * f1_score(truth, predicted, average="micro", zero_division=0),
    }


def test_validation_split_selects_and_tunes_thresholds(tmp_path: Path) -> None:
    """The run reports its test figures at 0.5 and, beside them, at the thresholds tuned on validation (both
    recomputed here by scikit-learn from best.pt's probabilities). Mutation that survived before:
    Trainer.evaluate passing None instead of the tuned thresholds to score_metrics for the test split (the
    tuned figures then vanish)."""
    from msrn.data import build_dataset
    from msrn.engine.evaluate import predict_logits

    csv = make_csv(tmp_path / "data", seed=1)
    out = tmp_path / "run"
    args = train_args(csv, out, "--val-fraction", "0.25", "--tune-thresholds", "--epochs", "1")
    assert cli(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["selected_by"] == "validation mAP"
    assert set(m["thresholds_by_label"]) == set(LABELS)
    loaded = load_checkpoint(out / "best.pt")
    assert loaded.thresholds.shape == (3,)
    assert np.allclose(loaded.thresholds, [m["thresholds_by_label"][k] for k in LABELS])
    test = build_dataset("csv", str(csv), "test")
    logits = predict_logits(loaded.model, test, loaded.image_size, 4, 0, torch.device("cpu"))
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    tuned = _six_by_sklearn(probs, test.targets, loaded.thresholds.astype(np.float64))
    at_half = _six_by_sklearn(probs, test.targets, np.full(3, 0.5))
    assert tuned != pytest.approx(at_half, abs=1e-3)  # else this run could not tell the two apart
    for key in tuned:  # the fixed-threshold figures, and beside them those at the tuned thresholds
        assert m[key] == pytest.approx(at_half[key], abs=1e-6), key
        assert m["per_label_thresholds"][key] == pytest.approx(tuned[key], abs=1e-6), key


def test_a_resumed_run_keeps_the_best_epoch_from_before_the_resume(tmp_path: Path) -> None:
    """A resume restores which epoch best.pt holds, so a later epoch replaces it only by scoring at least as
    well. Epoch 1's recorded score is set out of reach (101, above any mAP) before resuming for epoch 2: best.pt
    must stay epoch 1. Mutation that survived before: `self.best = None` in Trainer._restore (the resumed run
    then counted its first epoch as an improvement and overwrote best.pt)."""
    csv = make_csv(tmp_path / "data", n_train=16, n_test=6, seed=2)
    out = tmp_path / "run"
    assert cli(train_args(csv, out, "--val-fraction", "0.25", "--epochs", "1")) == 0
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["best"]["epoch"] == 1
    last["best"]["score"] = 101.0
    torch.save(last, out / "last.pt")
    assert cli(train_args(csv, out, "--val-fraction", "0.25", "--epochs", "2", "--resume")) == 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2  # epoch 2 did run
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 1
    assert torch.load(out / "last.pt", weights_only=True)["best"]["score"] == 101.0


def test_presets_carry_the_paper_recipe() -> None:
    coco = preset_config("coco2014", data="x")
    assert (coco.model, coco.image_size, coco.batch_size, coco.lr, coco.lr_backbone) == (
        "msrn_resnet101",
        448,
        16,
        0.1,
        0.01,
    )
    assert coco.pool_ratio == 0.05 and preset_config("voc2007", data="x").pool_ratio == 0.2
    assert preset_config("voc2007", data="x", epochs=3, lr=None).epochs == 3
    with pytest.raises(MSRNError, match="unknown dataset"):
        preset_config("imagenet", data="x")
    with pytest.raises(MSRNError, match="validation split"):
        preset_config("voc2007", data="x", tune_thresholds=True, val_fraction=0.0)
    assert TrainConfig.from_dict(coco.to_dict()) == coco


def test_ablation_switches_and_crop_scales_on_the_command_line(tmp_path: Path) -> None:

    csv = make_csv(tmp_path / "data", n_train=16, n_test=6)
    out = tmp_path / "run"
    assert (
        cli(
            train_args(
                csv,
                out,
                "--epochs",
                "1",
                "--depths",
                "3",
                "2",
                "--no-group-semantics",
                "--no-label-graph",
                "--crop-scales",
                "1",
                "0.85",
            )
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["depths"], cfg["group_semantics"], cfg["label_graph"]) == ([2, 3], False, False)
    assert cfg["crop_scales"] == [1.0, 0.85]
    model = load_checkpoint(out / "best.pt").model
    assert model.cfg.depths == (2, 3) and not model.cfg.group_semantics and not model.cfg.label_graph
    assert TrainConfig.from_dict(cfg).model_switches() == {
        "depths": (2, 3),
        "group_semantics": False,
        "label_graph": False,
        "head": "mlp",
    }
    assert preset_config("scenes").model_switches() == {}  # the paper's model by default
    with pytest.raises(MSRNError, match="baseline_tiny has none"):
        preset_config("scenes", model="baseline_tiny", label_graph=False)
    with pytest.raises(MSRNError, match="--depths"):
        preset_config("scenes", depths=(0, 3))
    with pytest.raises(MSRNError, match="--crop-scales"):
        preset_config("scenes", crop_scales=(1.0, 1.5))


def test_validate_is_pure_and_every_option_is_declared_on_its_field() -> None:
    import argparse
    import dataclasses

    from msrn.options import add_options

    given = TrainConfig(dataset="csv", pretrained="none", ema=0.0, depths=(3, 1))
    settled = given.validate()
    assert (given.pretrained, given.ema, given.depths) == ("none", 0.0, (3, 1))  # the input is left as it was
    assert (settled.pretrained, settled.ema, settled.depths) == (None, None, (1, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.epochs = 3
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig, overlay=True)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f.name
        assert actions[f.name].help == f.metadata["help"]
    # flag types follow the fields' types; choices and bounds come from the field
    assert actions["crop_scales"].type is float and actions["crop_scales"].nargs == "+"
    assert actions["lr_steps"].type is int and actions["max_grad_norm"].type is float
    assert actions["amp"].choices == ["none", "bf16", "fp16"] and actions["depths"].choices == [1, 2, 3]
    args = parser.parse_args(["--dataset", "csv", "--max-grad-norm", "2", "--ema", "0.99", "--no-label-graph"])
    assert (args.max_grad_norm, args.ema, args.label_graph) == (2.0, 0.99, False)
    with pytest.raises(MSRNError, match="--focal-alpha must be in \\[0, 1\\], not 1.5"):
        TrainConfig(focal_alpha=1.5).validate()


def test_in_memory_trains_exactly_as_reading_files(tmp_path: Path) -> None:
    csv = make_csv(tmp_path / "data", n_train=16, n_test=6)
    for name, flag in (("files", "--no-in-memory"), ("memory", "--in-memory")):
        assert cli(train_args(csv, tmp_path / name, flag, "--epochs", "1", "--val-fraction", "0.25")) == 0
    files, memory = (torch.load(tmp_path / n / "last.pt", weights_only=False) for n in ("files", "memory"))
    assert memory["config"]["in_memory"] and not files["config"]["in_memory"]
    assert files["state_dict"].keys() == memory["state_dict"].keys()
    assert all(torch.equal(files["state_dict"][k], memory["state_dict"][k]) for k in files["state_dict"])
    assert files["history"][0]["mAP"] == memory["history"][0]["mAP"]
    assert files["history"][0]["val_mAP"] == memory["history"][0]["val_mAP"]
    assert preset_config("scenes", data="x").in_memory
    with pytest.raises(MSRNError, match="--on-error skip"):
        preset_config("scenes", data="x", on_error="skip")


def test_difficult_labels_count_as_positive_in_training() -> None:
    from msrn.engine.losses import soft_margin_loss as training_loss

    logits = torch.randn(4, 3)
    t = torch.tensor([[1, 0, -1], [0, -1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(training_loss(logits, t), training_loss(logits, (t != 0).float()))
    assert not torch.allclose(training_loss(logits, t), training_loss(logits, t.clamp(min=0)))


def test_reported_loss_is_the_training_loss_plus_the_group_loss() -> None:
    """On hand-made logits with difficult labels (-1): counted positive, plus the model's group loss."""
    from msrn.engine.evaluate import score_metrics
    from msrn.engine.losses import model_group_loss
    from msrn.models import create_model

    logits = np.array([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0], [1.0, 0.2, -0.3]], np.float32)
    targets = np.array([[1, -1, 0], [0, 1, -1], [1, 0, 1]], np.float32)
    by_hand = np.mean(np.logaddexp(0, logits) - logits * (targets != 0))
    assert abs(by_hand - np.mean(np.logaddexp(0, logits) - logits * (targets > 0))) > 0.05  # difficult as negative
    assert score_metrics(logits, targets, group_loss=0.25)["loss"] == pytest.approx(by_hand + 0.25, rel=1e-6)

    model = create_model("msrn_tiny", labels=list(LABELS)).train()
    gloss = model.semantics().group_loss.detach()
    assert float(gloss) > 0 and model_group_loss(model) == pytest.approx(float(gloss), rel=1e-6)
    assert model_group_loss(create_model("baseline_tiny", labels=list(LABELS))) == 0.0


def relabelled_csv(csv: Path, folder: Path) -> Path:
    """The same images with a fourth label on every other one, so the label set changes (3 -> 4 labels)."""
    rows = ["image,labels,split"]
    for i, row in enumerate(csv.read_text().splitlines()[1:]):
        image, labels, split = row.split(",")
        names = [x for x in labels.split("|") if x] + (["yellow"] if i % 2 else [])
        rows.append(f"{csv.parent / image},{'|'.join(names)},{split}")
    folder.mkdir()
    path = folder / "relabelled.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_init_fine_tunes_a_trained_model_onto_a_new_label_set(run: tuple[Path, Path], tmp_path: Path) -> None:
    from msrn.checkpoint import read_checkpoint
    from msrn.engine.train import train
    from msrn.engine.trainer import Trainer

    csv, out = run
    source = read_checkpoint(out / "best.pt")["state_dict"]
    cfg = preset_config(
        "csv",
        data=str(relabelled_csv(csv, tmp_path / "data")),
        out=str(tmp_path / "ft"),
        model="msrn_tiny",
        image_size=64,
        batch_size=8,
        epochs=1,
        workers=0,
        val_fraction=0.0,
        init=str(out / "best.pt"),
    )
    assert cfg.pretrained is None  # --init brings the backbone: nothing else is loaded
    trainer = Trainer(cfg)
    assert trainer.labelset.labels == [*sorted(LABELS), "yellow"]
    for key, value in trainer.model.state_dict().items():
        if key.startswith(("head.fc1.", "head.fc2.")):  # C + K changed: fc1's input and fc2's output
            assert value.shape != source[key].shape or not torch.equal(value, source[key]), key
        elif key in ("word_vectors", "adjacency"):
            assert value.shape[0] == 4, key
        else:
            assert torch.equal(value, source[key]), key
    assert torch.equal(trainer.model.word_vectors, torch.from_numpy(trainer.labelset.word_vectors))
    lines = [line for line in (tmp_path / "ft" / "log.txt").read_text().splitlines() if "--init" in line]
    assert len(lines) == 1 and "started afresh: head.fc1, head.fc2;" in lines[0], lines
    trainer.fit()
    tuned = load_checkpoint(tmp_path / "ft" / "best.pt").model
    assert tuned.labels == trainer.labelset.labels
    assert not torch.equal(tuned.backbone.conv1.weight, source["backbone.conv1.weight"])  # it trained
    # the run resumes as any run: its saved --init is history, not a second start
    assert train(dataclasses.replace(cfg, init=None, resume="auto", epochs=2)).epoch == 2


def test_init_refuses_resume_and_unknown_keys(
    run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from msrn.checkpoint import read_checkpoint

    csv, out = run
    assert cli(train_args(csv, tmp_path / "a", "--init", str(out / "best.pt"), "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--init and --resume" in err
    ckpt = read_checkpoint(out / "best.pt")
    ckpt["state_dict"]["extra.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "extra.pt")
    assert cli(train_args(csv, tmp_path / "b", "--init", str(tmp_path / "extra.pt"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 unexpected: extra.weight" in err
    assert not (tmp_path / "b" / "last.pt").exists()
    assert cli(train_args(csv, tmp_path / "c", "--init", str(out / "best.pt"), "--model", "msrn_resnet18")) == 2
    assert "holds a resnet_tiny backbone but the model's is resnet18" in capsys.readouterr().err


def test_missing_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(train_args(tmp_path / "nope.csv", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.csv" in err


@pytest.mark.slow
def test_demo_trains_msrn_and_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msrn import demo

    summary = demo.run_demo(tmp_path, epochs=1, workers=0, data_size=(40, 24, 64))
    assert set(summary) == {"msrn", "baseline"}
    assert summary["msrn"]["model"] == "msrn_tiny" and summary["baseline"]["model"] == "baseline_tiny"
    for s in summary.values():
        assert {"mAP", "CF1", "OF1", "seconds"} <= set(s) and 0 < s["mAP"] <= 100
        assert set(s["splits"]) == {"small", "medium", "large", "ambiguous", "distinct"}
    explained = demo.write_explanations(tmp_path, summary)
    assert 1 <= len(explained) <= demo.EXPLAINED
    for path, present, caption in explained:
        with Image.open(tmp_path / path) as im:
            assert im.width > im.height > 200  # the attention grid with the score bars beside it
        assert present and caption
    assert "beats the baseline most" in explained[0][2] and "fails most" in explained[-1][2]
    monkeypatch.setattr(demo, "SEED_SPREAD", tmp_path / "none.json")
    text = demo.write_summary(tmp_path, summary, explained)
    assert "| msrn |" in text and "| baseline |" in text and "mAP small" in text and "No benchmark run" in text
    assert all(f"]({path})" in text and caption in text for path, _, caption in explained)
    assert json.loads((tmp_path / "summary.json").read_text())["msrn"]["mAP"] == summary["msrn"]["mAP"]
    spread = {
        "command": "python benchmarks/ablation.py",
        "date": "2026-12-01",
        "seeds": [0, 1, 2],
        "runs": {
            "msrn": {"mAP": [90.0, 91.0, 92.0], "CF1": [80.0] * 3, "OF1": [81.0] * 3},
            "baseline": {"mAP": [88.0, 88.5, 89.0], "CF1": [70.0] * 3, "OF1": [71.0] * 3},
        },
    }
    (tmp_path / "spread.json").write_text(json.dumps(spread))
    monkeypatch.setattr(demo, "SEED_SPREAD", tmp_path / "spread.json")
    text = demo.write_summary(tmp_path, summary, explained)
    assert "91.00 ± 1.00" in text and "+2.00 / +2.50 / +3.00" in text and "(mean +2.50)" in text


def test_demo_trains_at_once_only_where_cores_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from msrn import demo

    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    assert demo.concurrent_runs(2, 0, "cpu") == 2  # one thread each, loading in-process
    assert demo.concurrent_runs(2, 1, "cpu") == 1  # a loading process per run would take the second core
    assert demo.concurrent_runs(1, 0, "cpu") == 1 and demo.concurrent_runs(2, 0, "cuda") == 1
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)
    assert demo.concurrent_runs(2, 0, "cpu") == 1
    stream = io.StringIO()
    tagged = demo._Tagged(stream, "[msrn] ")
    tagged.write("epoch 1")
    tagged.write(" done\nepoch 2\n")
    assert stream.getvalue() == "[msrn] epoch 1 done\n[msrn] epoch 2\n" and not tagged.isatty()


@pytest.mark.slow
def test_demo_runs_at_once_give_what_they_give_one_after_the_other(tmp_path: Path) -> None:
    from msrn import demo

    apart = demo.run_demo(tmp_path / "apart", epochs=1, data_size=(24, 16, 64), jobs=1)
    together = demo.run_demo(tmp_path / "together", epochs=1, data_size=(24, 16, 64), jobs=2)
    for name in ("msrn", "baseline"):
        assert together[name]["mAP"] == apart[name]["mAP"] and together[name]["splits"] == apart[name]["splits"]
    assert (tmp_path / "together" / "msrn" / "log.txt").read_text().count("epoch 1/1") == 1
