"""The README's Python API, run as written: every ```python block, in a folder holding the files it names."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import msrn
from msrn.models import Loaded, create_model, model_state

README = Path(__file__).resolve().parents[1] / "README.md"
LABELS = ["cat", "dog", "person"]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the checkpoint and images the README names (runs/mine/best.pt, a.jpg, b.jpg)."""
    torch.manual_seed(0)
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    torch.save(
        model_state(create_model("msrn_tiny", labels=LABELS), image_size=64), tmp_path / "runs" / "mine" / "best.pt"
    )
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_block(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})  # noqa: S102 - our own README's code
    return out.getvalue()


def test_the_readme_has_its_api_blocks() -> None:
    blocks = python_blocks()
    assert any("msrn.load(" in b for b in blocks) and any("msrn.create_model(" in b for b in blocks)
    assert any("msrn.load_checkpoint(" in b for b in blocks)


def test_tagging_block_prints_each_image_with_its_labels(project: Path) -> None:
    (block,) = [b for b in python_blocks() if "msrn.load(" in b]
    lines = run_block(block).splitlines()
    assert [line.split()[0] for line in lines] == ["a.jpg", "b.jpg"]
    assert all(any(label in line for label in LABELS) or line.endswith("[]") for line in lines)


def test_build_and_load_block_runs_as_written(project: Path) -> None:
    (block,) = [b for b in python_blocks() if "msrn.load_checkpoint(" in b]
    printed = run_block(block)
    assert printed.strip() == f"{LABELS} 64 None"  # the checkpoint's labels, input size, no tuned thresholds


def test_public_names_resolve_and_the_loader_takes_a_checkpoint_dict() -> None:
    for name in msrn.__all__:
        assert getattr(msrn, name) is not None, name
    loaded = msrn.load_checkpoint(model_state(create_model("baseline_tiny", labels=LABELS), image_size=32))
    assert isinstance(loaded, Loaded) and loaded.model.labels == LABELS and loaded.image_size == 32
