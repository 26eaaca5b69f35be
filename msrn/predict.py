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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from msrn.checkpoint import load_model
from msrn.data.base import _to_rgb, open_image
from msrn.data.transforms import TestTransform
from msrn.errors import MSRNError
from msrn.io import atomic_write_text, check_writable

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
ImageInput = str | os.PathLike | Image.Image | np.ndarray


def find_images(folder: Path) -> list[Path]:
    """Image files under a folder (recursively, hidden entries skipped), in sorted order."""
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def expand_inputs(items: Iterable[ImageInput]) -> list[ImageInput]:
    """Folders replaced by the images they hold; an empty folder is an error, anything else is kept."""
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            found = find_images(Path(item))
            if not found:
                raise MSRNError(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(item)
    return out


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) array as an RGB image; floats are 0..1."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or 0 in arr.shape:
        raise MSRNError(f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise MSRNError(f"an image array must be numeric, got {arr.dtype}")
        scale = 255.0 if np.issubdtype(arr.dtype, np.floating) else 1.0
        arr = np.clip(np.rint(np.nan_to_num(arr.astype(np.float64)) * scale), 0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(arr))


def describe(item: ImageInput) -> str | None:
    """The `image` field of a record: the path as given, None for an in-memory image."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else None


def read_input(item: ImageInput) -> Image.Image:
    """Any accepted input as an RGB PIL image, or an MSRNError saying why not."""
    if isinstance(item, (str, os.PathLike)):
        return open_image(item)
    if isinstance(item, Image.Image):
        if item.width == 0 or item.height == 0:
            raise MSRNError("image has zero size")
        return _to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_image(item)
    raise MSRNError(f"cannot read an image from a {type(item).__name__}; give a path, a PIL image or an array")


@dataclass
class Result:
    """One image's outcome: its record, all label probabilities and, when asked, its Explanation."""

    record: dict
    probabilities: np.ndarray | None = None
    explanation: Any = None


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
        fast: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._infer: nn.Module = self.model  # what plain (unexplained) batches run through
        if fast:  # batch norm folded, channels-last: the same logits to ~1e-6 (msrn.models.fuse)
            from msrn.models.fuse import optimize_for_inference

            self._infer = optimize_for_inference(self.model)
            self.model = self._infer.model  # the folded network itself, still an MSRN, for explanations
        self.image_size = int(image_size or getattr(model, "image_size", 448))
        self.transform = TestTransform(self.image_size)
        self.labels: list[str] = list(model.labels)
        self.thresholds = self._threshold_vector(threshold)
        self.top_k = top_k
        self.batch_size = max(1, int(batch_size))

    def _threshold_vector(self, threshold: float | Sequence[float] | None) -> np.ndarray:
        """Per-label thresholds: the argument, else the checkpoint's own, else 0.5 for every label."""
        if threshold is None:
            stored = getattr(self.model, "thresholds", None)
            threshold = stored.detach().cpu().numpy() if isinstance(stored, torch.Tensor) else 0.5
        try:
            vec = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(self.labels),)).copy()
        except ValueError:
            raise MSRNError(f"{np.size(threshold)} thresholds for {len(self.labels)} labels") from None
        if not np.all((vec >= 0) & (vec <= 1)):
            raise MSRNError("thresholds must lie in [0, 1]")
        return vec

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        word_vectors: Any = None,
        cooccurrence: Any = None,
        labels: Sequence[str] | None = None,
        **options: Any,
    ) -> Predictor:
        """Load a project or reference checkpoint (the latter needs its word vectors and co-occurrence).

        labels name a reference checkpoint's outputs (it stores none); a project checkpoint's own
        names must match them.
        """
        labels = list(labels) if labels is not None else None
        return cls(load_model(path, word_vectors=word_vectors, cooccurrence=cooccurrence, labels=labels), **options)

    def _batches(self, items: Sequence[ImageInput]) -> Iterator[list[tuple[int, Image.Image | None, str | None]]]:
        """Batches of (index, decoded image or None, error or None), decoded lazily."""
        batch: list[tuple[int, Image.Image | None, str | None]] = []
        for i, item in enumerate(items):
            try:
                batch.append((i, read_input(item), None))
            except MSRNError as e:
                batch.append((i, None, str(e)))
            if sum(img is not None for _, img, _ in batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    @torch.no_grad()
    def _forward(self, images: list[Image.Image], explain_k: int) -> tuple[np.ndarray, np.ndarray | None, list]:
        """Probabilities (B x C), and with explain_k > 0 the top label ids (B x k) and attention maps."""
        x = torch.stack([self.transform(img) for img in images]).to(self.device)
        if explain_k <= 0:
            return torch.sigmoid(self._infer(x)).float().cpu().numpy(), None, []
        from msrn.explain import explained_forward

        logits, idx, maps = explained_forward(self.model, x, explain_k)
        return (
            torch.sigmoid(logits).float().cpu().numpy(),
            idx.cpu().numpy(),
            [m.float().cpu().numpy() for m in maps],
        )

    def _record(self, name: str | None, probs: np.ndarray, thresholds: np.ndarray, top_k: int | None) -> dict:
        """The record of one image: labels at or above their threshold, best first, at most top_k."""
        order = np.argsort(-probs, kind="stable")
        keep = [int(i) for i in order if probs[i] >= thresholds[i]]
        if top_k is not None:
            keep = keep[: max(0, top_k)]
        return {"image": name, "labels": [{"label": self.labels[i], "score": round(float(probs[i]), 6)} for i in keep]}

    def iter_results(
        self,
        images: ImageInput | Iterable[ImageInput],
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
        explain_k: int = 0,
    ) -> Iterator[Result]:
        """A Result per image, in input order, computed batch by batch (explain_k > 0 adds maps)."""
        items = expand_inputs(self._as_list(images))
        thresholds = self.thresholds if threshold is None else self._threshold_vector(threshold)
        top_k = self.top_k if top_k is None else top_k
        if explain_k > 0:
            from msrn.explain import require_msrn

            require_msrn(self.model)
        for batch in self._batches(items):
            good = [(i, img) for i, img, _ in batch if img is not None]
            probs, idx, maps = self._forward([img for _, img in good], explain_k) if good else (None, None, [])
            row = {i: r for r, (i, _) in enumerate(good)}
            for i, img, err in batch:
                name = describe(items[i])
                if err is not None:
                    yield Result({"image": name, "error": err.removeprefix(f"{name}: "), "labels": []})
                    continue
                r = row[i]
                expl = None
                if idx is not None:
                    expl = self._explanation(img, name, i, probs[r], idx[r], [m[r] for m in maps], thresholds)
                yield Result(self._record(name, probs[r], thresholds, top_k), probs[r], expl)

    def _explanation(
        self, img: Image.Image, name: str | None, i: int, probs: np.ndarray, ids: np.ndarray,
        maps: list[np.ndarray], thresholds: np.ndarray,
    ) -> Any:
        """Bundle one image's top labels, scores and maps for drawing."""
        from msrn.explain import Explanation

        return Explanation(
            image=img, name=Path(name).name if name else f"image {i}",
            labels=[self.labels[j] for j in ids], scores=[float(probs[j]) for j in ids],
            maps=maps, thresholds=[float(thresholds[j]) for j in ids], depths=tuple(self.model.cfg.depths),
        )

    @staticmethod
    def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
        """A single input wrapped in a list; a list or other iterable of inputs as a list."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            return [images]
        return list(images)

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
        items = expand_inputs(self._as_list(images))
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
    """`msrn.load("best.pt")`: a Predictor for a project checkpoint or a reference one (with its pickles).

    options: image_size, threshold, top_k, batch_size, device, fast (see `Predictor`).
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


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, the reference checkpoint's companion files and --image-size (shared with export, serve)."""
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a project checkpoint (best.pt, last.pt) or a reference MSRN checkpoint")
    parser.add_argument("--word-vectors", metavar="FILE",
                        help="label word vectors (reference checkpoints only: the reference's word-vector pickle)")
    parser.add_argument("--cooccurrence", metavar="FILE",
                        help="label co-occurrence pickle {'adj','nums'} (reference checkpoints only)")
    parser.add_argument("--labels", metavar="FILE",
                        help="label names, one per line, in output order (reference checkpoints store none)")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help="input side in pixels (default: the checkpoint's; 448 for reference checkpoints)")


