"""The model folder: model.safetensors, config.json and README.md, a trained model that loads without pickles.

model.safetensors holds the weights (the label vectors and graph are its `word_vectors` and `adjacency`
tensors); config.json what rebuilds and uses them: the architecture, the labels in output order, the input
size, normalisation, per-label thresholds, EXIF decoding, the msrn version and the training config.
Loading runs no code from the folder: safetensors is a JSON header plus raw bytes, config.json plain JSON,
and a pickle lying beside them is never opened. `hf://OWNER/NAME[@REVISION]` names such a folder on the
Hugging Face Hub, fetched by huggingface_hub (its cache, offline mode and token). `read_source` is the one
reader behind every option that takes a checkpoint: a folder, a Hub id or a `.pt` file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from msrn.checkpoint import FORMAT, VERSION, read_checkpoint
from msrn.download import file_sha256
from msrn.errors import MSRNError
from msrn.io import atomic_write_bytes, atomic_write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
FOLDER_VERSION = 2  # config.json's format_version; a newer one is refused (1: the checkpoint layout of version 1)
HUB_PREFIX = "hf://"
# a Hub repo id (OWNER/NAME, the Hub's own character rules) and an optional @revision (branch, tag or commit)
_HUB_ID = re.compile(r"hf://([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([^\s@]+))?")
# pickle-based files a folder may hold beside the model; loading the folder never opens them
PICKLED = (".pt", ".pth", ".tar", ".pkl", ".pickle", ".bin", ".ckpt")
# tensor dtypes the writer produces; anything else in a header is a tampered or foreign file
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_hub_id(source: object) -> bool:
    """Whether source names a Hub model (`hf://...`) rather than a local path."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> tuple[str, str | None]:
    """(`OWNER/NAME`, revision or None) of `hf://OWNER/NAME[@REVISION]`."""
    found = _HUB_ID.fullmatch(source)
    if found is None or ".." in found.group(1):
        raise MSRNError(f"{source} is not a Hub model id: expected hf://OWNER/NAME or hf://OWNER/NAME@REVISION")
    return found.group(1), found.group(2)


