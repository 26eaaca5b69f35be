"""How far a reader climbs from a flag to weights in a model: the msrn files and hops on the loading path.

    python benchmarks/trace_loading.py

Traces (sys.settrace) `msrn predict --checkpoint`, `msrn export`, `msrn.load` and `msrn.load_checkpoint` on a
tiny checkpoint. The path is what a reader follows: the msrn files on the call stack when torch.load reads the
file, then those on the stack when load_state_dict puts the weights in. A hop is a step from one file to the next
along it; a climb, a step from a lower layer (base < data < labels < models < engine < inference) into a higher
one; a back-up, a file the read returns from before the weights go in. Prints one line per entry. For another
checkout: `cd /tmp && PYTHONPATH=/path/to/checkout python /path/to/benchmarks/trace_loading.py`.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from PIL import Image

import msrn
import msrn.models
from msrn.cli import main as cli_main
from msrn.models import create_model

# the model part of a checkpoint: public in msrn.models since the registry, in msrn.models.loading before
model_state = getattr(msrn.models, "model_state", None) or importlib.import_module("msrn.models.loading").model_state

ROOT = Path(msrn.__file__).resolve().parent
LAYERS = ("data", "labels", "models", "engine", "inference")


def layer(file: str) -> int:
    """0 for the base modules (msrn/*.py), then data, labels, models, engine, inference."""
    parts = Path(file).parts
    return (
        LAYERS.index(parts[0]) + 1 if len(parts) > 1 and parts[0] in LAYERS else (6 if parts[0] in ("cli.py",) else 0)
    )


def _msrn_stack(frame: FrameType | None) -> list[str]:
    """The msrn files on the call stack above `frame`, outermost first, repeats in a row merged."""
    stack: list[str] = []
    while frame is not None:
        if frame.f_code.co_filename.startswith(str(ROOT)):
            name = str(Path(frame.f_code.co_filename).relative_to(ROOT))
            if not stack or stack[-1] != name:
                stack.append(name)
        frame = frame.f_back
    return stack[::-1]


def trace(entry: Callable[[], Any]) -> tuple[list[str], int, int, int]:
    """(the path's files, its hops, its calls up a layer, its files left behind to come back down) from the entry
    to weights in a model.

    The path is what a reader follows: the msrn files on the stack when torch.load reads the file, then those
    on the stack when load_state_dict puts the weights in (past their common start). A hop is a step from one
    file to the next along it; a climb, a step from a lower layer into a higher one."""
    stacks: list[list[str]] = []

    def tracer(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and "torch" in code.co_filename and len(stacks) < 2:
            if (code.co_name == "load" and code.co_filename.endswith("serialization.py") and not stacks) or (
                code.co_name == "load_state_dict" and len(stacks) == 1
            ):
                stacks.append(_msrn_stack(frame.f_back))
        return None

    sys.settrace(tracer)
    try:
        entry()
    finally:
        sys.settrace(None)
    read, weights = (stacks + [[], []])[:2]
    common = next((i for i, (a, b) in enumerate(zip(read, weights)) if a != b), min(len(read), len(weights)))
    steps = list(zip(read, read[1:])) + list(zip(weights[common - 1 : -1], weights[common:]))
    path = read + weights[common:]
    return path, len(steps), sum(layer(b) > layer(a) for a, b in steps), len(read) - common


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny.pt"
        model = create_model("msrn_tiny", labels=["a", "b", "c"])
        torch.save(model_state(model, image_size=64), ckpt)
        image = Path(tmp) / "x.png"
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
        entries: dict[str, Callable[[], Any]] = {
            "msrn predict --checkpoint": lambda: cli_main(
                ["predict", "--checkpoint", str(ckpt), str(image), "--out", str(Path(tmp) / "out.json")]
            ),
            "msrn export": lambda: cli_main(["export", "--checkpoint", str(ckpt), "--out", str(Path(tmp) / "m.onnx")]),
            "msrn.load": lambda: msrn.load(ckpt),
            "msrn.models.load_checkpoint": lambda: msrn.load_checkpoint(ckpt),
        }
        for what, entry in entries.items():
            path, hops, climbs, backups = trace(entry)
            print(
                f"{what}: {len(set(path))} files, {hops} hops, {climbs} calls up a layer, {backups} back-ups: "
                + " -> ".join(path)
            )


if __name__ == "__main__":
    main()
