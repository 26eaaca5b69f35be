"""Tag images with a trained model: the `Predictor` API (`msrn.load`) and the `msrn predict` command.

A record per image is `{"image": path, "labels": [{"label": name, "score": probability}, ...]}`
with labels in descending score; an image that cannot be read gets `{"image", "error", "labels": []}`
instead, and the others go on.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from msrn.data.transforms import TestTransform
from msrn.engine.evaluate import add_fast_argument
from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS
from msrn.io import atomic_write_text, check_writable
from msrn.models.loading import load_model
from msrn.models.tta import TTA_MODES, with_tta
from msrn.tagging import (  # noqa: F401  (IMAGE_SUFFIXES, array_to_image, find_images: public here too)
    IMAGE_SUFFIXES,
    ImageInput,
    Result,
    array_to_image,
    as_list,
    decoded_batches,
    describe,
    error_record,
    expand_inputs,
    find_images,
    make_record,
    read_input,
    read_path_list,
    threshold_vector,
)


class Predictor:
    """A loaded model ready to tag images: `predict` for records, `probabilities`, `explain` for maps."""

    def __init__(
        self,
        model: nn.Module,
        image_size: int | None = None,
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        fast: bool = True,
        tta: str = "none",
        exif_orientation: bool | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._infer: nn.Module = self.model  # what plain (unexplained) batches run through
        if fast:  # batch norm folded, channels-last: the same logits to ~1e-6 (msrn.models.fuse); faster
            from msrn.models.fuse import optimize_for_inference

            self._infer = optimize_for_inference(self.model)
            self.model = self._infer.model  # the folded network itself, still an MSRN, for explanations
        self._infer, self.tta = with_tta(self._infer, tta), tta  # "flip": scores average the image and its mirror
        self.image_size = int(image_size or getattr(model, "image_size", 448))
        self.transform = TestTransform(self.image_size)
        self.labels: list[str] = list(model.labels)
        self.thresholds = self._threshold_vector(threshold)
        self.top_k = top_k
        self.batch_size = max(1, int(batch_size))
        # decode as training did (the checkpoint says how), unless told otherwise
        self.exif_orientation = bool(getattr(model, "exif_orientation", True) if exif_orientation is None
                                     else exif_orientation)
        self.max_pixels = max_pixels  # None: Pillow's own decompression-bomb limit only

    def _threshold_vector(self, threshold: float | Sequence[float] | None) -> np.ndarray:
        """Per-label thresholds: the argument, else the checkpoint's own, else 0.5 for every label."""
        if threshold is None:
            stored = getattr(self.model, "thresholds", None)
            threshold = stored.detach().cpu().numpy() if isinstance(stored, torch.Tensor) else 0.5
        return threshold_vector(threshold, len(self.labels))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        word_vectors: Any = None,
        cooccurrence: Any = None,
        labels: Sequence[str] | None = None,
        **options: Any,
    ) -> Predictor:
        """Load a project or reference checkpoint (the latter with its word vectors and co-occurrence,
        by default the reference's own files for the dataset with its number of labels).

        labels name a reference checkpoint's outputs (it stores none; by default that dataset's names);
        a project checkpoint's own names must match them.
        """
        labels = list(labels) if labels is not None else None
        return cls(load_model(path, word_vectors=word_vectors, cooccurrence=cooccurrence, labels=labels), **options)

    def decode(self, item: ImageInput) -> Image.Image:
        """One input as the RGB image the model sees (orientation and pixel limit as configured), or an MSRNError."""
        return read_input(item, self.exif_orientation, self.max_pixels)

    def _batches(self, items: Sequence[ImageInput]) -> Iterator[list[tuple[int, Image.Image | None, str | None]]]:
        """Batches of (index, decoded image or None, error or None), decoded lazily."""
        return decoded_batches(items, self.decode, self.batch_size)

    def _forward(self, images: list[Image.Image], explain_k: int) -> tuple[np.ndarray, np.ndarray | None, list]:
        """`run` on decoded images."""
        return self.run(torch.stack([self.transform(img) for img in images]), explain_k)

    @torch.no_grad()
    def run(self, x: torch.Tensor, explain_k: int = 0) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """Probabilities (B x C) of a batch of transformed images (B x 3 x S x S), and with explain_k > 0
        the top label ids (B x k) and attention maps (3 arrays B x k x H_s x W_s)."""
        x = x.to(self.device)
        if explain_k <= 0:
            return torch.sigmoid(self._infer(x)).float().cpu().numpy(), None, []
        from msrn.explain import explained_forward

        logits, idx, maps = explained_forward(self.model, x, explain_k)
        return (
            torch.sigmoid(logits).float().cpu().numpy(),
            idx.cpu().numpy(),
            [m.float().cpu().numpy() for m in maps],
        )

    def record(
        self, name: str | None, probs: np.ndarray, thresholds: np.ndarray | None = None, top_k: int | None = None
    ) -> dict:
        """The record of one image: labels at or above their threshold, best first, at most top_k
        (defaults: the predictor's own)."""
        thresholds = self.thresholds if thresholds is None else thresholds
        return make_record(self.labels, name, probs, thresholds, self.top_k if top_k is None else top_k)

    def iter_results(
        self,
        images: ImageInput | Iterable[ImageInput],
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
        explain_k: int = 0,
    ) -> Iterator[Result]:
        """A Result per image, in input order, computed batch by batch (explain_k > 0 adds maps)."""
        items = expand_inputs(as_list(images))
        thresholds = self.thresholds if threshold is None else self._threshold_vector(threshold)
        top_k = self.top_k if top_k is None else top_k
        if explain_k > 0:
            from msrn.explain import require_msrn

            require_msrn(self.model)
            if self.tta != "none":
                raise MSRNError(f"explanations show one forward pass of the image as given; not with tta={self.tta!r}")
        for batch in self._batches(items):
            good = [(i, img) for i, img, _ in batch if img is not None]
            probs, idx, maps = self._forward([img for _, img in good], explain_k) if good else (None, None, [])
            row = {i: r for r, (i, _) in enumerate(good)}
            for i, img, err in batch:
                name = describe(items[i])
                if err is not None:
                    yield Result(error_record(name, err))
                    continue
                r = row[i]
                expl = None
                if idx is not None:
                    expl = self.explanation(img, name, probs[r], idx[r], [m[r] for m in maps], thresholds, i)
                yield Result(self.record(name, probs[r], thresholds, top_k), probs[r], expl)

    def explanation(
        self, img: Image.Image, name: str | None, probs: np.ndarray, ids: np.ndarray,
        maps: list[np.ndarray], thresholds: np.ndarray | None = None, index: int = 0,
    ) -> Any:
        """Bundle one image's top labels, scores and maps (from `run`) for drawing."""
        from msrn.explain import Explanation

        thresholds = self.thresholds if thresholds is None else thresholds
        return Explanation(
            image=img, name=Path(name).name if name else f"image {index}",
            labels=[self.labels[j] for j in ids], scores=[float(probs[j]) for j in ids],
            maps=maps, thresholds=[float(thresholds[j]) for j in ids], depths=tuple(self.model.cfg.depths),
        )

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
    ) -> list[dict]:
        """Records for paths, folders, PIL images or arrays (one input or a list); see the module docstring."""
        return [result.record for result in self.iter_results(images, threshold, top_k)]

    def probabilities(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """N x C label probabilities in `labels` order; an unreadable image is an error here."""
        items = expand_inputs(as_list(images))
        rows = []
        for batch in self._batches(items):
            errors = [err for _, _, err in batch if err is not None]
            if errors:
                raise MSRNError(errors[0])
            rows.append(self._forward([img for _, img, _ in batch], 0)[0])
        return np.concatenate(rows) if rows else np.zeros((0, len(self.labels)), np.float32)

    def explain(self, images: ImageInput | Iterable[ImageInput], k: int = 3) -> list[Any]:
        """An `msrn.explain.Explanation` (top-k labels and their maps) per image; unreadable is an error."""
        out = []
        for result in self.iter_results(images, explain_k=max(1, k)):
            if result.explanation is None:
                raise MSRNError(result.record["error"])
            out.append(result.explanation)
        return out


def load(
    checkpoint: str | os.PathLike,
    word_vectors: Any = None,
    cooccurrence: Any = None,
    labels: Sequence[str] | None = None,
    **options: Any,
) -> Predictor:
    """`msrn.load("best.pt")`: a Predictor for a project checkpoint or a reference one (`voc_checkpoint.pth.tar`).

    options: image_size, threshold, top_k, batch_size, device, fast, tta ("none" or "flip"), exif_orientation,
    max_pixels (see `Predictor`).
    """
    return Predictor.from_checkpoint(checkpoint, word_vectors, cooccurrence, labels, **options)


def read_label_file(path: str | os.PathLike) -> list[str]:
    """Label names, one per line (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MSRNError(f"cannot read label names from {path}: {e}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise MSRNError(f"{path} holds no label names")
    return names


def add_checkpoint_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint, the reference checkpoint's companion files and --image-size (shared with export, serve)."""
    parser.add_argument("--checkpoint", required=required, metavar="FILE",
                        help="a project checkpoint (best.pt, last.pt) or a reference MSRN checkpoint")
    parser.add_argument("--word-vectors", metavar="FILE",
                        help="reference checkpoints: a word-vector pickle; default 'reference', the reference's "
                             "own for the dataset with the checkpoint's label count (fetched once, SHA-256 checked)")
    parser.add_argument("--cooccurrence", metavar="FILE",
                        help="reference checkpoints: a co-occurrence pickle {'adj','nums'}; default 'reference', as "
                             "for --word-vectors")
    parser.add_argument("--labels", metavar="FILE",
                        help="label names, one per line, in output order (reference checkpoints store none; default: "
                             "the names of the reference dataset with their count, in the reference's order)")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help="input side in pixels (default: the checkpoint's; 448 for reference checkpoints)")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """--exif-orientation and --max-megapixels (predict, serve): how image files are decoded."""
    parser.add_argument("--exif-orientation", choices=("on", "off"),
                        help="turn photos upright by their EXIF orientation tag (default: as the checkpoint's "
                             "training did; on for reference and older checkpoints)")
    parser.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6, metavar="MP",
                        help="refuse images larger than MP megapixels, read from the file's header before "
                             f"decoding (default {DEFAULT_MAX_PIXELS / 1e6:g})")


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Predictor options that add_decoding_arguments' flags set.

    Pillow's own decompression-bomb limit is raised to --max-megapixels when that is higher: the
    command owns its process, and the limit checked is then ours.
    """
    if not args.max_megapixels > 0:
        raise MSRNError("--max-megapixels must be positive")
    max_pixels = int(args.max_megapixels * 1e6)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    return {"exif_orientation": None if args.exif_orientation is None else args.exif_orientation == "on",
            "max_pixels": max_pixels}


def load_from_args(args: argparse.Namespace, **options: Any) -> Predictor:
    """The Predictor that the shared checkpoint options describe."""
    if args.image_size is not None and args.image_size < 32:
        raise MSRNError("--image-size must be at least 32")
    labels = read_label_file(args.labels) if args.labels else None
    return load(args.checkpoint, args.word_vectors, args.cooccurrence, labels, image_size=args.image_size, **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn predict`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Label selection: a label is reported when its probability >= its threshold; then --top-k\n"
        "keeps the K best of those. Both apply. `--threshold 0 --top-k 5` gives the 5 best labels\n"
        "whatever their scores; `--threshold 0` alone lists every label.\n"
        "Output: json is a list with one record per image, {\"image\", \"labels\": [{\"label\", \"score\"}]},\n"
        "labels by descending score; csv has columns image,label,score,error with one row per label\n"
        "(one row with an empty label for an image with none). With --explain each JSON record also\n"
        "names its picture (\"explanation\"). An unreadable image gets an error record and the rest\n"
        "go on; the exit status is then 1."
    )
    add_checkpoint_arguments(parser, required=False)
    parser.add_argument("--onnx", metavar="FILE",
                        help="tag with a model exported by `msrn export` instead of a checkpoint (onnxruntime; "
                             "labels, thresholds and input size come from the file)")
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (walked)")
    parser.add_argument("--list", action="append", default=[], metavar="FILE",
                        help="a text file listing image paths, one a line ('-' reads standard input); repeatable")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    parser.add_argument("--out", metavar="FILE", help="write the output here (atomically) instead of stdout")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="report labels with probability >= T (default: the checkpoint's per-label "
                             "thresholds if it has them, else 0.5)")
    parser.add_argument("--top-k", type=int, metavar="K", help="report at most the K best labels passing the threshold")
    parser.add_argument("--explain", metavar="DIR",
                        help="write one PNG per image to DIR: attention of its top labels at the three depths")
    parser.add_argument("--explain-labels", type=int, default=3, metavar="N",
                        help="how many top-scoring labels --explain shows per image (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_fast_argument(parser)
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation: flip averages the scores' logits of each image and its mirror")
    add_decoding_arguments(parser)


PROGRESS_FROM = 32  # inputs from which a progress bar is shown (on a terminal)


class _Output:
    """Streams records as JSON or CSV to stdout, or collects them for one atomic write to a file."""

    def __init__(self, fmt: str, out: str | None) -> None:
        self.fmt, self.path = fmt, out
        self.sink = io.StringIO() if out else sys.stdout
        self.count = 0
        if fmt == "csv":
            self.csv = csv.writer(self.sink, lineterminator="\n")
            self.csv.writerow(["image", "label", "score", "error"])
        else:
            self.sink.write("[")

    def write(self, record: dict) -> None:
        """Append one image's record."""
        if self.fmt == "csv":
            rows = [[record["image"], x["label"], f"{x['score']:.6f}", ""] for x in record["labels"]]
            self.csv.writerows(rows or [[record["image"], "", "", record.get("error", "")]])
        else:
            self.sink.write(("," if self.count else "") + "\n" + json.dumps(record, ensure_ascii=False))
        self.count += 1
        self.sink.flush()

    def close(self) -> None:
        """Finish the document and, for --out, write the file."""
        if self.fmt == "json":
            self.sink.write("\n]\n")
        if self.path:
            atomic_write_text(self.path, self.sink.getvalue())
        else:
            self.sink.flush()


