"""The one option system: every command's options are typed fields (msrn.options.option) whose flags, bounds
and help come from that declaration, the same for the command line and the Python API."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import typing
from pathlib import Path

import pytest
from data_helpers import make_csv, tiny_train_args

from msrn.cli import COMMANDS, build_parser
from msrn.cli import main as cli
from msrn.data.inspect import InspectOptions
from msrn.engine.config import TrainConfig, config_from_args, preset_config
from msrn.errors import MSRNError
from msrn.inference.export import ExportOptions
from msrn.inference.predict import PredictOptions
from msrn.labels.report import LabelsOptions
from msrn.options import Options


def command_options() -> list[type]:
    """The option classes of every command (TrainConfig is train's)."""
    found: list[type] = [TrainConfig]
    for module, _ in COMMANDS.values():
        try:
            loaded = importlib.import_module(module)
        except ImportError:  # an optional extra that is not installed: its command is not available
            continue
        found += [
            v for v in vars(loaded).values() if isinstance(v, type) and issubclass(v, Options) and v is not Options
        ]
    return sorted(set(found), key=lambda c: c.__qualname__)


def numeric(hint: typing.Any) -> bool:
    """Whether a field's type is a number, a number or None, or a tuple of numbers."""
    args = [a for a in typing.get_args(hint) if a not in (type(None), Ellipsis)] or [hint]
    return any(a in (int, float) for a in args)


@pytest.mark.parametrize("cls", command_options(), ids=lambda c: c.__qualname__)
def test_every_option_has_help_and_every_number_bounds(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__qualname__}.{f.name} has no help"
        if numeric(hints[f.name]):
            bounded = [f.metadata.get(k) for k in ("low", "high", "choices")]
            assert any(b is not None for b in bounded), f"{cls.__qualname__}.{f.name} declares no bounds"


def test_flags_and_keywords_make_the_same_options() -> None:
    argv = ["predict", "x.png", "y.png", "--checkpoint", "m.pt", "--threshold", "0.3", "--top-k", "2",
            "--list", "a.txt", "--list", "b.txt", "--exact", "--format", "csv"]  # fmt: skip
    parsed = PredictOptions.from_args(build_parser("predict").parse_args(argv))
    made = PredictOptions(
        checkpoint="m.pt",
        inputs=("x.png", "y.png"),
        threshold=0.3,
        top_k=2,
        list=("a.txt", "b.txt"),
        exact=True,
        format="csv",
    )
    assert parsed == made


def test_flags_left_out_give_the_declared_defaults() -> None:
    parsed = InspectOptions.from_args(
        build_parser("inspect").parse_args(["inspect", "--dataset", "csv", "--data", "d"])
    )
    assert parsed == InspectOptions(dataset="csv", data="d")
    assert (parsed.split, parsed.json, parsed.keep_unannotated) == (None, False, False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PredictOptions(checkpoint="m.pt", threshold=1.5), r"--threshold must be in \[0, 1\], not 1.5"),
        (lambda: PredictOptions(checkpoint="m.pt", top_k=0), "--top-k must be >= 1, not 0"),
        (lambda: PredictOptions(checkpoint="m.pt", max_megapixels=0.0), "--max-megapixels must be > 0, not 0"),
        (lambda: PredictOptions(checkpoint="m.pt", image_size=16), "--image-size must be >= 32, not 16"),
        (lambda: PredictOptions(checkpoint="m.pt", format="xml"), "--format must be one of json, csv, not 'xml'"),
        (lambda: LabelsOptions(dataset="csv", data="d", tau=0.0), r"--tau must be in \(0, 1\], not 0"),
        (lambda: ExportOptions(checkpoint="m.pt"), "--out is required"),
        (lambda: ExportOptions(checkpoint="m.pt", out="m.onnx", opset=11), "--opset must be >= 17, not 11"),
        (lambda: PredictOptions(), "give either --checkpoint or --onnx"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_flag(make: typing.Callable[[], object], message: str) -> None:
    with pytest.raises(MSRNError, match=message):
        make()


def test_the_command_line_checks_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoint does not exist: the bad --top-k is reported first, from its declaration."""
    assert cli(["predict", "--checkpoint", "missing.pt", "--top-k", "0", "a.png"]) == 2
    assert capsys.readouterr().err.strip() == "msrn predict: error: --top-k must be >= 1, not 0"


def test_a_retired_flag_warns_and_excludes_its_successor() -> None:
    parser = build_parser("evaluate")
    argv = ["evaluate", "--dataset", "csv", "--data", "d", "--checkpoint", "c.pt"]
    with pytest.warns(FutureWarning, match="--fast is deprecated and does nothing"):
        args = parser.parse_args([*argv, "--fast"])
    assert args.exact is False
    with pytest.warns(FutureWarning), pytest.raises(SystemExit):
        parser.parse_args([*argv, "--fast", "--exact"])


# ------------------------------------------------------------------ msrn train --config FILE


def train_config(*argv: str) -> TrainConfig:
    """The TrainConfig a `msrn train` command line describes."""
    return config_from_args(build_parser("train").parse_args(["train", *argv]))


@pytest.fixture()
def written(tmp_path: Path) -> tuple[TrainConfig, Path]:
    """A config unlike its preset (voc2007's ImageNet backbone turned off, an ablation, EMA) written as a run
    writes config.json."""
    cfg = preset_config(
        "voc2007", data="voc", out="runs/a", model="msrn_tiny", pretrained="none", image_size=64,
        depths=(3, 1), ema=0.99, word_vectors="ngram", cooccurrence="train", lr_steps=(3, 5), seed=4,
    )  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return cfg, path


def test_a_written_config_given_back_is_the_same_config(written: tuple[TrainConfig, Path]) -> None:
    cfg, path = written
    assert cfg.pretrained is None and cfg.depths == (1, 3)  # a value the preset does not have, settled
    assert train_config("--config", str(path)) == cfg


def test_flags_override_the_config_file(written: tuple[TrainConfig, Path]) -> None:
    cfg, path = written
    again = train_config("--config", str(path), "--seed", "7", "--out", "runs/b", "--no-label-graph")
    assert again == dataclasses.replace(cfg, seed=7, out="runs/b", label_graph=False)


def test_a_partial_yaml_file_sits_between_preset_and_flags(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: csv\ndata: d.csv\nlr: 0.05\nepochs: 4\n")
    assert train_config("--config", str(path), "--epochs", "2") == preset_config("csv", data="d.csv", lr=0.05, epochs=2)


def test_config_file_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "csv", "data": "d", "learning_rate": 0.1}))
    with pytest.raises(MSRNError, match="unknown configuration keys: learning_rate"):
        train_config("--config", str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(MSRNError, match="must hold a mapping"):
        train_config("--config", str(bad))
    with pytest.raises(MSRNError, match="--dataset is required"):
        train_config("--data", "d")
    yaml_file = tmp_path / "c.yml"
    yaml_file.write_text("dataset: csv\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    with pytest.raises(MSRNError, match="reading YAML needs PyYAML"):
        train_config("--config", str(yaml_file))


@pytest.mark.slow  # a real (seconds-long) training run
def test_a_runs_config_json_reruns_it(tmp_path: Path) -> None:
    csv = make_csv(tmp_path / "data", n_train=12, n_test=4)
    argv = tiny_train_args(csv, tmp_path / "run", "--val-fraction", "0.25", "--ema", "0.9", batch_size=4, epochs=1)
    assert cli(argv) == 0
    written = tmp_path / "run" / "config.json"
    assert train_config("--config", str(written)) == config_from_args(build_parser("train").parse_args(argv))
