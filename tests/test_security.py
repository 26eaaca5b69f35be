"""Untrusted files never run code: malicious checkpoints and pickles, end to end through the CLI."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import tiny_train_args

from msrn.cli import main as cli
from msrn.errors import MSRNError
from msrn.models import load_checkpoint


class Touch:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


class OpenForWriting:
    """Unpickling this creates the marker file with builtins.open."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return builtins.open, (str(self.marker), "w")


PAYLOADS = [Touch, OpenForWriting]


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    """A four-label CSV dataset; the images need not exist since loading is refused before any is read."""
    path = tmp_path / "data.csv"
    rows = [f"img/{i}.png,{'abcd'[i % 4]},{'train' if i < 8 else 'test'}" for i in range(12)]
    path.write_text("image,labels,split\n" + "\n".join(rows) + "\n")
    return path


def refused(capsys: pytest.CaptureFixture, argv: list[str], *words: str) -> str:
    """Run the CLI, expect exit 2 with one error line holding `words`, and return that line."""
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"msrn {argv[0]}: error:"), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def reference_layout(state_extra: dict | None = None) -> dict:
    """A reference-style checkpoint with just the keys the loader inspects (4 labels, resnet50 depth)."""
    state = {"fc2.weight": torch.zeros(4, 8), "group_embed.layers.0.assign_mat.W": torch.zeros(4, 1)}
    state.update({f"resnet_101.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(6)})
    return {"epoch": 3, "arch": "resnet101", "state_dict": {**state, **(state_extra or {})}, "best_score": 0.5}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("layout", ["zip", "legacy", "raw-pickle"])
def test_evaluate_refuses_code_carrying_checkpoint(
    tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture, payload: type, layout: str
) -> None:
    """`msrn evaluate --checkpoint evil.pt` in torch's zip, legacy and plain-pickle formats: refused, no effect."""
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    obj = {"format": "msrn", "state_dict": {"w": torch.zeros(1)}, "model": payload(marker)}
    if layout == "raw-pickle":
        evil.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, evil, _use_new_zipfile_serialization=layout == "zip")
    # torch's own formats name the payload's global; a protocol-4 plain pickle stops at its first frame
    words = (str(evil),) if layout == "raw-pickle" else (str(evil), "refusing")
    refused(
        capsys,
        ["evaluate", "--dataset", "csv", "--data", str(csv), "--checkpoint", str(evil), "--workers", "0"],
        *words,
    )
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_model_refuses_code_carrying_checkpoint(tmp_path: Path, payload: type) -> None:
    """The Python API (what `msrn predict` uses) refuses the same file with MSRNError."""
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save({"format": "msrn", "thresholds": payload(marker)}, evil)
    with pytest.raises(MSRNError, match="refusing to load"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_evaluate_refuses_reference_checkpoint_with_nested_object(
    tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture
) -> None:
    """A reference-layout checkpoint with a payload deep inside its state_dict is refused."""
    marker, evil = tmp_path / "marker", tmp_path / "voc_checkpoint.pth.tar"
    torch.save(reference_layout({"fc1.weight": [torch.zeros(1), {"x": Touch(marker)}]}), evil)
    refused(
        capsys,
        ["evaluate", "--dataset", "csv", "--data", str(csv), "--checkpoint", str(evil), "--workers", "0"],
        "refusing",
    )
    assert not marker.exists()


@pytest.mark.parametrize("option", ["--word-vectors", "--cooccurrence"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_evaluate_refuses_malicious_reference_pickles(
    tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture, option: str, payload: type
) -> None:
    """The reference's .pkl files go through the restricted unpickler: a payload in either is refused."""
    marker, ckpt = tmp_path / "marker", tmp_path / "voc_checkpoint.pth.tar"
    torch.save(reference_layout(), ckpt)
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, np.zeros((4, 300), np.float32))
    graph = tmp_path / "adj.pkl"
    graph.write_bytes(pickle.dumps({"adj": np.ones((4, 4)), "nums": np.full(4, 5.0)}))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"adj": np.eye(4), "nums": payload(marker)}))
    files = {"--word-vectors": str(vectors), "--cooccurrence": str(graph), option: str(evil)}
    argv = ["evaluate", "--dataset", "csv", "--data", str(csv), "--checkpoint", str(ckpt), "--workers", "0"]
    argv += [item for flag_value in files.items() for item in flag_value]
    refused(capsys, argv, str(evil), "refusing")
    assert not marker.exists()


@pytest.mark.parametrize("option", ["--word-vectors", "--cooccurrence"])
def test_train_refuses_malicious_pickles_before_training(
    tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture, option: str
) -> None:
    """`msrn train --word-vectors/--cooccurrence evil.pkl`: refused while the label set is built."""
    marker, evil = tmp_path / "marker", tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([Touch(marker)]))
    refused(
        capsys,
        tiny_train_args(csv, tmp_path / "run", option, str(evil)),
        str(evil),
        "refusing",
    )
    assert not marker.exists()
    assert not (tmp_path / "run" / "last.pt").exists()
