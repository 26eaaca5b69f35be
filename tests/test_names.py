"""A public name means one thing: functions and module constants are not defined twice with other meanings.

Read from the source (AST). Names every CLI module defines on purpose (its `add_arguments` and
`main`, a module logger) and per-module format constants are the exceptions, listed below.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from msrn.inference.onnx_predict import OnnxPredictor
from msrn.inference.predictor import Predictor
from msrn.inference.tagging import Tagger

PACKAGE = Path(__file__).resolve().parents[1] / "msrn"
# the command protocol, loggers, and constants each module keeps for its own file format or drawing
PER_MODULE = {"add_arguments", "main", "log", "VERSION", "FORMAT", "README", "LABELS", "SHAPES", "COLOURS",
              "INSTALL_HINT"}  # fmt: skip


def top_level_names() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for name in names:
                if not name.startswith("_"):
                    found[name].append(str(path.relative_to(PACKAGE)))
    return found


def test_each_public_name_is_defined_once() -> None:
    """save_figure (a Figure vs an Explanation), read_label_file (label names vs the apparel pickle) and
    IMAGE_SUFFIXES (two different sets) each had two meanings."""
    twice = {name: where for name, where in top_level_names().items() if len(where) > 1 and name not in PER_MODULE}
    assert twice == {}


def test_both_predictors_share_one_tagging_code() -> None:
    """predictor.py and onnx_predict.py carried parallel predict / probabilities / iter_results code."""
    for name in ("predict", "probabilities", "iter_results", "record", "decode"):
        assert getattr(Predictor, name) is getattr(OnnxPredictor, name) is getattr(Tagger, name), name
