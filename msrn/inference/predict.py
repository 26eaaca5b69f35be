"""`msrn predict`: tag image files, folders and lists with a checkpoint or an ONNX file, as JSON or CSV.

Records are those of `msrn.inference.predictor` (one per image, best labels first); an image that
cannot be read gets an error record and the others go on.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from msrn.errors import MSRNError
from msrn.inference.args import decoding_options
from msrn.inference.draw import save_explanation
from msrn.inference.explain import require_explainable
from msrn.inference.onnx_predict import OnnxPredictor
from msrn.inference.predictor import load_from_args
from msrn.inference.tagging import expand_inputs, read_path_list
from msrn.io import atomic_write_text, check_writable
from msrn.options import (
    CheckpointOptions,
    add_options,
    batch_size_option,
    checkpoint_option,
    device_option,
    exact_option,
    exif_orientation_option,
    max_megapixels_option,
    option,
    threshold_option,
    tta_option,
)

EPILOG = (
    "Label selection: a label is reported when its probability >= its threshold; then --top-k\n"
    "keeps the K best of those. Both apply. `--threshold 0 --top-k 5` gives the 5 best labels\n"
    "whatever their scores; `--threshold 0` alone lists every label (models of more than 100\n"
    "labels keep the 20 best unless --top-k says otherwise).\n"
    'Output: json is a list with one record per image, {"image", "labels": [{"label", "score"}]},\n'
    "labels by descending score; csv has columns image,label,score,error with one row per label\n"
    "(one row with an empty label for an image with none). With --explain each JSON record also\n"
    'names its picture ("explanation"). An unreadable image gets an error record and the rest\n'
    "go on; the exit status is then 1."
)


@dataclass(frozen=True, kw_only=True)
class PredictOptions(CheckpointOptions):
    """Options of `msrn predict` (EPILOG says how labels are selected and what is written)."""

    checkpoint: str | None = checkpoint_option(required=False)  # or --onnx
    onnx: str | None = option(
        None,
        "tag with a model exported by `msrn export` instead of a checkpoint (onnxruntime; labels, thresholds "
        "and input size come from the file)",
        metavar="FILE",
    )
    inputs: tuple[str, ...] = option(
        (), "image files and/or folders (walked)", metavar="IMAGE_OR_FOLDER", positional=True
    )
    list: tuple[str, ...] = option(
        (),
        "a text file listing image paths, one a line ('-' reads standard input); repeatable",
        metavar="FILE",
        repeat=True,
    )
    format: str = option("json", "output format (default json)", choices=("json", "csv"))
    out: str | None = option(None, "write the output here (atomically) instead of stdout", metavar="FILE")
    threshold: float | None = threshold_option(
        "report labels with probability >= T (default: the checkpoint's per-label thresholds if it has them, else 0.5)"
    )
    top_k: int | None = option(
        None,
        "report at most the K best labels passing the threshold (default: all; 20 for models of more than 100 labels)",
        low=1,
        metavar="K",
    )
    explain: str | None = option(
        None, "write one PNG per image to DIR: attention of its top labels at each depth read", metavar="DIR"
    )
    explain_labels: int = option(
        3, "how many top-scoring labels --explain shows per image (default 3)", low=1, metavar="N"
    )
    batch_size: int = batch_size_option(8)
    device: str = device_option("cpu")
    tta: str = tta_option()
    exact: bool = exact_option()
    exif_orientation: str | None = exif_orientation_option()
    max_megapixels: float = max_megapixels_option()

    def check(self) -> None:
        if self.explain and self.tta != "none":
            raise MSRNError("--explain draws one forward pass of the image as given; it does not combine with --tta")
        if (self.checkpoint is None) == (self.onnx is None):
            raise MSRNError("give either --checkpoint or --onnx")
        given = self.given("word_vectors", "cooccurrence", "labels", "image_size", "explain", "exact", "tta")
        if self.onnx is not None and given:
            raise MSRNError(
                f"{', '.join(given)} cannot be used with --onnx: the file fixes its labels, input size "
                "and computation, and holds no attention maps"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn predict`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_options(parser, PredictOptions)


PROGRESS_FROM = 32  # inputs from which a progress bar is shown (on a terminal)


class _Output:
    """Streams records as JSON or CSV to stdout, or collects them for one atomic write to a file."""

    def __init__(self, fmt: str, out: str | None) -> None:
        self.fmt, self.path = fmt, out
        self.sink: TextIO = io.StringIO() if out else sys.stdout
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
            atomic_write_text(self.path, self.sink.getvalue())  # type: ignore[attr-defined]  # the StringIO of --out
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


def _load(args: PredictOptions) -> Any:
    """The Predictor of --checkpoint, or the OnnxPredictor of --onnx (exactly one of them)."""
    options = dict(threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size, **decoding_options(args))
    if args.onnx is not None:
        return OnnxPredictor(args.onnx, **options)
    return load_from_args(args, device=args.device, fast=not args.exact, tta=args.tta, **options)


def main(args: argparse.Namespace | PredictOptions) -> int:
    """Run `msrn predict`: load, tag every input, write records (and attention pictures)."""
    args = PredictOptions.from_args(args)
    inputs = [*args.inputs, *(path for listed in args.list for path in read_path_list(listed))]
    if not inputs:
        raise MSRNError("no images given: name image files or folders, or --list FILE")
    predictor = _load(args)
    explain_k, folder = 0, Path(args.explain or ".")
    if args.explain:
        require_explainable(predictor.model, str(args.checkpoint))  # --explain goes with --checkpoint only (check)
        check_writable(folder)
        explain_k = args.explain_labels
    items = expand_inputs(inputs)  # an empty folder fails before any output starts
    output = _Output(args.format, args.out)
    failed, used = 0, set[str]()
    results = predictor.iter_results(items, explain_k=explain_k)
    with tqdm(
        total=len(items),
        desc="predict",
        unit="img",
        leave=False,
        file=sys.stderr,
        disable=None if len(items) >= PROGRESS_FROM else True,
    ) as bar:
        for index, result in enumerate(results):
            record, expl = result.record, result.explanation
            if "error" in record:
                failed += 1
                bar.write(f"msrn predict: {record['image']}: {record['error']}", file=sys.stderr)
            if expl is not None:
                path = _unique_png(folder, record["image"], index, used)
                save_explanation(expl, path)
                record["explanation"] = os.fspath(path)
            output.write(record)
            bar.update()
    output.close()
    if args.explain:
        print(f"msrn predict: attention pictures in {args.explain}", file=sys.stderr)
    if failed:
        print(f"msrn predict: {failed} of {output.count} images could not be read", file=sys.stderr)
    return 1 if failed else 0
