"""Backbone weights: ImageNet weights (a local file or a URL fetched once into a cache with a SHA-256
check), or the backbone of a reference or msrn checkpoint."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from torch import nn

from msrn.errors import MSRNError

log = logging.getLogger(__name__)

# torchvision's files, named <arch>-<first 8 hex digits of their SHA-256>.pth
IMAGENET_URLS = {
    "resnet101": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-5c106cde.pth",
}


def cache_dir() -> Path:
    return Path(os.environ.get("MSRN_CACHE", Path.home() / ".cache" / "msrn"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, sha256: str | None = None) -> Path:
    """Download `url` into the cache (once). The hash is `sha256` or, for torchvision-style names
    (`name-<hex>.pth`), the hex prefix in the name; a mismatch deletes the download. With `sha256`
    given, a cached copy is checked too, and fetched again when it differs."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir() / name
    m = re.search(r"-([0-9a-f]{8,64})\.", name)
    expected = (sha256 or (m.group(1) if m else "")).lower()
    if target.is_file():
        if sha256 is None or _sha256(target).startswith(expected):
            return target
        target.unlink()  # a cached copy with the wrong hash is never used
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        digest = _sha256(Path(tmp))
        if expected and not digest.startswith(expected):
            raise MSRNError(f"{url}: SHA-256 {digest[:16]}... does not match the expected {expected[:16]}...")
        os.replace(tmp, target)
    except (OSError, ValueError) as e:  # ValueError: not a URL urllib can open
        raise MSRNError(f"cannot download {url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_checkpoint_backbone(model: nn.Module, ckpt: dict, where: str) -> str:
    """Load the backbone of a reference or msrn checkpoint into `model` (a ResNet or a network with
    `.backbone`), strictly, with conv_buffer1/2 where both sides have them; returns what was taken."""
    from msrn.checkpoint import (
        BACKBONE_EXTRAS,
        backbone_weights,
        checkpoint_weights,
        is_reference,
        load_state_strict,
        require_backbone,
    )

    state, arch, _ = checkpoint_weights(ckpt, where)
    require_backbone(arch, model, where)
    resnet = getattr(model, "backbone", model)
    weights, extras = backbone_weights(state)
    load_state_strict(resnet, weights, f"the backbone of {where}")
    own_extras = {name: getattr(model, name) for name in BACKBONE_EXTRAS if hasattr(model, name)}
    if own_extras and extras:
        load_state_strict(nn.ModuleDict(own_extras), extras, f"conv_buffer1/2 of {where}")
        taken = " and conv_buffer1/2"
    elif own_extras:
        taken = " (conv_buffer1/2 start afresh: the checkpoint has none)"
    else:
        taken = " (its conv_buffer1/2 are not used: the model has none)" if extras else ""
    kind = "reference MSRN" if is_reference(ckpt) else "msrn"
    return (f"the {resnet.arch} backbone ({len(weights)} tensors){taken} of the {kind} checkpoint {where}; "
            "its other layers are not used")


def load_pretrained_backbone(model: nn.Module, source: str | Path) -> str:
    """Load a backbone into `model` (a ResNet or a network with `.backbone`) and return what was taken.

    `source`: ImageNet weights (a path, a URL, or 'imagenet' for torchvision's file), or a reference
    or msrn checkpoint, whose backbone and conv_buffer1/2 are taken (the paper's VOC 96.0 recipe
    starts from its COCO model this way).
    """
    from msrn.checkpoint import FORMAT, is_reference, read_checkpoint
    from msrn.models.resnet import load_imagenet_state

    resnet = getattr(model, "backbone", model)
    src = str(source)
    if src == "imagenet":
        if resnet.arch not in IMAGENET_URLS:
            raise MSRNError(f"no ImageNet weights are published for {resnet.arch}; use --pretrained none")
        src = IMAGENET_URLS[resnet.arch]
    path = fetch(src) if re.match(r"^(https?|file)://", src) else Path(src)
    ckpt = read_checkpoint(path)
    if ckpt.get("format") == FORMAT or is_reference(ckpt):
        taken = load_checkpoint_backbone(model, ckpt, str(path))
    else:
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt.get("state_dict"), dict) else ckpt
        load_imagenet_state(resnet, state, str(path))
        taken = f"the {resnet.arch} backbone of the ImageNet weights {path} (fc dropped)"
    log.info("--pretrained: %s", taken)
    return taken
