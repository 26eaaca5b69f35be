"""The model card (README.md) of a model folder: YAML front matter in the Hugging Face Hub's convention,
then the test figures of the run (metrics.json), the labels, a usage snippet, the recipe and the limits.

The front matter is written as JSON scalars inside YAML (YAML is a superset of JSON), so any label or
dataset name is quoted correctly without a YAML library. Long tables are cut to their top and bottom rows:
a card must stay readable for thousands of labels (config.json keeps them all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PAPER = "2106.11596"
TAGS = ("multi-label-classification", "msrn", "image-classification", f"arxiv:{PAPER}")
LICENSE_PLACEHOLDER = "other"
SHOWN_ROWS = 10  # rows kept at each end of a long per-label table
CARD_LABELS = 200  # names listed in the card; config.json holds every label
# the training settings the recipe names first; the whole training config is in config.json
RECIPE_KEYS = (
    "dataset",
    "model",
    "backbone",
    "pretrained",
    "init",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "lr_backbone",
    "lr_steps",
    "lr_gamma",
    "weight_decay",
    "loss",
    "word_vectors",
    "cooccurrence",
    "tau",
    "pool_ratio",
    "ema",
    "val_fraction",
    "tune_thresholds",
    "amp",
    "seed",
)


def _q(value: Any) -> str:
    """A YAML scalar: the JSON spelling of value (quoted strings, plain numbers)."""
    return json.dumps(value, ensure_ascii=False)


def _fig(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"


def front_matter(config: dict, metrics: dict | None, name: str, license_id: str | None) -> str:
    """The YAML block between `---` lines that the Hub reads: library, tags, paper, license, dataset, results."""
    training = config.get("training") or {}
    dataset = training.get("dataset") or config.get("dataset")
    lines = ["---", "library_name: msrn"]
    if license_id:
        lines.append(f"license: {_q(license_id)}")
    else:
        lines.append(
            f"license: {LICENSE_PLACEHOLDER}  # placeholder: replace with your weights' license, an id from "
            "https://hf.co/docs/hub/repositories-licenses (e.g. apache-2.0)"
        )
    lines += ["pipeline_tag: image-classification", "tags:"] + [f"- {_q(t)}" for t in TAGS]
    if dataset:
        lines += ["datasets:", f"- {_q(dataset)}"]
    if metrics and metrics.get("mAP") is not None:
        lines += [
            "model-index:",
            f"- name: {_q(name)}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "      name: Multi-label image classification",
            "    dataset:",
            f"      type: {_q(dataset or 'unknown')}",
            f"      name: {_q(dataset or 'unknown')}",
            f"      split: {_q(metrics.get('split') or 'test')}",
            "    metrics:",
        ]
        for key, label in (("mAP", "mAP"), ("CF1", "CF1 at 0.5"), ("OF1", "OF1 at 0.5")):
            if metrics.get(key) is not None:
                lines += [
                    f"    - type: {_q(key)}",
                    f"      value: {round(float(metrics[key]), 2)}",
                    f"      name: {_q(label)}",
                ]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A label name safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def ap_table(metrics: dict) -> list[str]:
    """Per-label AP, best first; with more than 2 x SHOWN_ROWS labels, the top and bottom rows only."""
    ap = metrics.get("ap_by_label") or {}
    rows = sorted(((name, v) for name, v in ap.items() if v is not None), key=lambda r: -r[1])
    absent = [name for name, v in ap.items() if v is None]
    lines = ["| rank | label | AP |", "|---:|---|---:|"]
    shown: list[tuple[int, tuple[str, float]] | None]  # None: the gap between the best and the worst rows
    if len(rows) <= 2 * SHOWN_ROWS:
        shown = list(enumerate(rows, 1))
    else:
        shown = (
            list(enumerate(rows[:SHOWN_ROWS], 1))
            + [None]
            + list(enumerate(rows[-SHOWN_ROWS:], len(rows) - SHOWN_ROWS + 1))
        )
    for item in shown:
        if item is None:
            lines.append(f"| ... | *{len(rows) - 2 * SHOWN_ROWS} labels between* | |")
            continue
        rank, (name, value) = item
        lines.append(f"| {rank} | {_cell(name)} | {value:.2f} |")
    if absent:
        lines += [
            "",
            f"{len(absent)} {'label has' if len(absent) == 1 else 'labels have'} no positive test image "
            "and no AP: "
            f"{', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}.",
        ]
    return lines


def metrics_section(metrics: dict | None) -> list[str]:
    if not metrics:
        return [
            "## Results",
            "",
            "No test figures came with this model (no metrics.json from its training run). Measure them with "
            "`msrn evaluate --checkpoint <this folder> --dataset ... --data ...`.",
            "",
        ]
    split = metrics.get("split") or "test"
    lines = [
        "## Results",
        "",
        f"On the {split} split of {metrics.get('dataset', 'its dataset')} "
        f"({metrics.get('num_images', '?')} images), epoch {metrics.get('epoch', '?')}"
        + (f" (chosen as: {metrics['selected_by']})" if metrics.get("selected_by") else "")
        + ":",
        "",
        "| mAP | CP | CR | CF1 | OP | OR | OF1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(_fig(metrics.get(k)) for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")) + " |",
        "",
        "CP to OF1 count a label as predicted at probability 0.5.",
    ]
    tuned = metrics.get("per_label_thresholds")
    if tuned:
        lines += [
            "At the per-label thresholds tuned on the validation split (stored in config.json and used by "
            "`msrn.load`): CF1 " + _fig(tuned.get("CF1")) + ", OF1 " + _fig(tuned.get("OF1")) + "."
        ]
    lines += ["", "### AP per label", "", *ap_table(metrics), ""]
    return lines


def labels_section(labels: list[str]) -> list[str]:
    shown = ", ".join(f"`{name}`" for name in labels[:CARD_LABELS])
    more = f", ... ({len(labels) - CARD_LABELS} more: `labels` in config.json)" if len(labels) > CARD_LABELS else ""
    return ["## Labels", "", f"{len(labels)} labels, in output order:", "", shown + more, ""]


def usage_snippet(model_id: str) -> str:
    """Python that loads the model and tags an image (the card's usage section; tests run it)."""
    return (
        "import msrn\n\n"
        f"model = msrn.load({model_id!r})\n"
        'for record in model.predict(["photo.jpg"]):\n'
        '    print(record["image"], [(t["label"], round(t["score"], 3)) for t in record["labels"]])\n'
    )


def recipe_section(config: dict) -> list[str]:
    training = config.get("training")
    arch = config["architecture"]
    kind = {
        "msrn": "MSRN",
        "head": f"the {arch.get('head')} head (docs/heads.md)",
    }.get(arch["kind"], "a baseline (backbone and a linear or MLP head, no MSRN head)")
    backbone = (arch.get("config") or {}).get("backbone") or arch.get("backbone")
    lines = [
        "## Recipe",
        "",
        f"{kind} on a {backbone} backbone, input {config['image_size']} x {config['image_size']} pixels, "
        f"ImageNet normalisation, {'EXIF-upright' if config.get('exif_orientation', True) else 'as-stored'} "
        f"decoding; written by msrn {config.get('msrn_version', '?')}.",
    ]
    if not training:
        lines += [
            "",
            "No training configuration came with these weights (a converted checkpoint, e.g. one of "
            "the reference's published models).",
            "",
        ]
        return lines
    rows = [
        (k, training[k])
        for k in RECIPE_KEYS
        if training.get(k) is not None and training[k] is not False and training[k] != ""
    ]
    if "pretrained" in training and training["pretrained"] is None and not training.get("init"):
        rows.insert(3, ("pretrained", "none (the backbone trained from scratch)"))
    lines += ["", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(json.dumps(v) if not isinstance(v, str) else v)} |" for k, v in rows]
    lines += [
        "",
        "Every setting of the run is in config.json (`training`); `msrn train` takes each as an option "
        "(`--lr`, `--epochs` ...).",
        "",
    ]
    return lines


def limits_section(config: dict, metrics: dict | None) -> list[str]:
    dataset = (config.get("training") or {}).get("dataset") or "its training data"
    lines = [
        "## Known limits",
        "",
        f"- It names only its {len(config['labels'])} labels and knows only what {dataset} showed it; images "
        "unlike that data get confident but unfounded scores.",
        f"- It sees every image squashed to {config['image_size']} x {config['image_size']} pixels: small "
        "objects may be lost.",
        "- Scores are per-label sigmoid probabilities, not calibrated across labels.",
        (
            "- Its thresholds were tuned on a validation split carved from training; another image source may "
            "need others (`threshold=` in `msrn.load`)."
            if config.get("thresholds") is not None
            else "- A label is predicted at probability 0.5 unless you pass thresholds (`threshold=` in `msrn.load`)."
        ),
        "- Biases of the training images (who and what they show, where) carry over into its predictions.",
    ]
    if not metrics:
        lines.append("- No test figures were recorded with it: measure it on your data before relying on it.")
    return lines + [""]


def render(
    config: dict, metrics: dict | None = None, model_id: str = "hf://OWNER/NAME", license_id: str | None = None
) -> str:
    """The whole README.md for a model folder whose config.json is `config`; model_id is what the snippet loads."""
    name = model_id.removeprefix("hf://") if model_id.startswith("hf://") else (Path(model_id).name or model_id)
    arch = config["architecture"]
    what = {"msrn": "An MSRN", "head": f"A {arch.get('head')}"}.get(arch["kind"], "A baseline")
    lines = [
        f"# {name}",
        "",
        f"{what} multi-label image classifier with {len(config['labels'])} labels, trained with "
        "msrn: MSRN is the Multi-layered Semantic Representation Network of "
        f"Qu et al. ([arXiv:{PAPER}](https://arxiv.org/abs/{PAPER})).",
        "",
        "The folder holds `model.safetensors` (weights, with the label vectors and label graph as the `word_vectors` "
        "and `adjacency` tensors), `config.json` (architecture, labels, input size, normalisation, thresholds, "
        "training config) and this card. Loading runs no code from it.",
        "",
        *metrics_section(metrics),
        "## Usage",
        "",
        "`pip install 'msrn[hub]'`, then:",
        "",
        "```python",
        usage_snippet(model_id).rstrip("\n"),
        "```",
        "",
        f"or from a shell: `msrn predict --checkpoint {model_id} photo.jpg`.",
        "",
        *labels_section(config["labels"]),
        *recipe_section(config),
        *limits_section(config, metrics),
    ]
    return front_matter(config, metrics, name, license_id) + "\n" + "\n".join(lines)
