"""How far a reader climbs from a flag to weights in a model: the msrn files and hops on the loading path.

    python benchmarks/trace_loading.py

Traces (sys.settrace) `msrn predict --checkpoint`, `msrn.load` and `msrn.models.load_checkpoint` on a tiny
checkpoint, from the entry call until the model's `load_state_dict` runs. The path is the chain of msrn files
on the call stack at that moment (what a reader follows); a hop is a call from one file into another along the
whole trace; a climb is a call from a lower layer (base < data < labels < models < engine < inference) into a
higher one. Prints one line per entry.
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
    parts = Path(file).relative_to(ROOT).parts
    return (
        LAYERS.index(parts[0]) + 1 if len(parts) > 1 and parts[0] in LAYERS else (6 if parts[0] in ("cli.py",) else 0)
    )


def trace(entry: Callable[[], Any]) -> tuple[list[str], int, int]:
    """(files on the stack when load_state_dict starts, hops between files, climbs to a higher layer)."""
    path: list[str] = []
    hops = climbs = 0
    done = False

    def tracer(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal hops, climbs, done
        if done or event != "call":
            return None
        code = frame.f_code
        if code.co_name == "load_state_dict" and "torch" in code.co_filename:
            stack: list[str] = []
            f = frame.f_back
            while f is not None:
                if f.f_code.co_filename.startswith(str(ROOT)):
                    name = str(Path(f.f_code.co_filename).relative_to(ROOT))
                    if not stack or stack[-1] != name:
                        stack.append(name)
                f = f.f_back
            path.extend(reversed(stack))
            done = True
            return None
        caller = frame.f_back
        here = code.co_filename
        if caller is None or not here.startswith(str(ROOT)) or not caller.f_code.co_filename.startswith(str(ROOT)):
            return None
        if caller.f_code.co_filename != here and not code.co_name.startswith("<"):
            hops += 1
            climbs += layer(here) > layer(caller.f_code.co_filename)
        return None

    sys.setprofile(None)
    sys.settrace(tracer)
    try:
        entry()
    finally:
        sys.settrace(None)
    return path, hops, climbs


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
            "msrn.load": lambda: msrn.load(ckpt),
            "msrn.models.load_checkpoint": lambda: msrn.load_checkpoint(ckpt),
        }
        for what, entry in entries.items():
            path, hops, climbs = trace(entry)
            print(f"{what}: {len(set(path))} files on the path, {hops} hops, {climbs} climbs: {' -> '.join(path)}")


if __name__ == "__main__":
    main()
