"""Command-line options shared by the commands that run a trained model (evaluate, predict, serve, export):
each runtime flag declared once here, for training and tagging alike, with the choices both accept.

Kept at the base, below msrn.engine and msrn.inference, so that either may import it.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from typing import Any

# the values both `msrn train --amp` and the runtime flag accept, and those of --tta
AMP_MODES = ("none", "bf16", "fp16")
TTA_MODES = ("none", "flip")
# checkpoints that record no input size (the reference's) were trained and evaluated at 448 x 448
UNRECORDED_IMAGE_SIZE = 448


def out_of_bounds(value: float, low: float | None, high: float | None, bounds: str = "[]") -> str | None:
    """What `value` must be when it lies outside [low, high] (`bounds` "[]", "[)", "(]" or "()" says which ends
    are included; None: no bound) or is not finite, e.g. ">= 1" or "in (0, 1]"; None when it is a finite value
    inside them."""
    if low is None and high is None:
        allowed = "a finite number"
    elif high is None:
        allowed = f">= {low:g}" if bounds[0] == "[" else f"> {low:g}"
    elif low is None:
        allowed = f"<= {high:g}" if bounds[1] == "]" else f"< {high:g}"
    else:
        allowed = f"in {bounds[0]}{low:g}, {high:g}{bounds[1]}"
    if not math.isfinite(value):  # inf and NaN: no option means either
        return allowed if allowed.startswith("a ") else f"finite and {allowed}"
    too_low = low is not None and (value < low if bounds[0] == "[" else value <= low)
    too_high = high is not None and (value > high if bounds[1] == "]" else value >= high)
    return allowed if too_low or too_high else None


def bounded(
    kind: Callable[[str], Any], low: float | None = None, high: float | None = None, bounds: str = "[]"
) -> Callable[[str], Any]:
    """An argparse `type` that parses with `kind` (int, float) and refuses a value out of its bounds, so that
    `--port -1` is one usage line naming the flag and the allowed range (see out_of_bounds)."""

    def parse(text: str) -> Any:
        value = kind(text)
        allowed = out_of_bounds(value, low, high, bounds)
        if allowed is not None:
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


# flag name -> argparse settings; "{default}" in a help text is the command's default
RUNTIME_FLAGS: dict[str, dict[str, Any]] = {
    "device": dict(metavar="DEVICE", help="torch device: auto, cpu, cuda or cuda:N (default {default})"),
    "batch_size": dict(type=bounded(int, low=1), metavar="B", help="images per forward pass (default {default})"),
    "workers": dict(type=bounded(int, low=0), metavar="N", help="data-loading processes (default {default})"),
    "amp": dict(
        choices=AMP_MODES,
        help="mixed precision on GPU: none (default, exact fp32), bf16 or fp16, an "
        "explicit trade of accuracy for speed",
    ),
    "tta": dict(
        choices=TTA_MODES,
        help="test-time augmentation: none (default), or flip, the average of the logits "
        "of each image and its mirror (to reproduce a run trained with --tta flip)",
    ),
}


def add_checkpoint_arguments(parser: argparse.ArgumentParser, required: bool = True, labels: bool = True) -> None:
    """--checkpoint, a reference checkpoint's companion files and --image-size; --labels names the outputs of a
    reference checkpoint where no --dataset does."""
    parser.add_argument(
        "--checkpoint",
        required=required,
        metavar="SOURCE",
        help="a project checkpoint (best.pt, last.pt), a reference MSRN checkpoint "
        "(*_checkpoint.pth.tar), a model folder (msrn export --format hub) or a Hub model "
        "hf://OWNER/NAME[@REVISION]",
    )
    parser.add_argument(
        "--word-vectors",
        metavar="FILE",
        help="reference checkpoints: a word-vector pickle; default 'reference', the reference's own "
        "for the checkpoint's dataset (--dataset, else the one with its label count; fetched "
        "once, SHA-256 checked)",
    )
    parser.add_argument(
        "--cooccurrence",
        metavar="FILE",
        help="reference checkpoints: a co-occurrence pickle {'adj','nums'}; default 'reference', as for --word-vectors",
    )
    if labels:
        parser.add_argument(
            "--labels",
            metavar="FILE",
            help="label names, one per line, in output order (reference checkpoints store none; "
            "default: the names of the reference dataset with their count, in the reference's "
            "order)",
        )
    parser.add_argument(
        "--image-size",
        type=bounded(int, low=32),
        metavar="S",
        help=f"input side in pixels (default: the checkpoint's; {UNRECORDED_IMAGE_SIZE} for reference checkpoints)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The RUNTIME_FLAGS named, each with the command's default (e.g. device="cpu", batch_size=8)."""
    unknown = sorted(set(defaults) - set(RUNTIME_FLAGS))
    if unknown:
        raise ValueError(f"no runtime flag {', '.join(unknown)}")
    for name, default in defaults.items():
        spec = dict(RUNTIME_FLAGS[name])
        spec["help"] = spec["help"].format(default=default)
        parser.add_argument("--" + name.replace("_", "-"), default=default, **spec)


class _Deprecated(argparse.Action):
    """A flag that changes nothing any more: accepted, with a warning that says so."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warnings.warn(f"{option_string} is deprecated and does nothing: {self.help}", FutureWarning, stacklevel=2)


def add_deprecated_fast(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
    """--fast, once the option for the folded model: accepted with a warning that it is deprecated and does
    nothing (the folded model is the default; export writes the network as written either way)."""
    parser.add_argument(
        "--fast",
        action=_Deprecated,
        nargs=0,
        dest=argparse.SUPPRESS,
        help="it never changed anything (the folded model is the default); drop it from the command line",
    )


def add_fast_argument(parser: argparse.ArgumentParser) -> None:
    """--exact: the network as written instead of the default folded model.

    --fast, once the option for the folded model, warns that it is deprecated: the folded model is the default.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--exact",
        action="store_true",
        help="run the network as written (batch norm apart, default memory layout) instead of the "
        "default batch-norm-folded, channels-last copy: the same scores to float32 rounding, "
        "slower on CPU (see BENCHMARKS.md)",
    )
    add_deprecated_fast(group)
