"""`msrn export`: a checkpoint as an ONNX model, checked against PyTorch with onnxruntime.

The graph takes `image` (batch x 3 x S x S, normalised as `TestTransform` does; the batch axis
is dynamic) and returns `logits` (batch x C). The label names and per-label thresholds (JSON
lists), the input size, the decoding (EXIF orientation) and the normalisation are stored in the
model's metadata_props, so that `msrn.inference.onnx_predict` tags images from the file alone.
The label and group semantics depend on the weights only, so they are computed once here and
stored as a constant; the attention is its traceable form (msrn.models.attention): the spec's formula in
plain tensor ops, split over label chunks to bound its memory.

`--format hub` writes a model folder with its card instead (msrn.inference.push.export_folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msrn.errors import MSRNError
from msrn.hub import CARD, CONFIG, WEIGHTS
from msrn.inference.predictor import loaded_from_args
from msrn.inference.push import (
    INPUT,
    NORMALIZATION,
    card_dataset_option,
    card_license_option,
    card_metrics_option,
    export_folder,
    export_options,
)
from msrn.inference.tagging import threshold_vector
from msrn.io import atomic_write_bytes
from msrn.models import MSRN, Network
from msrn.options import (
    UNRECORDED_IMAGE_SIZE,
    CheckpointOptions,
    add_options,
    checkpoint_option,
    option,
    retired_fast_option,
)

OPSET = 17
TOLERANCE = 1e-4  # max |ONNX - PyTorch| over the logits, relative to max(1, max |logit|)


class ExportableMSRN(nn.Module):
    """MSRN's forward with frozen semantics and the traceable attention (same numbers as `MSRN.forward`)."""

    rows: torch.Tensor  # buffers, registered in __init__
    assign: torch.Tensor | None

    def __init__(self, model: MSRN) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            sem = model.semantics()
        self.register_buffer("rows", sem.rows())  # (C+K) x D
        self.register_buffer("assign", sem.assign)  # C x K, for the element-wise head (None without groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> logits."""
        return self.model.classify(self.model.projected_maps(x), self.rows, attention="traceable", assign=self.assign)


def _require_onnx() -> tuple[Any, Any]:
    """The onnx and onnxruntime modules, or one line saying how to install them."""
    try:
        import onnx  # optional: the `export` extra
        import onnxruntime
    except ImportError as e:
        raise MSRNError(
            f"ONNX export needs onnx and onnxruntime ({e.name} is missing): pip install 'msrn[export]'"
        ) from None
    return onnx, onnxruntime


def metadata(
    model: Network, image_size: int, thresholds: Sequence[float] | None = None, exif_orientation: bool = True
) -> dict[str, str]:
    """What a consumer of the ONNX file needs besides the graph: labels, their thresholds (default 0.5),
    input size, decoding and normalisation (msrn.inference.onnx_predict tags images from these alone)."""
    thresholds = [0.5] * len(model.labels) if thresholds is None else thresholds
    return {
        "labels": json.dumps(list(model.labels), ensure_ascii=False),
        "thresholds": json.dumps([float(t) for t in thresholds]),
        "image_size": str(int(image_size)),
        "exif_orientation": json.dumps(bool(exif_orientation)),
        "input": INPUT,
        "mean": json.dumps(NORMALIZATION["mean"]),
        "std": json.dumps(NORMALIZATION["std"]),
        "output": "logits; sigmoid gives per-label probabilities",
        "architecture": "msrn" if isinstance(model, MSRN) else getattr(model, "family", "") or "baseline",
        "producer": "msrn export",
    }


