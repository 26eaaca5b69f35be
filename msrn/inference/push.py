"""A checkpoint as a model folder with its card (`msrn export --format hub`), and `msrn push`: that folder
uploaded to the Hugging Face Hub.

The folder is msrn.hub's (model.safetensors, config.json) plus README.md from msrn.inference.card, with the
test figures of the run's metrics.json. Push refuses to replace a card on the Hub that belongs to another
model (other weights, or a card msrn did not write) unless --force says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msrn import __version__
from msrn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from msrn.errors import MSRNError
from msrn.hub import CARD, CONFIG, WEIGHTS, is_hub_id, read_source, write_folder
from msrn.inference.args import read_label_names
from msrn.inference.card import render
from msrn.io import atomic_write_text
from msrn.models import load_checkpoint, model_state
from msrn.options import (
    CheckpointOptions,
    add_options,
    checkpoint_option,
    option,
)

_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# how pixels become the network's input (TestTransform), for consumers other than msrn (config.json, ONNX metadata)
INPUT = "RGB, bilinear resize to image_size x image_size, /255, minus mean, over std; NCHW float32"
NORMALIZATION = {
    "mean": [round(float(v), 6) for v in IMAGENET_MEAN],
    "std": [round(float(v), 6) for v in IMAGENET_STD],
    "input": INPUT,
}


def read_metrics(path: str | os.PathLike) -> dict:
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MSRNError(f"cannot read test figures from {path}: {e}") from None
    if not isinstance(metrics, dict):
        raise MSRNError(f"{path} is not a metrics.json (expected a JSON object)")
    return metrics


def run_metrics(source: Any, ckpt: dict, labels: list[str], given: str | os.PathLike | None) -> tuple[dict | None, str]:
    """The test figures for the card and a note on where they came from.

    `given` (a metrics.json) must describe this model: its labels, and its epoch where both record one. Without
    it, the metrics.json beside a checkpoint file is taken when it fits (a run folder's, for best.pt), else none.
    """
    if given is None:
        if isinstance(source, dict) or is_hub_id(source) or Path(source).is_dir():
            return None, "no metrics.json given: the card shows no test figures"
        beside = Path(source).parent / "metrics.json"
        if not beside.is_file():
            return None, f"no {beside}: the card shows no test figures"
        path: Path = beside
    else:
        path = Path(given)
    metrics = read_metrics(path)
    problem = None
    if metrics.get("labels") is not None and list(metrics["labels"]) != labels:
        problem = "its labels are not the model's"
    elif "epoch" in ckpt and "epoch" in metrics and int(ckpt["epoch"]) != int(metrics["epoch"]):
        problem = f"it is epoch {metrics['epoch']}'s, the checkpoint epoch {ckpt['epoch']}'s"
    if problem and given is not None:
        raise MSRNError(f"{path} does not describe this model: {problem}")
    if problem:
        return None, f"{path} left out ({problem}): the card shows no test figures"
    return metrics, f"test figures from {path}"


def export_folder(
    source: str | os.PathLike | dict,
    out: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    model_id: str | None = None,
    license_id: str | None = None,
    word_vectors: Any = None,
    cooccurrence: Any = None,
    labels: list[str] | None = None,
    dataset: str | None = None,
    image_size: int | None = None,
) -> tuple[dict, str]:
    """Write a checkpoint (a .pt, a reference checkpoint, a folder or hf://) as a model folder with its card;
    return its config.json and a note on the card's figures.

    A reference checkpoint is built with its label files (the reference's own by default), whose vectors and
    graph then travel in model.safetensors. model_id is what the card's snippet loads (default: `out`);
    image_size replaces the checkpoint's input size (reference checkpoints record none: 448).
    """
    ckpt = source if isinstance(source, dict) else read_source(source)
    loaded = load_checkpoint(ckpt, word_vectors, cooccurrence, labels, dataset)
    state = model_state(loaded.model, image_size or loaded.image_size, loaded.exif_orientation)
    state.update(thresholds=loaded.thresholds, config=ckpt.get("config"))
    figures, note = run_metrics(source, ckpt, list(loaded.model.labels), metrics)
    config = write_folder(out, state, NORMALIZATION, __version__)
    card = render(config, figures, model_id or str(out), license_id)
    atomic_write_text(Path(out) / CARD, card)
    return config, note


def check_repo_id(repo: str) -> str:
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise MSRNError(f"--repo {repo!r} is not a Hub repository id: expected OWNER/NAME")
    return repo


def remote_owner(api: Any, repo: str, weights_sha256: str) -> str | None:
    """Why the Hub repository's current card must not be replaced (another model's, or not msrn's), or None."""
    from huggingface_hub.errors import RemoteEntryNotFoundError  # optional: the `hub` extra, checked by the caller

    if not api.file_exists(repo, CARD):
        return None
    try:
        remote = json.loads(Path(api.hf_hub_download(repo, CONFIG)).read_text(encoding="utf-8"))
    except (RemoteEntryNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        remote = None
    if not isinstance(remote, dict) or remote.get("library_name") != "msrn":
        return f"hf://{repo} already has a card msrn did not write"
    if remote.get("weights_sha256") != weights_sha256:
        theirs = str(remote.get("weights_sha256"))[:12]
        return (
            f"hf://{repo} already holds the card of a different model (weights {theirs}..., these "
            f"{weights_sha256[:12]}...)"
        )
    return None


def push(
    source: str | os.PathLike,
    repo: str,
    out: str | os.PathLike | None = None,
    force: bool = False,
    private: bool = False,
    message: str | None = None,
    **export: Any,
) -> str:
    """Export `source` as a model folder (in `out`, else a temporary one) and upload it to `repo`; return the
    repository's URL. `export`: export_folder's options (metrics, license_id, word_vectors ...)."""
    check_repo_id(repo)
    try:
        from huggingface_hub import HfApi  # optional: the `hub` extra
    except ImportError:
        raise MSRNError("msrn push needs huggingface_hub: pip install 'msrn[hub]'") from None
    with tempfile.TemporaryDirectory(prefix="msrn-push-") as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        config, note = export_folder(source, folder, model_id=f"hf://{repo}", **export)
        print(f"msrn push: {note}", file=sys.stderr)
        api = HfApi()
        refusal = remote_owner(api, repo, config["weights_sha256"])
        if refusal and not force:
            raise MSRNError(f"{refusal}; pass --force to replace it")
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            allow_patterns=[WEIGHTS, CONFIG, CARD],
            commit_message=message or f"msrn {__version__}: {len(config['labels'])}-label model",
        )
    return str(url)


def card_metrics_option() -> Any:
    """--metrics: the figures of the card (export --format hub, push)."""
    return option(
        None,
        "the run's metrics.json for the card's figures (default: the one beside the checkpoint file, if it is "
        "that checkpoint's)",
        metavar="FILE",
    )


def card_license_option() -> Any:
    """--license: the card's license id."""
    return option(
        None,
        "the card's license id (e.g. apache-2.0; default: a placeholder to replace)",
        metavar="ID",
        flag="--license",
    )


def card_dataset_option() -> Any:
    """--dataset: whose label files and names a reference checkpoint takes."""
    return option(
        None,
        "reference checkpoints: the dataset whose label files and names to take (default: the one with the "
        "checkpoint's label count)",
    )


@dataclass(frozen=True, kw_only=True)
class PushOptions(CheckpointOptions):
    """Options of `msrn push`."""

    checkpoint: str = checkpoint_option()  # required: narrowed for the type checker
    metrics: str | None = card_metrics_option()
    license_id: str | None = card_license_option()
    dataset: str | None = card_dataset_option()
    repo: str = option(None, "the Hub repository (created if absent)", metavar="OWNER/NAME", required=True)
    out: str | None = option(None, "also keep the uploaded folder here (default: a temporary one)", metavar="DIR")
    force: bool = option(
        False, "replace the repository's card even if it belongs to another model or to another library"
    )
    private: bool = option(False, "create the repository private (if it is created)")
    message: str | None = option(None, "the commit message")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn push`."""
    add_options(parser, PushOptions)


def export_options(args: Any) -> dict[str, Any]:
    """export_folder's keyword arguments from the checkpoint and card options."""
    return {
        "metrics": args.metrics,
        "license_id": args.license_id,
        "word_vectors": args.word_vectors,
        "cooccurrence": args.cooccurrence,
        "labels": read_label_names(args.labels) if args.labels else None,
        "dataset": args.dataset,
        "image_size": args.image_size,
    }


def main(args: argparse.Namespace | PushOptions) -> int:
    """Run `msrn push`: export, check the repository's card, upload, print the URL."""
    args = PushOptions.from_args(args)
    url = push(args.checkpoint, args.repo, args.out, args.force, args.private, args.message, **export_options(args))
    print(url)
    return 0
