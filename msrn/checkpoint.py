"""Checkpoint files, read without model knowledge: `read_checkpoint` loads any dict that torch.save wrote,
with `weights_only=True`, so a file cannot run code. What the keys mean (this project's layout or the
reference's) is msrn.models' concern: models._reference_layout maps, models._loading builds.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from msrn.errors import MSRNError

# what a project checkpoint says it is: {"format": FORMAT, "version": VERSION, ...}; version 1 kept the
# reference's module names (msrn.models._reference_layout maps them)
FORMAT = "msrn"
VERSION = 2


def _refusal_reason(message: str) -> str:
    """The informative part of torch's weights_only error, without its advice to load unsafely or allowlist."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)|(Trying to load unsupported GLOBAL.+)", message)
    if found:
        reason = found.group(1) or found.group(2)
    else:
        lines = message.strip().splitlines()
        reason = lines[-1] if lines else ""
    return reason.split(" Please use")[0].strip() or "not a tensors-only pickle"


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True; unreadable, truncated or code-carrying files give one line
    calling the file a `what` (a checkpoint, a label set: any dict that torch.save wrote)."""
    path = Path(path)
    if not path.is_file():
        raise MSRNError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol notice would precede the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _refusal_reason(str(e))
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # the PROTO opcode that starts a protocol 2+ pickle
        if not pickled and "GLOBAL" not in str(e):  # bytes that are no pickle at all
            raise MSRNError(
                f"{path} is not a readable {what} (truncated, corrupt or another format): {reason}"
            ) from None
        raise MSRNError(
            f"{path} is not a tensors-only {what} (it may carry code); refusing to load it ({reason})"
        ) from None
    except Exception as e:  # weights_only loading runs no foreign code; a damaged file fails in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MSRNError(f"{path} is not a readable {what} (truncated or corrupt?): {first}") from None
    if not isinstance(obj, dict):
        raise MSRNError(f"{path} is not a {what}: expected a dict, found {type(obj).__name__}")
    return obj
