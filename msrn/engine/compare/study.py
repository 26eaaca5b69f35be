"""The study of `msrn compare`: every (head, recipe, seed) run trained and evaluated alike, its results kept in
one JSON file that a rerun continues.

Runs differ only in the head and the recipe: the same data (for `scenes`, generated from the seed as `msrn demo
--seed` does), the same backbone initialisation per seed (the preset's pretrained weights, or one seeded
from-scratch draw saved once and given to every head), the same seed for order and augmentation, and epochs
selected on a validation split carved from training, never on the test split. A run's record enters
compare.json (written atomically) when it is finished; an interrupted run continues from its own last.pt.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from msrn import distributed as dist
from msrn.checkpoint import read_checkpoint
from msrn.data import DEFAULT_SPLITS, build_dataset, ensure_scenes, reader_options
from msrn.data.scenes import scenes_metrics
from msrn.engine.compare.cost import (
    BareBackbone,
    flops_per_image,
    head_parameters,
    label_cosine,
    relative_cost,
    time_per_image,
)
from msrn.engine.config import PRESETS, TrainConfig, preset_config
from msrn.engine.evaluate import predict_logits
from msrn.engine.recipes import RECIPES, recipe_overrides
from msrn.engine.train import train
from msrn.errors import MSRNError
from msrn.io import atomic_save_torch, atomic_write_json
from msrn.models import ResNet, create_model, list_models, load_checkpoint

VERSION = 1
RESULT = "compare.json"
METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")
# options that change where and how fast a run trains, not its results: a rerun may change them
WHERE_IT_RUNS = ("device", "workers")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a study trains: the settings every run shares (a rerun must keep them) and the runs' axes."""

    out: Path
    dataset: str
    backbone: str  # the registered names' suffix: msrn_tiny, baseline_tiny... for "tiny"
    heads: tuple[str, ...]
    recipes: tuple[str, ...]
    seeds: tuple[int, ...]
    data: str | None = None  # the data folder; scenes: generated under out/data per seed
    scenes_size: tuple[int, int, int] = (2000, 600, 128)  # training images, test images, side
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig overrides of every run
    timing_rounds: int = 3

    def model(self, head: str) -> str:
        return f"{head}_{self.backbone}"

    def settings(self) -> dict[str, Any]:
        """Everything a finished run depends on besides its head, recipe and seed: a rerun must match it."""
        return {
            "dataset": self.dataset,
            "data": self.data,
            "backbone": self.backbone,
            "scenes_size": list(self.scenes_size) if self.dataset == "scenes" else None,
            "train": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in sorted(self.train.items())
                if k not in WHERE_IT_RUNS
            },
        }


def heads_for(backbone: str) -> list[str]:
    """Every registered head with a model on `backbone` (name = HEAD_BACKBONE)."""
    suffix = f"_{backbone}"
    return sorted(name[: -len(suffix)] for name in list_models() if name.endswith(suffix))


def check_heads(plan: Plan) -> None:
    known = set(list_models())
    missing = [plan.model(h) for h in plan.heads if plan.model(h) not in known]
    if missing:
        found = ", ".join(heads_for(plan.backbone)) or "none"
        raise MSRNError(f"no registered model {', '.join(missing)}; heads on backbone {plan.backbone!r}: {found}")


def read_result(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The study's compare.json, or a new one; one line when it holds a study with other settings."""
    if not path.is_file():
        return {"version": VERSION, "settings": settings, "runs": {}, "costs": {}}
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MSRNError(f"{path}: not a readable compare.json ({e}); move it away or use another --out") from None
    if result.get("version") != VERSION or "runs" not in result:
        raise MSRNError(f"{path} is not a compare.json of this msrn (version {VERSION}); use another --out")
    if result.get("settings") != settings:
        raise MSRNError(
            f"{path} holds a study with other settings ({_diff(result.get('settings') or {}, settings)}); "
            "rerun with its settings to continue it, or use another --out"
        )
    return result


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)} there, {new.get(k)} now" for k in keys)


def run_key(head: str, recipe: str, seed: int) -> str:
    return f"{head}/{recipe}/seed{seed}"


