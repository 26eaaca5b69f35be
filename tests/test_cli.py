"""What the command line and the package import: only the chosen subcommand's module, and no drawing
library for tagging (each checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msrn.cli import COMMANDS, build_parser, command_name
from msrn.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def loaded_by(code: str, *argv: str) -> set[str]:
    """The msrn, torch and matplotlib modules imported after running code in a new interpreter."""
    code += "\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith(('msrn', 'torch', 'matplotlib')))))"
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys\n" + code, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded_after(argv: list[str]) -> set[str]:
    """The modules imported by running `msrn *argv` (which exits through argparse)."""
    return loaded_by("from msrn.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass", *argv)


def test_command_name_is_the_first_word() -> None:
    assert command_name(["--version"]) is None
    assert command_name(["predict", "--checkpoint", "m.pt", "a.png"]) == "predict"
    assert command_name(["-h", "train", "--help"]) == "train"


def test_help_lists_every_command_without_importing_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    loaded = loaded_after(["--help"])
    assert not loaded & {module for module, _ in COMMANDS.values()}
    assert not any(m.startswith(("torch", "matplotlib")) for m in loaded), sorted(loaded)


def test_subcommand_help_imports_only_its_module() -> None:
    loaded = loaded_after(["predict", "--help"])
    commands = {module for module, _ in COMMANDS.values()}
    assert "msrn.inference.predict" in loaded
    assert not loaded & (commands - {"msrn.inference.predict", "msrn.engine.evaluate"}), sorted(loaded)


def test_subcommand_parser_has_its_options_only() -> None:
    parser = build_parser("inspect")
    assert parser.parse_args(["inspect", "--dataset", "csv", "--data", "d.csv"]).data == "d.csv"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--dataset", "csv", "--data", "d.csv"])  # train's options were not added


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli(["nosuch"])
    assert done.value.code == 2 and "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_tagging_imports_no_drawing_library() -> None:
    loaded = loaded_by("import msrn\nmsrn.load")  # the Predictor's module: attention maps, not their pictures
    assert "msrn.inference.predictor" in loaded and "msrn.inference.explain" in loaded
    assert not any(m.startswith("matplotlib") for m in loaded), sorted(m for m in loaded if "matplotlib" in m)
    assert not any(m.startswith(("torch", "matplotlib")) for m in loaded_by("import msrn.inference.onnx_predict"))