def add_fast_argument(parser: argparse.ArgumentParser) -> None:
    """--fast (predict, serve): the batch-norm-folded, channels-last model; same logits to ~1e-6."""
    parser.add_argument("--fast", action="store_true",
                        help="fold batch norm into the convolutions and use channels-last memory: the same "
                             "scores to ~1e-6 relative, 1.2-1.4x faster on CPU (see BENCHMARKS.md)")


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
    add_checkpoint_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders (walked)")
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


def main(args: argparse.Namespace) -> int:
    """Run `msrn predict`: load, tag every input, write records (and attention pictures)."""
    if args.top_k is not None and args.top_k < 1:
        raise MSRNError("--top-k must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise MSRNError("--threshold must lie in [0, 1]")
    if args.explain_labels < 1:
        raise MSRNError("--explain-labels must be at least 1")
    predictor = load_from_args(args, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                               device=args.device, fast=args.fast)
    explain_k = 0
    if args.explain:
        from msrn.explain import require_msrn, save_figure

        require_msrn(predictor.model, args.checkpoint)
        check_writable(args.explain)
        explain_k = args.explain_labels
    items = expand_inputs(args.inputs)  # an empty folder fails before any output starts
    output = _Output(args.format, args.out)
    failed, used = 0, set()
    for index, result in enumerate(predictor.iter_results(items, explain_k=explain_k)):
        record, expl = result.record, result.explanation
        if "error" in record:
            failed += 1
            print(f"msrn predict: {record['image']}: {record['error']}", file=sys.stderr)
        if expl is not None:
            path = _unique_png(Path(args.explain), record["image"], index, used)
            save_figure(expl, path)
            record["explanation"] = os.fspath(path)
        output.write(record)
    output.close()
    if args.explain:
        print(f"msrn predict: attention pictures in {args.explain}", file=sys.stderr)
    if failed:
        print(f"msrn predict: {failed} of {output.count} images could not be read", file=sys.stderr)
    return 1 if failed else 0