def data_folder(plan: Plan, seed: int) -> str:
    """The data of seed `seed`: the given folder, or the scenes generated with that seed."""
    if plan.dataset != "scenes":
        return plan.data or ""
    train_n, test_n, side = plan.scenes_size
    root = plan.out / "data" / f"seed{seed}"
    return str(ensure_scenes(root, seed=seed, num_train=train_n, num_test=test_n, image_size=side))


def backbone_init(plan: Plan, arch: str | None, seed: int) -> str | None:
    """The backbone weights every head of seed `seed` starts from: the preset's or the study's pretrained
    weights, else one from-scratch draw of torch's seed `seed`, saved once under out/init and loaded by all."""
    given = plan.train.get("pretrained", PRESETS[plan.dataset].get("pretrained"))
    if given is not None and str(given).lower() != "none":
        return str(given)
    if arch is None:
        raise MSRNError(f"backbone {plan.backbone!r} cannot be drawn once for every head; give --pretrained")
    path = plan.out / "init" / f"{arch}_seed{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_torch(ResNet(arch).state_dict(), path)
    return str(path)


def run_config(plan: Plan, head: str, recipe: str, seed: int, arch: str | None) -> TrainConfig | None:
    """The TrainConfig of one run (None where the head has no such recipe); resumes the run's own last.pt."""
    preset = PRESETS[plan.dataset]
    overrides = recipe_overrides(recipe, plan.model(head), plan.dataset, preset, plan.train.get("epochs"))
    if overrides is None:
        return None
    values = {**overrides, **plan.train}
    if "epochs" in plan.train and "lr_steps" not in values:  # the preset's drops, at the same fractions
        values["lr_steps"] = tuple(
            max(1, round(s * plan.train["epochs"] / preset["epochs"])) for s in preset.get("lr_steps", (20,))
        )
    values.update(
        data=data_folder(plan, seed),
        out=str(plan.out / "runs" / recipe / f"{head}_seed{seed}"),
        model=plan.model(head),
        seed=seed,
        pretrained=backbone_init(plan, arch, seed),
        resume="auto",
    )
    return preset_config(plan.dataset, **values)


def evaluate(cfg: TrainConfig) -> dict[str, Any]:
    """A finished run's record: the selected epoch's test metrics, validation mAP, slices and label cosine."""
    folder = Path(cfg.out)
    metrics = json.loads((folder / "metrics.json").read_text())
    state = read_checkpoint(folder / "best.pt")
    model = load_checkpoint(state, where=str(folder / "best.pt")).model
    record: dict[str, Any] = {k: metrics.get(k) for k in METRICS}
    best = state.get("best") or {}
    record.update(
        epoch=metrics["epoch"],
        selected_by=metrics["selected_by"],
        val_mAP=best.get("score") if best.get("selected_by") == "validation mAP" else None,
        weights=metrics.get("weights", "live"),
        label_cosine=label_cosine(model),
    )
    if cfg.dataset == "scenes":
        test = build_dataset("scenes", cfg.data, cfg.test_split or DEFAULT_SPLITS["scenes"][1], **reader_options(cfg))
        device = dist.setup(cfg.device)
        logits = predict_logits(model.to(device), test, cfg.image_size, cfg.batch_size, cfg.workers, device, cfg.amp)
        record["slices"] = scenes_metrics(logits, test)
    return record


def measure_costs(plan: Plan, num_classes: int, batch: int, image_size: int, device: torch.device) -> dict:
    """Per head: head weights, FLOPs per image, training and inference time per image as multiples of the bare
    backbone measured in the same interleaved rounds; and the backbone's own figures."""
    models = {h: create_model(plan.model(h), num_classes=num_classes) for h in plan.heads}
    arch = getattr(next(iter(models.values())).backbone, "arch", None)
    if arch is None:
        raise MSRNError(f"backbone {plan.backbone!r} is not a msrn ResNet: its bare cost is not measured")
    timed = {"backbone": BareBackbone(arch), **models}
    times = time_per_image(timed, image_size, batch, device, rounds=plan.timing_rounds)
    backbone_flops = flops_per_image(timed["backbone"], image_size)
    costs: dict[str, Any] = {
        "backbone": {
            "arch": arch,
            "params": sum(p.numel() for p in timed["backbone"].parameters()),
            "flops": backbone_flops,
            **{m: {"ms_per_image": round(1000 * min(times["backbone"][m]), 3)} for m in ("train", "infer")},
        },
        "measured": {"device": str(device), "batch": batch, "image_size": image_size, "rounds": plan.timing_rounds},
    }
    for head, model in models.items():
        flops = flops_per_image(model, image_size)
        costs[head] = {
            "model": plan.model(head),
            "head_params": head_parameters(model),
            "params": sum(p.numel() for p in model.parameters()),
            "flops": flops,
            "head_flops": flops - backbone_flops,
            **relative_cost(times, head, "backbone"),
        }
    return costs


