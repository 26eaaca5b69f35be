"""Command-line options of every command that loads a trained model (evaluate, predict, export, serve)."""
from __future__ import annotations

import argparse

from msrn.models.loading import REFERENCE_IMAGE_SIZE


def add_checkpoint_arguments(parser: argparse.ArgumentParser, required: bool = True, labels: bool = True) -> None:
    """--checkpoint, a reference checkpoint's companion files and --image-size; --labels names the outputs of a
    reference checkpoint where no --dataset does."""
    parser.add_argument("--checkpoint", required=required, metavar="SOURCE",
                        help="a project checkpoint (best.pt, last.pt), a reference MSRN checkpoint "
                             "(*_checkpoint.pth.tar), a model folder (msrn export --format hub) or a Hub model "
                             "hf://OWNER/NAME[@REVISION]")
    parser.add_argument("--word-vectors", metavar="FILE",
                        help="reference checkpoints: a word-vector pickle; default 'reference', the reference's own "
                             "for the checkpoint's dataset (--dataset, else the one with its label count; fetched "
                             "once, SHA-256 checked)")
    parser.add_argument("--cooccurrence", metavar="FILE",
                        help="reference checkpoints: a co-occurrence pickle {'adj','nums'}; default 'reference', as "
                             "for --word-vectors")
    if labels:
        parser.add_argument("--labels", metavar="FILE",
                            help="label names, one per line, in output order (reference checkpoints store none; "
                                 "default: the names of the reference dataset with their count, in the reference's "
                                 "order)")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help=f"input side in pixels (default: the checkpoint's; {REFERENCE_IMAGE_SIZE} for reference "
                             "checkpoints)")


def add_fast_argument(parser: argparse.ArgumentParser) -> None:
    """--exact: the spec's literal computation instead of the default folded model.

    --fast, once the option for the folded model, is the default now and stays accepted.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exact", action="store_true",
                       help="run the network as written (batch norm apart, default memory layout) instead of the "
                            "default batch-norm-folded, channels-last copy: the same scores to float32 rounding, "
                            "slower on CPU (see BENCHMARKS.md)")
    group.add_argument("--fast", action="store_true", help="the folded model: the default (kept for old command lines)")