def verify(path: str | os.PathLike, model: Network, image_size: int, batch: int = 3, seed: int = 0) -> float:
    """Run the ONNX file and the PyTorch model on one random batch; return the logits' max abs difference.

    Raises MSRNError when the difference exceeds TOLERANCE x max(1, max |logit|).
    """
    _, ort = _require_onnx()
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).float().numpy()
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    if got.shape != expected.shape:
        raise MSRNError(f"ONNX output has shape {got.shape}, PyTorch's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise MSRNError(f"ONNX logits differ from PyTorch's by {diff:.3g} (tolerance {TOLERANCE:g})")
    return diff


def export_onnx(
    model: Network,
    path: str | os.PathLike,
    image_size: int = UNRECORDED_IMAGE_SIZE,
    opset: int = OPSET,
    thresholds: Sequence[float] | None = None,
    exif_orientation: bool = True,
) -> float:
    """Write `model` to `path` as ONNX (dynamic batch; labels, thresholds, input size and decoding in
    metadata), verified; return the max diff.

    The file appears only once verified: it is written beside `path` and renamed over it.
    """
    onnx, _ = _require_onnx()
    if opset < 17:
        raise MSRNError(f"opset {opset} is too old; use 17 or newer")
    image_size = int(image_size)
    model = model.eval().cpu()
    module = ExportableMSRN(model).eval() if isinstance(model, MSRN) else model
    path = Path(path)
    if not path.parent.is_dir():
        raise MSRNError(f"output folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(
                module,
                (torch.zeros(2, 3, image_size, image_size),),
                os.fspath(tmp),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        proto = onnx.load(os.fspath(tmp))
        del proto.metadata_props[:]
        for key, value in metadata(model, image_size, thresholds, exif_orientation).items():
            proto.metadata_props.add(key=key, value=value)
        proto.doc_string = "MSRN multi-label classifier exported by msrn export"
        onnx.checker.check_model(proto)
        onnx.save(proto, os.fspath(tmp))
        diff = verify(tmp, model, image_size)  # the original model, its own attention code
        atomic_write_bytes(path, tmp.read_bytes())  # flushed to disk, then renamed over path
    finally:
        tmp.unlink(missing_ok=True)
    return diff


@dataclass(frozen=True, kw_only=True)
class ExportOptions(CheckpointOptions):
    """Options of `msrn export`."""

    checkpoint: str = checkpoint_option()  # required: narrowed for the type checker
    format: str = option(
        "onnx",
        "onnx: one ONNX file; hub: a model folder (model.safetensors, config.json, README.md card) that "
        "msrn.load and the Hugging Face Hub take (default onnx)",
        choices=("onnx", "hub"),
    )
    out: str = option(
        None,
        "where to write the model: a file for onnx (model.onnx), a folder for hub",
        metavar="PATH",
        required=True,
    )
    metrics: str | None = card_metrics_option()
    license_id: str | None = card_license_option()
    dataset: str | None = card_dataset_option()
    opset: int = option(OPSET, f"ONNX opset, {OPSET} or newer (default {OPSET})", low=OPSET, metavar="N")
    fast: bool = retired_fast_option()

    def check(self) -> None:
        given = self.given("metrics", "license_id", "dataset")
        if self.format != "hub" and given:
            raise MSRNError(f"{', '.join(given)}: for --format hub only")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn export`."""
    add_options(parser, ExportOptions)


def main(args: argparse.Namespace | ExportOptions) -> int:
    """Run `msrn export`: load, export, verify with onnxruntime, report; or write a model folder."""
    args = ExportOptions.from_args(args)
    if args.format == "hub":
        config, note = export_folder(args.checkpoint, args.out, **export_options(args))
        print(
            f"msrn export: wrote {args.out} ({len(config['labels'])} labels, input {config['image_size']}px): "
            f"{WEIGHTS}, {CONFIG}, {CARD}; {note}",
            file=sys.stderr,
        )
        return 0
    _require_onnx()
    loaded = loaded_from_args(args)  # the network as written; onnxruntime does its own folding
    model, image_size = loaded.model, args.image_size or loaded.image_size
    thresholds = threshold_vector(0.5 if loaded.thresholds is None else loaded.thresholds, len(model.labels))
    diff = export_onnx(model, args.out, image_size, args.opset, thresholds.tolist(), loaded.exif_orientation)
    print(
        f"msrn export: wrote {args.out} ({len(model.labels)} labels, input {image_size}px, "
        f"dynamic batch); onnxruntime logits match PyTorch's within {diff:.2g}",
        file=sys.stderr,
    )
    return 0