def same_run(
    result: dict, plan: Plan, head: str, recipe: str, seed: int, cfg: TrainConfig, arch: str | None
) -> str | None:
    """The recipe of a finished run of this head and seed whose training is this one's (all but the folder)."""
    mine = {**cfg.to_dict(), "out": None}
    for other in RECIPES:
        if other != recipe and run_key(head, other, seed) in result["runs"]:
            theirs = run_config(plan, head, other, seed, arch)
            if theirs is not None and {**theirs.to_dict(), "out": None} == mine:
                return other
    return None


def run_study(
    plan: Plan, progress: Callable[[str], None] = print, on_update: Callable[[dict], None] | None = None
) -> dict:
    """Train and evaluate every run compare.json does not hold yet; returns the study's result."""
    check_heads(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / RESULT
    result = read_result(path, plan.settings())
    preset = PRESETS[plan.dataset]
    missing = [  # (head, recipe) pairs with no such recipe: a head without a paper
        (h, r)
        for r in plan.recipes
        for h in plan.heads
        if recipe_overrides(r, plan.model(h), plan.dataset, preset) is None
    ]
    todo = [
        (h, r, s)
        for r in plan.recipes
        for s in plan.seeds
        for h in plan.heads
        if run_key(h, r, s) not in result["runs"] and (h, r) not in missing
    ]
    first = preset_config(
        plan.dataset, **{**plan.train, "data": data_folder(plan, plan.seeds[0]), "model": plan.model(plan.heads[0])}
    )
    labels = build_dataset(
        first.dataset, first.data, first.train_split or DEFAULT_SPLITS[first.dataset][0], **reader_options(first)
    ).labels
    device = dist.setup(first.device)
    progress(
        f"costs: {len(plan.heads)} heads beside the bare backbone, {plan.timing_rounds} interleaved rounds on {device}"
    )
    result["costs"] = measure_costs(plan, len(labels), min(first.batch_size, 16), first.image_size, device)
    atomic_write_json(path, result)
    if on_update:
        on_update(result)
    arch = result["costs"]["backbone"]["arch"]
    skipped = (len(plan.heads) * len(plan.recipes) - len(missing)) * len(plan.seeds) - len(todo)
    for recipe in plan.recipes:
        if without := [h for h, r in missing if r == recipe]:
            progress(f"no {recipe} recipe for {', '.join(without)}: no {recipe} column for them")
    progress(f"{len(todo)} runs to train ({skipped} already in {path})")
    started = time.time()
    for i, (head, recipe, seed) in enumerate(todo, 1):
        cfg = run_config(plan, head, recipe, seed, arch)
        assert cfg is not None  # heads without this recipe are left out of `todo`
        twin = same_run(result, plan, head, recipe, seed, cfg, arch)
        if twin is not None:  # e.g. ML-GCN's paper recipe is the gcn recipe: one training, two columns
            record = dict(result["runs"][run_key(head, twin, seed)], recipe=recipe, same_as=twin)
        else:
            t0 = time.time()
            train(cfg)
            record = {"head": head, "model": cfg.model, "recipe": recipe, "seed": seed, **evaluate(cfg)}
            record["seconds"] = round(time.time() - t0, 1)
        result["runs"][run_key(head, recipe, seed)] = record
        atomic_write_json(path, result)
        if on_update:
            on_update(result)
        left = (time.time() - started) / i * (len(todo) - i)
        progress(
            f"[{i}/{len(todo)}] {head} {recipe} seed {seed}: test mAP {record['mAP']:.2f} (epoch {record['epoch']}, "
            f"{record['selected_by']}) "
            + (f"from its {twin} run, the same training" if twin else f"in {record['seconds']:.0f} s")
            + f"; about {left / 60:.0f} min left"
        )
    return result
