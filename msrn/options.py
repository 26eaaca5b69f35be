"""One option system for every command: each option is a typed field of the command's frozen dataclass,
declared once with `option(default, help, low=..., high=..., choices=...)`; its flag, its parsing and its
checks follow from that declaration (`add_options` is the only code that makes flags).

The options several commands share (the checkpoint, the device, the decoding of images...) are declared
here once, as functions that return a fresh field, so that each command can give its own default.
Kept at the base, below msrn.data, msrn.engine and msrn.inference, so that every layer may import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS

# the values both `msrn train --amp` and the runtime flag accept, and those of --tta
AMP_MODES = ("none", "bf16", "fp16")
TTA_MODES = ("none", "flip")
# checkpoints that record no input size (the reference's) were trained and evaluated at 448 x 448
UNRECORDED_IMAGE_SIZE = 448
MIN_IMAGE_SIZE = 32
RETIRED_FAST = "it never changed anything (the folded model is the default); drop it from the command line"

_O = TypeVar("_O", bound="Options")


def option(
    default: Any = None,
    help: str | None = None,
    *,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    bounds: str = "[]",
    metavar: str | tuple[str, ...] | None = None,
    count: int | None = None,
    factory: Any = None,
    required: bool = False,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    positional: bool = False,
    repeat: bool = False,
    const: Any = None,
    retired: dict[str, str] | None = None,
) -> Any:
    """A field with its command-line option declared on it.

    help: the flag's help; choices: the allowed values (of each element of a tuple); low, high: the bounds,
    `bounds` "[]", "[)", "(]" or "()" saying which ends are included; required: the flag must be given;
    flag: its spelling when not the field's name (aliases: other spellings); positional: the command's
    positional arguments; count: how many values a tuple field takes (default: one or more); repeat: the flag
    may be given several times (a tuple field); const: the value of
    the flag given with no value; retired: flags that once meant this and now only warn (flag -> why).
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "low": low,
        "high": high,
        "bounds": bounds,
        "metavar": metavar,
        "count": count,
        "required": required,
        "flag": flag,
        "aliases": tuple(aliases),
        "positional": positional,
        "repeat": repeat,
        "const": const,
        "retired": dict(retired or {}),
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The flag a field is given by on the command line."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


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


def check_field(f: dataclasses.Field, value: Any) -> None:
    """One line unless every value of the field (each element of a tuple) is among its choices and in its bounds."""
    meta = f.metadata
    for v in value if isinstance(value, tuple) else (value,):
        if v is None:
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise MSRNError(f"{flag_of(f)} must be one of {', '.join(map(str, meta['choices']))}, not {value!r}")
        low, high = meta.get("low"), meta.get("high")
        allowed = None if low is None and high is None else out_of_bounds(v, low, high, meta.get("bounds", "[]"))
        if allowed is not None:
            shown = list(value) if isinstance(value, tuple) else value
            raise MSRNError(f"{flag_of(f)} must be {allowed}, not {shown}")


def check_fields(values: Any) -> None:
    """Check every field of a dataclass instance against its declaration: required, choices, bounds."""
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        if f.metadata.get("required") and value is None:
            raise MSRNError(f"{flag_of(f)} is required")
        check_field(f, value)


@dataclass(frozen=True, kw_only=True)
class Options:
    """The base of each command's options: made from keywords (the Python API) or parsed flags (the CLI),
    and checked when made, field by field and then by the command's own `check`."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """The command's checks that involve several options (none by default)."""

    def given(self, *names: str) -> list[str]:
        """The flags of the named fields set away from their defaults, in that order: the options a check
        refuses together with another."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        return [flag_of(fields[name]) for name in names if getattr(self, name) != fields[name].default]

    @classmethod
    def from_args(cls: type[_O], args: argparse.Namespace | _O) -> _O:
        """The options of parsed arguments (given options are returned as they are)."""
        if isinstance(args, cls):
            return args
        return cls(**field_values(cls, args))


def field_values(cls: type, args: Any) -> dict[str, Any]:
    """The values of `cls`'s fields that `args` holds, lists made tuples (as the fields declare)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _flag_type(hint: Any) -> tuple[Any, bool]:
    """The element type a flag parses and whether it takes several values, from a field's resolved type
    (`int`, `float | None`, `tuple[int, ...]`, ...)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):  # X | None: the flag parses X
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


class _Retired(argparse.Action):
    """A flag that changes nothing any more: accepted, with a warning that says so."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warnings.warn(f"{option_string} is deprecated and does nothing: {self.help}", FutureWarning, stacklevel=2)


