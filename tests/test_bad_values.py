"""A numeric option given a value out of its bounds (or not a number at all) is one line on stderr that names the
flag, with exit status 2, for every command: never a traceback, nothing run."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from msrn.cli import main as cli
from msrn.engine.config import TrainConfig
from msrn.errors import MSRNError, setting_up


def numeric_fields() -> list[dataclasses.Field]:
    """TrainConfig's int and float fields (tuples of them included)."""
    hints = typing.get_type_hints(TrainConfig)
    return [f for f in dataclasses.fields(TrainConfig) if {int, float} & set(_leaves(hints[f.name]))]


def _leaves(hint: object) -> list[object]:
    args = typing.get_args(hint)
    return [leaf for a in args for leaf in _leaves(a)] if args else [hint]


def outside(field: dataclasses.Field) -> list[str]:
    """Values 1 outside the field's declared bounds, as the command line spells them (an excluded end is not one
    of them: `--ema 0` means off)."""
    low, high = field.metadata["low"], field.metadata["high"]
    return [str(v) for v in (None if low is None else low - 1, None if high is None else high + 1) if v is not None]


def test_every_numeric_training_option_declares_its_bounds() -> None:
    unbounded = [
        f.name
        for f in numeric_fields()
        if f.metadata["low"] is None and f.metadata["high"] is None and f.metadata["choices"] is None
    ]
    assert unbounded == []


TRAIN = ["train", "--dataset", "synthetic"]
CHECKPOINT = ["--checkpoint", "missing.pt"]
CASES: list[tuple[list[str], str]] = [
    *[
        ([*TRAIN, "--" + f.name.replace("_", "-"), value], "--" + f.name.replace("_", "-"))
        for f in numeric_fields()
        if f.metadata["choices"] is None
        for value in outside(f)
    ],
    ([*TRAIN, "--lr", "-0.1"], "--lr"),  # torch's ValueError ("Invalid learning rate") with a traceback before
    ([*TRAIN, "--lr", "nan"], "--lr"),
    ([*TRAIN, "--weight-decay", "inf"], "--weight-decay"),
    ([*TRAIN, "--lr", "fast"], "--lr"),
    ([*TRAIN, "--depths", "4"], "--depths"),
    ([*TRAIN, "--momentum", "1"], "--momentum"),  # the excluded ends
    ([*TRAIN, "--pool-ratio", "0"], "--pool-ratio"),
    ([*TRAIN, "--val-fraction", "1"], "--val-fraction"),
    ([*TRAIN, "--crop-scales", "1", "0"], "--crop-scales"),
    ([*TRAIN, "--lr-gamma", "0"], "--lr-gamma"),
    (["predict", *CHECKPOINT, "a.jpg", "--batch-size", "0"], "--batch-size"),
    (["predict", *CHECKPOINT, "a.jpg", "--top-k", "0"], "--top-k"),
    (["predict", *CHECKPOINT, "a.jpg", "--threshold", "1.5"], "--threshold"),
    (["predict", *CHECKPOINT, "a.jpg", "--explain-labels", "0"], "--explain-labels"),
    (["predict", *CHECKPOINT, "a.jpg", "--image-size", "8"], "--image-size"),
    (["predict", *CHECKPOINT, "a.jpg", "--max-megapixels", "0"], "--max-megapixels"),
    (["evaluate", "--dataset", "csv", "--data", "my.csv", *CHECKPOINT, "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--dataset", "csv", "--data", "my.csv", *CHECKPOINT, "--image-size", "8"], "--image-size"),
    (["evaluate", "--dataset", "csv", "--data", "my.csv", *CHECKPOINT, "--workers", "-2"], "--workers"),
    (["serve", *CHECKPOINT, "--port", "70000"], "--port"),
    (["serve", *CHECKPOINT, "--queue", "0"], "--queue"),
    (["serve", *CHECKPOINT, "--batch-wait-ms", "-1"], "--batch-wait-ms"),
    (["serve", *CHECKPOINT, "--max-upload-mb", "0"], "--max-upload-mb"),
    (["serve", *CHECKPOINT, "--explain-labels", "-1"], "--explain-labels"),
    (["serve", *CHECKPOINT, "--threshold", "-0.5"], "--threshold"),
    (["serve", *CHECKPOINT, "--grace", "-1"], "--grace"),
    (["export", *CHECKPOINT, "--out", "m.onnx", "--opset", "16"], "--opset"),
    (["export", *CHECKPOINT, "--out", "m.onnx", "--image-size", "8"], "--image-size"),
    (["labels", "--dataset", "csv", "--data", "my.csv", "--tau", "1.5"], "--tau"),
    (["labels", "--dataset", "csv", "--data", "my.csv", "--reweight", "-1"], "--reweight"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--workers", "-1"], "--workers"),
    (["compare", "--val-fraction", "0"], "--val-fraction"),  # epochs are selected on it: it cannot be empty
    (["compare", "--seeds", "0", "-1"], "--seeds"),
    (["compare", "--scenes-size", "24", "0", "64"], "--scenes-size"),
]


@pytest.mark.parametrize(("argv", "flag"), CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_value_is_one_line_naming_its_flag(
    argv: list[str], flag: str, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written, and if it were, not into the repository
    monkeypatch.setenv("MSRN_CACHE", str(tmp_path / "cache"))
    try:
        status = cli(argv)
    except SystemExit as e:  # argparse's usage error
        status = e.code
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"msrn {argv[0]}: error:")
    assert flag in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_value_torch_refuses_while_setting_up_is_one_line_naming_it() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(MSRNError, match=r"^cannot start: Invalid learning rate: -0\.1$"):
        with setting_up():
            torch.optim.SGD([weight], lr=-0.1)