def _unique_png(folder: Path, name: str | None, index: int, used: set[str]) -> Path:
    """DIR/<image stem>.png, with -2, -3 ... when two inputs share a stem."""
    stem = Path(name).stem if name else f"image-{index}"
    candidate, n = stem, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate.lower())
    return folder / f"{candidate}.png"


def _load(args: argparse.Namespace) -> Any:
    """The Predictor of --checkpoint, or the OnnxPredictor of --onnx (exactly one of them)."""
    options = dict(threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size, **decoding_options(args))
    if (args.checkpoint is None) == (args.onnx is None):
        raise MSRNError("give either --checkpoint or --onnx")
    if args.checkpoint is not None:
        return load_from_args(args, device=args.device, fast=not args.exact, tta=args.tta, **options)
    given = [flag for flag, value in (("--word-vectors", args.word_vectors), ("--cooccurrence", args.cooccurrence),
                                      ("--labels", args.labels), ("--image-size", args.image_size),
                                      ("--explain", args.explain), ("--exact", args.exact),
                                      ("--tta", args.tta != "none")) if value]
    if given:
        raise MSRNError(f"{', '.join(given)} cannot be used with --onnx: the file fixes its labels, input size "
                        "and computation, and holds no attention maps")
    from msrn.onnx_predict import OnnxPredictor

    return OnnxPredictor(args.onnx, **options)