def add_options(parser: argparse.ArgumentParser, cls: type, overlay: bool = False, skip: Sequence[str] = ()) -> None:
    """One command-line option per field of the dataclass `cls` (but those in `skip`), made from the field's
    type and declaration: the only place where flags are made.

    overlay: every flag left out parses as None (booleans get --no-X too), so that values from below
    (a preset, a config file) show through; otherwise a flag left out gives the field's default.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        kind, several = _flag_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING and not overlay:
            default = f.default_factory()
        kw: dict[str, Any] = {"help": meta["help"], "default": None if overlay else default}
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        if meta["choices"] is not None:
            kw["choices"] = list(meta["choices"])
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction if overlay or default else "store_true"
        elif kind in (int, float):
            kw["type"] = kind
        if meta["const"] is not None:
            kw.update(nargs="?", const=meta["const"])
        if several:
            if meta["repeat"]:
                kw.update(action="append", default=None if overlay else [])
            else:
                kw["nargs"] = meta["count"] or ("*" if meta["positional"] else "+")
        if meta["positional"]:
            if several:
                del kw["default"]  # nargs="*" gives []
            parser.add_argument(f.name, **kw)
            continue
        if meta["required"] and not overlay:
            kw["required"] = True
        names = [flag_of(f), *meta["aliases"]]
        if names[0] in meta["retired"]:  # the field is only a retired flag: it warns and sets nothing
            parser.add_argument(names[0], action=_Retired, nargs=0, dest=argparse.SUPPRESS, help=meta["help"])
            continue
        if not meta["retired"]:
            parser.add_argument(*names, dest=f.name, **kw)
            continue
        group = parser.add_mutually_exclusive_group()
        group.add_argument(*names, dest=f.name, **kw)
        for old, why in meta["retired"].items():
            group.add_argument(old, action=_Retired, nargs=0, dest=argparse.SUPPRESS, help=why)


def add_version_option(parser: argparse.ArgumentParser, version: str) -> None:
    """--version: print `version` and exit (the `msrn` command's only option of its own)."""
    parser.add_argument("--version", action="version", version=version)


# ----------------------------------------------------------- options that several commands declare


def checkpoint_option(required: bool = True) -> Any:
    """--checkpoint: the model to load, in any of the forms msrn reads."""
    return option(
        None,
        "a project checkpoint (best.pt, last.pt), a reference MSRN checkpoint (*_checkpoint.pth.tar), a model "
        "folder (msrn export --format hub) or a Hub model hf://OWNER/NAME[@REVISION]",
        metavar="SOURCE",
        required=required,
    )


def reference_word_vectors_option() -> Any:
    """--word-vectors of a command that loads a checkpoint."""
    return option(
        None,
        "reference checkpoints: a word-vector pickle; default 'reference', the reference's own for the "
        "checkpoint's dataset (--dataset, else the one with its label count; fetched once, SHA-256 checked)",
        metavar="FILE",
    )


def reference_cooccurrence_option() -> Any:
    """--cooccurrence of a command that loads a checkpoint."""
    return option(
        None,
        "reference checkpoints: a co-occurrence pickle {'adj','nums'}; default 'reference', as for --word-vectors",
        metavar="FILE",
    )


def label_names_option() -> Any:
    """--labels: the output names of a reference checkpoint."""
    return option(
        None,
        "label names, one per line, in output order (reference checkpoints store none; default: the names of "
        "the reference dataset with their count, in the reference's order)",
        metavar="FILE",
    )


def image_size_option() -> Any:
    """--image-size of a command that loads a checkpoint (default: the checkpoint's)."""
    return option(
        None,
        f"input side in pixels (default: the checkpoint's; {UNRECORDED_IMAGE_SIZE} for reference checkpoints)",
        low=MIN_IMAGE_SIZE,
        metavar="S",
    )


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions(Options):
    """The model a command loads and how its checkpoint is read: the options predict, serve, export and push
    share (declared once here; a command overrides a field only to change its default)."""

    checkpoint: str | None = checkpoint_option()  # required unless a command says otherwise
    word_vectors: str | None = reference_word_vectors_option()
    cooccurrence: str | None = reference_cooccurrence_option()
    labels: str | None = label_names_option()
    image_size: int | None = image_size_option()


def device_option(default: str) -> Any:
    """--device."""
    return option(default, f"torch device: auto, cpu, cuda or cuda:N (default {default})", metavar="DEVICE")


def batch_size_option(default: int, help: str = "images per forward pass") -> Any:
    """--batch-size of a command that runs a model."""
    return option(default, f"{help} (default {default})", low=1, metavar="B")


def workers_option(default: int) -> Any:
    """--workers: data-loading processes."""
    return option(default, f"data-loading processes (default {default})", low=0, metavar="N")


def amp_option() -> Any:
    """--amp."""
    return option(
        "none",
        "mixed precision on GPU: none (default, exact fp32), bf16 or fp16, an explicit trade of accuracy for speed",
        choices=AMP_MODES,
    )


def tta_option(help: str | None = None) -> Any:
    """--tta."""
    return option(
        "none",
        help
        or "test-time augmentation: none (default), or flip, the average of the logits of each image and its "
        "mirror (to reproduce a run trained with --tta flip)",
        choices=TTA_MODES,
    )


def exact_option() -> Any:
    """--exact: the network as written instead of the default folded model (--fast, the old spelling of the
    folded model, only warns)."""
    return option(
        False,
        "run the network as written (batch norm apart, default memory layout) instead of the default "
        "batch-norm-folded, channels-last copy: the same scores to float32 rounding, slower on CPU "
        "(see BENCHMARKS.md)",
        retired={"--fast": RETIRED_FAST},
    )


def retired_fast_option() -> Any:
    """--fast on a command without --exact (export): accepted with a warning, and nothing else."""
    return option(False, RETIRED_FAST, retired={"--fast": RETIRED_FAST}, flag="--fast")


def threshold_option(help: str) -> Any:
    """--threshold: one probability for every label."""
    return option(None, help, low=0, high=1, metavar="T")


def exif_orientation_option() -> Any:
    """--exif-orientation: how image files are decoded."""
    return option(
        None,
        "turn photos upright by their EXIF orientation tag (default: as the checkpoint's training did; on for "
        "reference and older checkpoints)",
        choices=("on", "off"),
    )


def max_megapixels_option() -> Any:
    """--max-megapixels: the largest image decoded."""
    return option(
        DEFAULT_MAX_PIXELS / 1e6,
        "refuse images larger than MP megapixels, read from the file's header before decoding "
        f"(default {DEFAULT_MAX_PIXELS / 1e6:g})",
        low=0,
        bounds="(]",
        metavar="MP",
    )
