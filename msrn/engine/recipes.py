"""Training recipes: named sets of TrainConfig values laid over a dataset's preset and under the user's own
options, so that every head trains under the GCN family's recipe, the transformer family's, or its own paper's
(`msrn train --recipe`, `msrn compare --recipes`).

`gcn` is the GCN heads' (MSRN, ML-GCN): SGD with momentum, soft margin (binary cross-entropy), the rate dropped
at fixed epochs: the dataset preset, which is MSRN's. `transformer` is Query2Label's, ML-Decoder's and ASL's:
AdamW, one-cycle, Asymmetric Loss, an exponential moving average of the weights. `paper` is the head's own
paper's code's recipe (docs/heads.md gives each one's source and what msrn cannot follow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msrn.errors import MSRNError

RECIPES = ("gcn", "transformer", "paper")
RECIPE_NOTES = {
    "gcn": "SGD momentum 0.9, soft margin (BCE), step schedule: the dataset preset (MSRN's)",
    "transformer": "AdamW, one-cycle, ASL (4, 0, 0.05), weight EMA",
    "paper": "each head's own paper's recipe (docs/heads.md)",
}
GCN: dict[str, Any] = dict(optimizer="sgd", schedule="step", loss="softmargin", ema=None)
# ASL's and ML-Decoder's train.py (lr 1e-4, weight decay 1e-4, EMA 0.9997) on ImageNet-initialised backbones
TRANSFORMER: dict[str, Any] = dict(
    optimizer="adamw", schedule="onecycle", loss="asl", lr=1e-4, lr_backbone=1e-4, weight_decay=1e-4, ema=0.9997
)
# the built-in data sets train a tiny backbone from scratch for about a thousand steps: Adam's usual rate, and
# an average over about a hundred steps (0.9997 would still hold the first weights at the end of the run)
FROM_SCRATCH: dict[str, Any] = dict(lr=1e-3, lr_backbone=1e-3, ema=0.99)
BUILT_IN = ("scenes", "synthetic")


@dataclass(frozen=True)
class PaperRecipe:
    """A head's own paper's recipe, stated so that it carries over to any data set and run length.

    base: the family recipe it starts from; values: TrainConfig values set outright; lr_scale: the SGD rates
    as a multiple of the preset's (the papers' rates, like the presets', are for ImageNet-initialised
    ResNet-101s at batch 16); drops: the rate drops as fractions of the epochs; epochs: the paper's run length
    on real data (the built-in data sets keep their preset's).
    """

    base: str
    values: dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0
    drops: tuple[float, ...] | None = None
    epochs: int | None = None


PAPER_RECIPES: dict[str, PaperRecipe] = {
    # the preset is MSRN's paper's recipe
    "msrn": PaperRecipe("gcn"),
    # demo_coco_gcn.py: the preset's rates, SGD, soft margin; its step at epoch 30 of 20 never comes
    "mlgcn": PaperRecipe("gcn"),
    # main.py: backbone 0.01 and classifier 0.1 (the preset's), 2 warm-up epochs, x0.1 every 5 of 30 epochs
    # (COCO; VOC every 4), RandomResizedCrop (0.7-1) and flip
    "csra": PaperRecipe(
        "gcn", dict(warmup_epochs=2.0, augment="resizedcrop"), drops=(1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6), epochs=30
    ),
    # main.py, trainer.py: head 0.05 and backbone 0.005 (half the preset's), clip 10, x0.1 at 30 and 40 of 50
    "addgcn": PaperRecipe("gcn", dict(max_grad_norm=10.0), lr_scale=0.5, drops=(0.6, 0.8), epochs=50),
    # main_mlc.py: AdamW 1e-4, weight decay 1e-2, one-cycle, ASL (2, 0, no clip), EMA 0.9997, Cutout and
    # RandAugment, 80 epochs
    "q2l": PaperRecipe(
        "transformer",
        dict(asl_gamma_neg=2.0, asl_gamma_pos=0.0, asl_clip=0.0, weight_decay=1e-2, augment="randaugment"),
        epochs=80,
    ),
    # train.py: the transformer recipe with Cutout and RandAugment, 40 epochs
    "mldecoder": PaperRecipe("transformer", dict(augment="randaugment"), epochs=40),
}


def head_of(model: str) -> str:
    """The head family of a registered model name: csra_resnet101 -> csra, baseline_max_tiny -> baseline_max."""
    return model.rsplit("_", 1)[0]


def recipe_overrides(
    recipe: str, model: str, dataset: str, preset: dict[str, Any], epochs: int | None = None
) -> dict[str, Any] | None:
    """The TrainConfig values `recipe` sets for `model` on `dataset` over its `preset`; None where the head's
    paper gives no recipe. epochs: the run's length where the user fixed it (a paper's drops follow it)."""
    if recipe == "gcn":
        return dict(GCN)
    if recipe == "transformer":
        return dict(TRANSFORMER, **(FROM_SCRATCH if dataset in BUILT_IN else {}))
    if recipe != "paper":
        raise MSRNError(f"unknown recipe {recipe!r}; choose among {', '.join(RECIPES)}")
    own = PAPER_RECIPES.get(head_of(model))
    if own is None:
        return None
    values = recipe_overrides(own.base, model, dataset, preset) or {}
    if own.lr_scale != 1.0:
        values.update(lr=preset["lr"] * own.lr_scale, lr_backbone=preset["lr_backbone"] * own.lr_scale)
    if own.epochs is not None and dataset not in BUILT_IN:
        values["epochs"] = own.epochs
    if own.drops is not None:
        length = epochs or values.get("epochs") or preset["epochs"]
        values["lr_steps"] = tuple(sorted({max(1, round(f * length)) for f in own.drops}))
    return {**values, **own.values}
