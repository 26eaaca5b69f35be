"""`msrn compare` end to end on toy scenes: the JSON's structure, figures checked against independent counts,
epochs chosen on validation, one backbone draw per seed shared by the heads, and a rerun that trains only
what compare.json lacks. Plus the recipes' overrides and the label cosine, without training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_csv
from sklearn.metrics.pairwise import cosine_similarity

from msrn.cli import main as cli
from msrn.engine.compare.cost import label_cosine
from msrn.engine.config import PRESETS, preset_config
from msrn.engine.recipes import recipe_overrides
from msrn.models import create_model
from msrn.models.resnet import ResNet

LABELS = 16  # the scenes benchmark's
TINY_WIDTH = 128  # channels of resnet_tiny's last stage
ARGS = ["compare", "--heads", "baseline", "msrn", "--recipes", "gcn", "--seeds", "0", "1", "--epochs", "1",
        "--scenes-size", "24", "8", "64", "--image-size", "64", "--batch-size", "8", "--workers", "0",
        "--timing-rounds", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, one_thread_per_module: None) -> Path:
    out = tmp_path_factory.mktemp("compare")
    assert cli([*ARGS, "--out", str(out)]) == 0
    return out


def _result(out: Path) -> dict:
    return json.loads((out / "compare.json").read_text())


@pytest.mark.slow
def test_every_run_is_recorded_with_its_metrics_and_slices(study: Path) -> None:
    runs = _result(study)["runs"]
    assert sorted(runs) == ["baseline/gcn/seed0", "baseline/gcn/seed1", "msrn/gcn/seed0", "msrn/gcn/seed1"]
    for key, run in runs.items():
        assert set(run["slices"]) == {"small", "medium", "large", "ambiguous", "distinct"}, key
        assert 0 <= run["mAP"] <= 100, key


@pytest.mark.slow
def test_epochs_are_selected_on_validation_never_on_test(study: Path) -> None:
    for key, run in _result(study)["runs"].items():
        assert run["selected_by"] == "validation mAP", key
        config = json.loads((study / "runs" / "gcn" / f"{run['head']}_seed{run['seed']}" / "config.json").read_text())
        assert config["val_fraction"] == 0.1, key


@pytest.mark.slow
def test_heads_of_a_seed_start_from_one_backbone_drawn_from_that_seed(study: Path) -> None:
    def pretrained(head: str, seed: int) -> str:
        return json.loads((study / "runs" / "gcn" / f"{head}_seed{seed}" / "config.json").read_text())["pretrained"]

    assert pretrained("baseline", 1) == pretrained("msrn", 1)
    torch.manual_seed(1)
    drawn = ResNet("resnet_tiny").state_dict()
    saved = torch.load(pretrained("msrn", 1), weights_only=True)
    for name, value in drawn.items():
        torch.testing.assert_close(saved[name], value, msg=name)


@pytest.mark.slow
def test_costs_match_counts_made_here(study: Path) -> None:
    costs = _result(study)["costs"]
    assert costs["baseline"]["head_params"] == TINY_WIDTH * LABELS + LABELS  # one linear layer
    assert costs["baseline"]["head_flops"] == 2 * TINY_WIDTH * LABELS  # its multiply-adds, 2 FLOPs each
    msrn = create_model("msrn_tiny", num_classes=LABELS)
    backbone = sum(p.numel() for p in ResNet("resnet_tiny").parameters())
    assert costs["msrn"]["head_params"] == sum(p.numel() for p in msrn.parameters()) - backbone
    assert costs["msrn"]["train"]["x_backbone"] > 0


@pytest.mark.slow
def test_summary_is_the_mean_and_sample_spread_over_seeds(study: Path) -> None:
    result = _result(study)
    maps = [result["runs"][f"msrn/gcn/seed{s}"]["mAP"] for s in (0, 1)]
    entry = result["summary"]["gcn"]["msrn"]["mAP"]
    assert entry["mean"] == pytest.approx(sum(maps) / 2, abs=1e-4)
    assert entry["std"] == pytest.approx(abs(maps[0] - maps[1]) / 2**0.5, abs=1e-4)


@pytest.mark.slow
def test_label_cosine_is_that_of_the_kept_classifier_rows(study: Path) -> None:
    run = _result(study)["runs"]["baseline/gcn/seed0"]
    weights = torch.load(study / "runs" / "gcn" / "baseline_seed0" / "best.pt", weights_only=False)["state_dict"]
    sims = cosine_similarity(weights["fc.weight"].numpy())
    expected = (sims.sum() - LABELS) / (LABELS * (LABELS - 1))
    assert run["label_cosine"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_report_and_plots_are_written(study: Path) -> None:
    text = (study / "report.md").read_text()
    assert "| msrn |" in text
    for name in ("map_vs_cost.png", "slices.png"):
        assert (study / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_a_rerun_trains_only_the_runs_missing_from_the_json(study: Path, capsys: pytest.CaptureFixture) -> None:
    path = study / "compare.json"
    result = _result(study)
    lost = result["runs"].pop("msrn/gcn/seed1")  # as if killed before its record was written
    path.write_text(json.dumps(result))
    kept = study / "runs" / "gcn" / "baseline_seed0" / "best.pt"
    before = os.stat(kept).st_mtime_ns
    capsys.readouterr()
    assert cli([*ARGS, "--out", str(study)]) == 0
    assert "1 runs to train (3 already in" in capsys.readouterr().out
    assert os.stat(kept).st_mtime_ns == before
    assert _result(study)["runs"]["msrn/gcn/seed1"]["mAP"] == pytest.approx(lost["mAP"])


@pytest.mark.slow
def test_a_paper_recipe_that_is_another_recipe_reuses_its_run(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """MSRN's paper recipe is the gcn recipe: its paper column is the gcn run's result, trained once; the
    baseline has no paper and gets no column."""
    out = tmp_path / "study"
    shutil.copytree(study, out)
    capsys.readouterr()
    assert cli([*ARGS[:5], "gcn", "paper", *ARGS[6:], "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "msrn paper seed 0" in said and "from its gcn run, the same training" in said
    assert "no paper recipe for baseline: no paper column for them" in said
    runs = _result(out)["runs"]
    for seed in (0, 1):
        paper, gcn = runs[f"msrn/paper/seed{seed}"], runs[f"msrn/gcn/seed{seed}"]
        assert paper["same_as"] == "gcn" and paper["mAP"] == gcn["mAP"] and paper["recipe"] == "paper"
    assert "baseline/paper/seed0" not in runs and not (out / "runs" / "paper").exists()


@pytest.mark.slow
def test_a_study_on_a_user_s_labelled_files_runs_each_head_s_paper_recipe(
    tmp_path: Path, one_thread_per_module: None
) -> None:
    """`--dataset csv --data FILE` (a real data set's path, not generated scenes): the runs read that file, the
    paper column trains CSRA on its own recipe (its resized crop and warm-up), and no scenes slices appear."""
    csv = make_csv(tmp_path, n_train=24, n_test=8)
    out = tmp_path / "study"
    args = ["compare", "--dataset", "csv", "--data", str(csv), "--backbone", "tiny", "--heads", "baseline", "csra",
            "--recipes", "gcn", "paper", "--seeds", "0", "--epochs", "1", "--image-size", "64", "--batch-size", "8",
            "--pretrained", "none", "--workers", "0", "--timing-rounds", "1", "--out", str(out)]  # fmt: skip
    assert cli(args) == 0
    runs = _result(out)["runs"]
    assert sorted(runs) == ["baseline/gcn/seed0", "csra/gcn/seed0", "csra/paper/seed0"]
    assert all("slices" not in run for run in runs.values())
    paper = json.loads((out / "runs" / "paper" / "csra_seed0" / "config.json").read_text())
    gcn = json.loads((out / "runs" / "gcn" / "csra_seed0" / "config.json").read_text())
    assert (paper["augment"], paper["warmup_epochs"], paper["data"]) == ("resizedcrop", 2.0, str(csv))
    assert (gcn["augment"], gcn["warmup_epochs"], gcn["epochs"]) == ("multiscale", 0.0, paper["epochs"])


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_in_one_line(study: Path, capsys: pytest.CaptureFixture) -> None:
    args = [*ARGS, "--out", str(study)]
    args[args.index("--epochs") + 1] = "2"
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "holds a study with other settings" in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_head_is_named_with_the_heads_there_are(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["compare", "--heads", "nohead", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no registered model nohead_tiny" in err
    assert "msrn" in err


def test_recipes_differ_only_in_optimisation() -> None:
    preset = PRESETS["scenes"]
    gcn = preset_config("scenes", **recipe_overrides("gcn", "msrn_tiny", "scenes", preset))
    transformer = preset_config("scenes", **recipe_overrides("transformer", "msrn_tiny", "scenes", preset))
    changed = {k for k, v in gcn.to_dict().items() if transformer.to_dict()[k] != v}
    assert changed == {"optimizer", "schedule", "loss", "lr", "lr_backbone", "ema"}
    assert recipe_overrides("paper", "baseline_tiny", "scenes", preset) is None  # no paper, no column
    # a paper's drops follow the study's epochs; the built-in data keep their from-scratch length
    addgcn = recipe_overrides("paper", "addgcn_tiny", "scenes", preset, epochs=10)
    assert addgcn is not None and (addgcn["lr_steps"], addgcn["lr"]) == ((6, 8), preset["lr"] / 2)
    assert "epochs" not in addgcn


def test_label_cosine_of_identical_and_orthogonal_vectors() -> None:
    class Heads(torch.nn.Module):
        def __init__(self, vectors: torch.Tensor) -> None:
            super().__init__()
            self.vectors = vectors

        def label_representations(self) -> torch.Tensor:
            return self.vectors

    assert label_cosine(Heads(torch.ones(4, 3) * torch.tensor([[1.0], [2.0], [3.0], [4.0]]))) == pytest.approx(1.0)
    assert label_cosine(Heads(torch.eye(3))) == pytest.approx(0.0)
    assert label_cosine(torch.nn.Linear(2, 2)) is None  # exposes no label representations
    assert np.isfinite(label_cosine(create_model("msrn_tiny", num_classes=4)))
