"""`--recipe`: the GCN, transformer and papers' recipes laid over a preset and under the user's options; the
warm-up and the peers' augmentations the papers' recipes need."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from data_helpers import make_csv, tiny_train_args
from PIL import Image

from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli
from msrn.data.transforms import RAND_AUGMENT_OPS, RandAugmentTransform, ResizedCropTransform, cutout
from msrn.engine.config import preset_config
from msrn.engine.trainer import Trainer


def test_each_paper_recipe_on_coco_is_its_code_s_setting() -> None:
    def paper(model: str, **given: object) -> dict:
        return preset_config("coco2014", data="/coco", model=model, recipe="paper", **given).to_dict()

    addgcn = paper("addgcn_resnet101")  # main.py: 0.05 / 0.005, clip 10, x0.1 at 30 and 40 of 50
    assert (addgcn["lr"], addgcn["lr_backbone"], addgcn["max_grad_norm"]) == (0.05, 0.005, 10.0)
    assert (addgcn["epochs"], addgcn["lr_steps"], addgcn["optimizer"]) == (50, [30, 40], "sgd")
    csra = paper("csra_resnet101")  # x0.1 every 5 epochs of 30, 2 warm-up epochs, resized crop
    assert (csra["lr"], csra["lr_backbone"], csra["epochs"], csra["lr_steps"]) == (0.1, 0.01, 30, [5, 10, 15, 20, 25])
    assert (csra["warmup_epochs"], csra["augment"]) == (2.0, "resizedcrop")
    q2l = paper("q2l_resnet101")  # AdamW 1e-4, wd 1e-2, one-cycle, ASL (2, 0, no clip), EMA, RandAugment
    assert (q2l["optimizer"], q2l["schedule"], q2l["loss"], q2l["weight_decay"], q2l["ema"]) == (
        "adamw", "onecycle", "asl", 1e-2, 0.9997)  # fmt: skip
    assert (q2l["asl_gamma_neg"], q2l["asl_clip"], q2l["augment"], q2l["epochs"]) == (2.0, 0.0, "randaugment", 80)
    mldecoder = paper("mldecoder_resnet101")
    assert (mldecoder["asl_gamma_neg"], mldecoder["asl_clip"], mldecoder["epochs"]) == (4.0, 0.05, 40)
    # ML-GCN's and MSRN's papers' recipes are the preset itself
    preset = preset_config("coco2014", data="/coco", model="mlgcn_resnet101").to_dict()
    assert {k: v for k, v in paper("mlgcn_resnet101").items() if k != "recipe"} == {
        k: v for k, v in preset.items() if k != "recipe"
    }
    # the user's options win, and a paper's drops follow the epochs the user gives
    mine = paper("addgcn_resnet101", epochs=20, lr=0.2)
    assert (mine["epochs"], mine["lr_steps"], mine["lr"], mine["lr_backbone"]) == (20, [12, 16], 0.2, 0.005)


def test_the_family_recipes_change_only_the_optimisation_and_keep_the_user_s_values() -> None:
    gcn = preset_config("voc2007", data="/voc", model="q2l_resnet101", recipe="gcn").to_dict()
    plain = preset_config("voc2007", data="/voc", model="q2l_resnet101").to_dict()
    assert {k for k in gcn if gcn[k] != plain[k]} == {"recipe"}
    transformer = preset_config("voc2007", data="/voc", model="msrn_resnet101", recipe="transformer", lr=3e-4)
    assert (transformer.optimizer, transformer.loss, transformer.lr, transformer.lr_backbone) == (
        "adamw", "asl", 3e-4, 1e-4)  # fmt: skip


def test_a_paper_recipe_a_head_does_not_have_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = cli(["train", "--dataset", "scenes", "--model", "baseline_tiny", "--recipe", "paper",
                  "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "baseline_tiny" in err[0] and "paper" in err[0]
    assert not (tmp_path / "run").exists()


def test_warm_up_scales_one_step_s_rates_and_restores_the_schedule_s() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 0.4}, {"params": [], "lr": 0.04}])
    trainer = SimpleNamespace(optimizer=optimizer, global_step=1, warmup_steps=4)
    assert Trainer.warm_up(trainer) == [0.4, 0.04]  # type: ignore[arg-type]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.02])  # step 2 of 4
    trainer.global_step = 4
    for group, lr in zip(optimizer.param_groups, [0.4, 0.04]):
        group["lr"] = lr
    Trainer.warm_up(trainer)  # type: ignore[arg-type]
    assert [g["lr"] for g in optimizer.param_groups] == [0.4, 0.04]  # warmed up: untouched


@pytest.mark.slow
def test_a_warmed_up_first_step_is_the_plain_step_at_a_fraction_of_the_rate(
    tmp_path: Path, one_thread_per_module: None
) -> None:
    """One optimiser step (SGD: the update is linear in the rate) under a 4-step warm-up lands where a plain
    step at a quarter of the rates does, and last.pt keeps the scheduled rate, not the warmed-up one."""
    csv = make_csv(tmp_path, n_train=8, n_test=4)

    def one_step(name: str, *extra: str) -> dict:
        args = tiny_train_args(csv, tmp_path / name, "--val-fraction", "0", *extra, batch_size=8, epochs=1)
        assert cli(args) == 0
        return read_checkpoint(tmp_path / name / "last.pt")

    warm = one_step("warm", "--warmup-epochs", "4", "--lr", "0.08", "--lr-backbone", "0.04")
    plain = one_step("plain", "--lr", "0.02", "--lr-backbone", "0.01")
    assert warm["global_step"] == plain["global_step"] == 1
    for key, value in warm["state_dict"].items():
        torch.testing.assert_close(value, plain["state_dict"][key], msg=key)
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["warmup_epochs"] == 4.0
    assert warm["optimizer"]["param_groups"][0]["lr"] in (0.08, 0.04)


def _photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_resized_crops_keep_csra_s_area_and_aspect_bounds() -> None:
    random.seed(0)
    transform = ResizedCropTransform(32)
    for _ in range(300):
        left, top, right, bottom = transform.box(200, 120)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 200 and 0 <= top and bottom <= 120
        assert 0.69 <= w * h / (200 * 120) <= 1.0 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # a strip no crop of that area and ratio fits: the centred crop of the nearest allowed ratio
    assert transform.box(400, 10) == (193, 0, 206, 10)
    assert transform(_photo()).shape == (3, 32, 32)


def test_cutout_fills_one_box_of_half_the_sides_with_one_colour() -> None:
    random.seed(3)
    img = cutout(Image.new("RGB", (40, 30)), 0.5)
    changed = np.argwhere(np.asarray(img).any(axis=2))
    assert len(changed) > 0
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert x1 - x0 + 1 <= 21 and y1 - y0 + 1 <= 16  # half of each side, plus the rectangle's closed edge
    assert len(changed) == (x1 - x0 + 1) * (y1 - y0 + 1)  # a filled box
    assert len({tuple(p) for p in np.asarray(img)[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3)}) == 1


@pytest.mark.parametrize("name", sorted(set(RAND_AUGMENT_OPS) - {"autocontrast", "equalize"}))
def test_every_rand_augment_op_is_the_identity_at_strength_0_and_changes_the_image_at_full(name: str) -> None:
    photo = _photo()
    random.seed(0)
    assert np.array_equal(np.asarray(RAND_AUGMENT_OPS[name](photo.copy(), 0.0)), np.asarray(photo))
    if name != "identity":
        assert not np.array_equal(np.asarray(RAND_AUGMENT_OPS[name](photo.copy(), 1.0)), np.asarray(photo))


def test_rand_augment_is_reproducible_from_the_seed_and_varies_across_draws() -> None:
    transform = RandAugmentTransform(48)
    random.seed(5)
    first = transform(_photo())
    random.seed(5)
    assert torch.equal(transform(_photo()), first) and first.shape == (3, 48, 48)
    assert not torch.equal(transform(_photo()), first)