def main(args: argparse.Namespace) -> int:
    """Run `msrn predict`: load, tag every input, write records (and attention pictures)."""
    if args.top_k is not None and args.top_k < 1:
        raise MSRNError("--top-k must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise MSRNError("--threshold must lie in [0, 1]")
    if args.explain_labels < 1:
        raise MSRNError("--explain-labels must be at least 1")
    if args.explain and args.tta != "none":
        raise MSRNError("--explain draws one forward pass of the image as given; it does not combine with --tta")
    inputs = [*args.inputs, *(path for listed in args.list for path in read_path_list(listed))]
    if not inputs:
        raise MSRNError("no images given: name image files or folders, or --list FILE")
    predictor = _load(args)
    explain_k = 0
    if args.explain:
        from msrn.explain import require_msrn, save_figure

        require_msrn(predictor.model, args.checkpoint)
        check_writable(args.explain)
        explain_k = args.explain_labels
    items = expand_inputs(inputs)  # an empty folder fails before any output starts
    output = _Output(args.format, args.out)
    failed, used = 0, set()
    results = predictor.iter_results(items, explain_k=explain_k) if explain_k else predictor.iter_results(items)
    with tqdm(total=len(items), desc="predict", unit="img", leave=False, file=sys.stderr,
              disable=None if len(items) >= PROGRESS_FROM else True) as bar:
        for index, result in enumerate(results):
            record, expl = result.record, result.explanation
            if "error" in record:
                failed += 1
                bar.write(f"msrn predict: {record['image']}: {record['error']}", file=sys.stderr)
            if expl is not None:
                path = _unique_png(Path(args.explain), record["image"], index, used)
                save_figure(expl, path)
                record["explanation"] = os.fspath(path)
            output.write(record)
            bar.update()
    output.close()
    if args.explain:
        print(f"msrn predict: attention pictures in {args.explain}", file=sys.stderr)
    if failed:
        print(f"msrn predict: {failed} of {output.count} images could not be read", file=sys.stderr)
    return 1 if failed else 0
