"""The training recipes `msrn compare` runs every head under, as TrainConfig overrides on the dataset's preset.

No head is judged only on its rivals' recipe: each runs under the GCN family's (MSRN, ML-GCN: SGD with
momentum, soft margin, i.e. binary cross-entropy, the rate dropped at fixed epochs: the dataset preset, which
is MSRN's) and under the transformer family's (Query2Label, ML-Decoder, ASL: AdamW, one-cycle, Asymmetric
Loss, an exponential moving average of the weights). `paper` runs each head on its own paper's recipe, where
PAPER_RECIPES names one. Every recipe keeps the study's epochs, batch, image size and validation split, so only the
optimisation differs.
"""

from __future__ import annotations

from typing import Any

from msrn.errors import MSRNError

RECIPES = ("gcn", "transformer", "paper")
RECIPE_NOTES = {
    "gcn": "SGD momentum 0.9, soft margin (BCE), step schedule: the dataset preset (MSRN's)",
    "transformer": "AdamW, one-cycle, ASL (4, 0, 0.05), weight EMA",
    "paper": "each head's own paper's recipe",
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
# head -> the recipe of its own paper (a recipe name, or overrides on the preset); heads without an entry get
# no `paper` column. MSRN's paper recipe is the dataset preset.
PAPER_RECIPES: dict[str, str | dict[str, Any]] = {"msrn": "gcn"}


def recipe_overrides(recipe: str, head: str, dataset: str) -> dict[str, Any] | None:
    """The TrainConfig overrides of `recipe` for `head` on `dataset`; None where the head has no such recipe
    (a `paper` recipe its paper does not give)."""
    if recipe == "paper":
        own = PAPER_RECIPES.get(head)
        if own is None:
            return None
        return recipe_overrides(own, head, dataset) if isinstance(own, str) else dict(GCN, **own)
    if recipe == "gcn":
        return dict(GCN)
    if recipe == "transformer":
        return dict(TRANSFORMER, **(FROM_SCRATCH if dataset in BUILT_IN else {}))
    raise MSRNError(f"unknown recipe {recipe!r}; choose among {', '.join(RECIPES)}")