def download(source: str) -> Path:
    """The local snapshot folder of a Hub model (`hf://OWNER/NAME[@REVISION]`), fetched by huggingface_hub.

    Only config.json, model.safetensors and the card are fetched; huggingface_hub's cache, HF_HUB_OFFLINE
    and stored token (or HF_TOKEN) apply as for any Hub download.
    """
    repo, revision = parse_hub_id(source)
    try:
        # optional: the `hub` extra; a local folder loads without it
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise MSRNError(f"loading {source} needs huggingface_hub: pip install 'msrn[hub]'") from None
    try:
        folder = Path(
            snapshot_download(repo, revision=revision, allow_patterns=[CONFIG, WEIGHTS, CARD], library_name="msrn")
        )
    except GatedRepoError:
        raise MSRNError(f"{source} is gated: accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise MSRNError(
            f"{source}: no such model on the Hub (or it is private: log in with hf auth login, or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise MSRNError(f"{source}: the model has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise MSRNError(
            f"{source} is not in the Hugging Face cache and the Hub cannot be reached (offline: "
            "HF_HUB_OFFLINE is set, or no network)"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MSRNError(f"cannot fetch {source}: {first}") from None
    if not (folder / WEIGHTS).is_file():
        raise MSRNError(f"{source} is not an msrn model: its repository has no {WEIGHTS}")
    return folder


def _labels(arch: dict) -> list[str]:
    """The output names an architecture description carries (beside the config; inside it in older msrn files)."""
    return list(arch.get("labels") or arch.get("config", {}).get("labels", []))


def write_folder(
    folder: str | os.PathLike,
    ckpt: dict,
    normalization: dict[str, Any],
    msrn_version: str,
) -> dict:
    """Write a project checkpoint's model part as model.safetensors and config.json in `folder`; return the config.

    ckpt is what msrn.models.model_state returns, optionally with `thresholds` and the training
    `config`; normalization says how pixels become the network's input (mean, std, and in words), msrn_version
    which msrn wrote it (both come from the caller: this module sits below the data layer and the package).
    """
    arch = json.loads(json.dumps(ckpt["model"]))  # a copy without the labels, which config.json keeps once
    labels = _labels(arch)
    arch.pop("labels", None)
    arch.get("config", {}).pop("labels", None)
    thresholds = ckpt.get("thresholds")
    config = {
        "library_name": "msrn",
        "format_version": FOLDER_VERSION,
        "msrn_version": msrn_version,
        "architecture": arch,
        "labels": labels,
        "image_size": int(ckpt["image_size"]),
        "normalization": normalization,
        "thresholds": None if thresholds is None else [float(t) for t in torch.as_tensor(thresholds).tolist()],
        "exif_orientation": bool(ckpt.get("exif_orientation", True)),
        "training": ckpt.get("config"),
    }
    # contiguous copies of their own: safetensors refuses strided views and tensors sharing memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    data = safetensors_bytes(tensors, metadata={"format": "pt"})  # one key: the bytes stay deterministic
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()  # the model's identity; loading checks it
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, data)
    atomic_write_json(folder / CONFIG, config)
    return config


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise MSRNError(f"{where} {what}")


def read_config(folder: Path) -> dict:
    """A model folder's config.json, checked for the fields and types the loader relies on."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MSRNError(f"{path} is not a readable JSON file: {e}") from None
    _require(
        isinstance(config, dict) and config.get("library_name") == "msrn",
        path,
        "is not an msrn model config (library_name is not 'msrn')",
    )
    version = config.get("format_version")
    _require(isinstance(version, int) and version >= 1, path, "has no valid format_version")
    _require(
        version <= FOLDER_VERSION,
        path,
        f"is format {version}, written by a newer msrn ({config.get('msrn_version')}); upgrade msrn",
    )
    arch, labels = config.get("architecture"), config.get("labels")
    _require(
        isinstance(arch, dict)
        and arch.get("kind") in ("msrn", "baseline", "head")
        and (arch.get("kind") != "msrn" or isinstance(arch.get("config"), dict))
        and (
            arch.get("kind") != "head" or (isinstance(arch.get("head"), str) and isinstance(arch.get("settings"), dict))
        ),
        path,
        "has no valid architecture (kind msrn with a config, baseline, or head with its name and settings)",
    )
    _require(
        isinstance(labels, list) and len(labels) > 0 and all(isinstance(x, str) and x for x in labels),
        path,
        "has no valid labels (a list of non-empty names in output order)",
    )
    _require(len(set(labels)) == len(labels), path, "names a label twice")
    digest = config.get("weights_sha256")
    _require(
        isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None,
        path,
        "has no weights_sha256 (the SHA-256 of model.safetensors)",
    )
    size = config.get("image_size")
    _require(
        isinstance(size, int) and not isinstance(size, bool) and size >= 32,
        path,
        f"has image_size {size!r}; expected a whole number of pixels, 32 or more",
    )
    _require(isinstance(config.get("exif_orientation", True), bool), path, "has a non-boolean exif_orientation")
    thresholds = config.get("thresholds")
    if thresholds is not None:
        _require(
            isinstance(thresholds, list) and len(thresholds) == len(labels),
            path,
            f"has {len(thresholds) if isinstance(thresholds, list) else 'no list of'} thresholds for "
            f"{len(labels)} labels",
        )
        _require(
            all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0 for t in thresholds),
            path,
            "has a threshold outside [0, 1]",
        )
    return config


def read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """model.safetensors' tensors, checked against config.json's SHA-256; a damaged or lying file (header,
    offsets, dtypes, values) is one line."""
    try:
        _require(
            file_sha256(path) == sha256,
            path,
            "does not match the weights_sha256 of its config.json (altered or swapped after export)",
        )
        tensors = load_file(path, device="cpu")
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:  # the header and sizes are checked here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MSRNError(
            f"{path} is not a readable safetensors file (truncated, tampered or another format): {first}"
        ) from None
    odd = [
        f"{k} ({v.dtype})"
        for k, v in tensors.items()
        if v.dtype not in _FLOATS and not (k.endswith("num_batches_tracked") and v.dtype == torch.int64)
    ]
    _require(not odd, path, f"holds tensors of a type no msrn model has: {', '.join(odd[:4])}")
    return tensors


def _check_fit(config: dict, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """The label-shaped tensors agree with config.json's labels (the rest is checked by strict loading)."""
    n = len(config["labels"])
    arch = config["architecture"]
    if arch["kind"] == "msrn":
        expected: dict[str, tuple[int, int] | None] = {"word_vectors": None, "adjacency": (n, n)}
        declared = arch["config"].get("num_classes", n)
        _require(declared == n, folder / CONFIG, f"declares {declared} classes but names {n} labels")
    elif arch["kind"] == "head":  # the compared heads' weights vary; strict loading checks them all
        expected = {}
        declared = arch.get("num_classes", n)
        _require(declared == n, folder / CONFIG, f"declares {declared} classes but names {n} labels")
    else:
        expected = {"fc.weight": None}
        declared = arch.get("num_classes", n)
        _require(declared == n, folder / CONFIG, f"declares {declared} classes but names {n} labels")
    missing = [k for k in expected if k not in tensors]
    _require(
        not missing, folder / WEIGHTS, f"lacks {', '.join(missing)} (config.json describes a {arch['kind']} model)"
    )
    for key, shape in expected.items():
        got = tuple(tensors[key].shape)
        fits = got == shape if shape is not None else (len(got) >= 1 and got[0] == n)
        _require(fits, folder, f"does not match its config.json: {key} is {got} for {n} labels")


def read_folder(folder: str | os.PathLike) -> dict:
    """A model folder as a project checkpoint dict (what msrn.models._loading builds models from)."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLED and p.is_file())
        absent = " and ".join(n for n in (WEIGHTS, CONFIG) if not (folder / n).is_file())
        hint = (
            (
                f"; it holds {', '.join(pickled)}, which may be a checkpoint: pickle-based files are loaded only "
                f"when named, e.g. --checkpoint {folder / pickled[0]}"
            )
            if pickled
            else ""
        )
        raise MSRNError(f"{folder} is not an msrn model folder: no {absent}{hint}")
    config = read_config(folder)
    tensors = read_weights(folder / WEIGHTS, config["weights_sha256"])
    _check_fit(config, tensors, folder)
    arch = json.loads(json.dumps(config["architecture"]))
    arch["labels"] = list(config["labels"])
    thresholds = config.get("thresholds")
    return {
        "format": FORMAT,
        "version": VERSION if config["format_version"] >= 2 else 1,  # a folder's keys are its checkpoint's
        "model": arch,
        "state_dict": tensors,
        "image_size": config["image_size"],
        "exif_orientation": config.get("exif_orientation", True),
        "thresholds": None if thresholds is None else torch.tensor(thresholds, dtype=torch.float32),
        "config": config.get("training"),
        "normalization": config.get("normalization"),
    }


def read_source(source: str | os.PathLike, what: str = "checkpoint") -> dict:
    """A checkpoint dict from a model folder, a Hub id (`hf://OWNER/NAME[@REVISION]`) or a `.pt` file."""
    if is_hub_id(source):
        return read_folder(download(str(source)))
    if Path(source).is_dir():
        return read_folder(source)
    return read_checkpoint(source, what)
