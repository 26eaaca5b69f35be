"""Every `msrn ...` command line that README.md, CONTRIBUTING.md and docs/*.md show: each one parsed by the real
command-line parser (msrn.cli.build_parser, nothing run), and those that need no outside data run on generated
data (slow).

A line is found in a fenced code block (line continuations joined, `# comments` dropped, `&&`, `;` and `|`
separating commands) or in inline code, and starts at `msrn COMMAND` (also after `torchrun ... -m msrn` or
`python -m msrn`). Placeholders stand for a value of the option before them: `FILE`, `DIR`, `N` (upper-case words),
`$VAR` and `<name>` become a value the option accepts (its first choice, or a number its type takes); synopsis
brackets `[--top-k K]` are read as given and `json|csv` as each alternative. Inline code that names a command
without its required options (`msrn train`, `msrn inspect --json --images`) is a mention: the options it names
must exist and take the values shown, the others may be missing; so may they on a line elided with `...`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_helpers import tiny_train_args

from msrn import demo
from msrn.cli import COMMANDS, build_parser
from msrn.cli import main as cli
from msrn.data import GENERATED, ensure_scenes, ensure_synthetic
from msrn.data.generated import default_root
from msrn.engine.config import config_from_args, preset_config
from msrn.errors import MSRNError

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
STARTS = re.compile(r"(^|\s)msrn\s+(" + "|".join(COMMANDS) + r")(\s|$)")
OPERATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = re.compile(r"^(\$\{?\w+\}?|<[^<>]+>|[A-Z][A-Z0-9_]*(/[A-Z][A-Z0-9_]*)?)$")
NOT_SHELL = {"python", "csv", "json", "yaml", "toml"}  # fenced blocks whose lines are no shell commands
NUMBERS = ("1", "0.5", "64", "17")  # a placeholder of a numeric option: the first its type (and bounds) accept


@dataclass(frozen=True)
class Documented:
    """One `msrn` command line of the documentation: where, its words after `msrn`, and how it was written."""

    where: str  # "README.md:76"
    argv: tuple[str, ...]
    inline: bool  # inline code: may be a mention of a command rather than a whole command line
    elided: bool  # written with `...` for options left out
    launcher: str  # what runs it: "msrn", "torchrun", "srun"

    def __str__(self) -> str:
        return f"{self.where}: msrn {shlex.join(self.argv)}"


def joined(lines: list[str], first: int) -> Iterator[tuple[int, str]]:
    """(line number, line) of a code block's lines, each continued line (ending in a backslash) joined to it."""
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        yield first + start, line
        i += 1


def shell_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, command text, inline?) of every line of a fenced or indented code block (but those of
    python, csv, json, ...) and of every inline code span."""
    fence = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)^[ \t]*```", re.S | re.M)
    for block in fence.finditer(text):
        if block.group(1).strip().lower() not in NOT_SHELL:
            for number, line in joined(block.group(2).split("\n"), text.count("\n", 0, block.start(2)) + 1):
                yield number, line, False
    lines = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text).split("\n")  # the blocks blanked out
    indented, previous = [False] * len(lines), ""
    for i, line in enumerate(lines):  # an indented code block: lines indented 4 or more, after a blank line
        indented[i] = line.startswith(("    ", "\t")) and (not previous.strip() or indented[i - 1])
        previous = line
    i = 0
    while i < len(lines):
        if indented[i]:
            end = next((j for j in range(i, len(lines)) if not indented[j]), len(lines))
            for number, line in joined(lines[i:end], i + 1):
                yield number, line, False
            lines[i:end] = [""] * (end - i)
            i = end
        i += 1
    prose = "\n".join(lines)
    for span in re.finditer(r"`([^`\n]+)`", prose):
        yield prose.count("\n", 0, span.start()) + 1, span.group(1), True


def alternatives(argv: list[str]) -> list[list[str]]:
    """A synopsis read as command lines: brackets dropped, each `a|b` alternative taken in turn."""
    words = [w.strip("[]") if w.startswith("[") or w.endswith("]") else w for w in argv]
    for i, word in enumerate(words):
        if "|" in word and not word.startswith(("hf:", "http")):
            return [line for choice in word.split("|") for line in alternatives([*words[:i], choice, *words[i + 1 :]])]
    return [words]


def msrn_commands(where: str, line: str, inline: bool) -> Iterator[Documented]:
    """The msrn command lines in one shell line (a line may chain several commands)."""
    if not STARTS.search(line) and " -m msrn " not in line:
        return
    words = shlex.split(line, comments=not inline)
    segments: list[list[str]] = [[]]
    for word in words:
        if word in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(word.rstrip(";"))
    for seg in segments:
        starts = [i + 1 for i, w in enumerate(seg[:-1]) if w == "msrn" and seg[i + 1] in COMMANDS]
        if not starts:
            continue
        argv = seg[starts[0] :]
        elided = "..." in argv
        launcher = next((w for w in ("srun", "torchrun") if w in seg[: starts[0]]), "msrn")  # the outermost
        for variant in alternatives([w for w in argv if w != "..."]):
            yield Documented(where, tuple(variant), inline, elided, launcher)


def documented_commands() -> list[Documented]:
    """Every msrn command line of the documentation, in document order (a line repeated elsewhere once)."""
    found: dict[tuple, Documented] = {}
    for path in DOCUMENTS:
        for number, line, inline in shell_lines(path.read_text(encoding="utf-8")):
            for doc in msrn_commands(f"{path.relative_to(ROOT)}:{number}", line, inline):
                found.setdefault((doc.argv, doc.inline, doc.launcher), doc)
    return list(found.values())


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices[command]


def fill(sub: argparse.ArgumentParser, argv: tuple[str, ...], values: dict[str, str] | None = None) -> list[str]:
    """argv with each placeholder replaced: by `values[flag]` when given for the option before it, else by a value
    that option takes (a string option keeps the placeholder's text)."""
    options = {s: a for a in sub._actions for s in a.option_strings}
    out, flag, action = [], "", None
    for word in argv:
        if word.split("=", 1)[0] in options:
            flag = word.split("=", 1)[0]
            action = options[flag] if options[flag].nargs != 0 else None
        elif PLACEHOLDER.match(word) and action is not None:
            if values and flag in values:
                word = values[flag]
            elif action.choices:
                word = str(list(action.choices)[0])
            elif action.type not in (None, str):
                word = next(n for n in NUMBERS if _accepts(action.type, n))
            if action.nargs is None:  # its one value given: a placeholder after it is a positional argument
                action = None
        out.append(word)
    return out


def _accepts(kind: object, text: str) -> bool:
    try:
        kind(text)  # type: ignore[operator]
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return True


class ParseError(Exception):
    """argparse's own one-line message for a command line it refuses."""


def parse(doc: Documented, values: dict[str, str] | None = None) -> tuple[argparse.Namespace, bool]:
    """The namespace msrn's parser makes of a documented line, and whether the line is whole. An inline mention
    or an elided line that leaves out required options is parsed with none required (not whole)."""
    command = doc.argv[0]

    def attempt(relaxed: bool) -> argparse.Namespace:
        parser = build_parser(command)
        sub = subparser(parser, command)
        if relaxed:
            for action in sub._actions:
                action.required = False
        err = io.StringIO()
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # a deprecated flag still parses, with a warning
            try:
                return parser.parse_args(fill(sub, doc.argv, values))
            except SystemExit:
                raise ParseError(err.getvalue().strip()) from None

    try:
        return attempt(relaxed=False), True
    except ParseError as e:
        if not ((doc.inline or doc.elided) and "arguments are required" in str(e)):
            raise
    return attempt(relaxed=True), False


COMMAND_LINES = documented_commands()


def test_the_documentation_has_command_lines_of_every_kind() -> None:
    """The search finds the lines it is meant to: block lines, chained ones, continued ones and inline ones."""
    found = {(d.where.split(":")[0], d.argv, d.inline) for d in COMMAND_LINES}
    voc = ("train", "--dataset", "voc2007", "--data", "~/data/VOCdevkit", "--out", "runs/voc")
    assert ("README.md", voc, False) in found
    assert ("README.md", ("demo", "--out", "runs/demo"), False) in found  # after `pip install ... &&`
    assert ("docs/reliability.md", (*voc[:4], "~/voc", "--out", "runs/voc", "--resume"), False) in found  # indented
    assert any(d.launcher == "srun" and "--requeue-signal" in d.argv for d in COMMAND_LINES)  # a continued line
    assert {d.argv[0] for d in COMMAND_LINES} == set(COMMANDS)
    assert len(COMMAND_LINES) > 60


def test_the_search_reads_blocks_and_inline_code_as_a_shell_would() -> None:
    text = (
        "Run `msrn predict --checkpoint FILE a.jpg` or\n"
        "```bash\n"
        "pip install x && msrn export --checkpoint m.pt \\\n"
        "    --out m.onnx   # a comment's apostrophe\n"
        "msrn predict --checkpoint m.pt [--format json|csv] ... | head\n"
        "```\n"
        "```python\nmsrn train --not-a-shell-line\n```\n"
        "\n"
        "    msrn inspect --dataset csv \\\n"
        "        --data my.csv\n"
    )
    found = [doc for n, line, inline in shell_lines(text) for doc in msrn_commands(f"x:{n}", line, inline)]
    assert [(d.where, d.argv, d.inline, d.elided) for d in found] == [
        ("x:3", ("export", "--checkpoint", "m.pt", "--out", "m.onnx"), False, False),
        ("x:5", ("predict", "--checkpoint", "m.pt", "--format", "json"), False, True),
        ("x:5", ("predict", "--checkpoint", "m.pt", "--format", "csv"), False, True),
        ("x:11", ("inspect", "--dataset", "csv", "--data", "my.csv"), False, False),
        ("x:1", ("predict", "--checkpoint", "FILE", "a.jpg"), True, False),
    ]


def test_placeholders_become_values_their_option_takes() -> None:
    doc = Documented(
        "x:1", ("predict", "--checkpoint", "FILE", "--top-k", "K", "--threshold", "T", "$IMG"), True, False, "msrn"
    )
    args, whole = parse(doc)
    assert (args.checkpoint, args.top_k, args.threshold, args.inputs, whole) == ("FILE", 1, 1.0, ["$IMG"], True)


def test_a_refused_line_fails_with_the_parsers_message() -> None:
    with pytest.raises(ParseError, match="--no-such-flag"):
        parse(Documented("x:1", ("train", "--dataset", "synthetic", "--no-such-flag"), False, False, "msrn"))
    with pytest.raises(ParseError, match="required: --data"):  # a block line is a whole command
        parse(Documented("x:1", ("evaluate", "--dataset", "csv", "--checkpoint", "m.pt"), False, False, "msrn"))


@pytest.mark.parametrize("doc", COMMAND_LINES, ids=str)
def test_documented_command_line_parses(doc: Documented, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser takes the line; a whole `msrn train` line's values also pass the training configuration's checks
    (bounds, choices, options that exclude each other), still without touching a file but the --config file the
    line names, written here as a run writes its config.json."""
    try:
        args, whole = parse(doc)
    except ParseError as e:
        pytest.fail(f"{doc}\n{e}")
    if doc.argv[0] == "train" and args.dataset is None and args.config is None:
        whole = False  # a mention of some train options (--dataset is required, or --config)
    if whole and doc.argv[0] == "train":
        if args.config is not None:
            monkeypatch.chdir(tmp_path)
            Path(args.config).parent.mkdir(parents=True, exist_ok=True)
            Path(args.config).write_text(json.dumps(preset_config("scenes").to_dict()))
        try:
            config_from_args(args)
        except MSRNError as e:
            pytest.fail(f"{doc}\nmsrn train: error: {e}")


# -- running them ---------------------------------------------------------------------------------------------
# A documented line whose preset takes minutes runs with these words added (argparse keeps the last value):
OVERRIDES = {
    "train": ("--epochs", "1"),  # the synthetic and scenes presets train 12 and 18 epochs
    "demo": ("--epochs", "1"),  # 18 epochs of two models; the demo's data are made tiny too (see tiny_demo)
    # every head, two recipes, three seeds on the demo's data: one head, one recipe, one seed on tiny scenes
    "compare": (
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--heads",
        "baseline",
        "--recipes",
        "gcn",
        "--scenes-size",
        "24",
        "16",
        "64",
        "--image-size",
        "64",
        "--batch-size",
        "8",
        "--timing-rounds",
        "1",
    ),  # fmt: skip
}
# placeholders of the lines that run, by the option they follow: files of the workspace
# the bounds of an option are checked on the command's options (msrn.options), after parsing: S is a size the
# workspace's checkpoint takes
RUN_VALUES = {
    "--data": "data/scenes",
    "--checkpoint": "runs/mine/best.pt",
    "--list": "photos.txt",
    "--image-size": "64",
}
CHECKPOINTS = {"runs/mine/best.pt", "runs/my/best.pt", "best.pt"}


def needs_outside_data(doc: Documented) -> str | None:
    """Why a documented line cannot run here (None: it runs on the workspace's generated data)."""
    args, whole = parse(doc, RUN_VALUES)
    command, dataset = doc.argv[0], getattr(args, "dataset", None)
    checkpoint, onnx = getattr(args, "checkpoint", None), getattr(args, "onnx", None)
    reasons = [
        (not whole, "a mention, not a whole command line"),
        (doc.launcher != "msrn", f"several processes under {doc.launcher} (tests/test_distributed.py runs torchrun)"),
        (command == "serve", "a server that runs until stopped (tests/test_serve.py runs it)"),
        (command == "push", "it uploads to the Hugging Face Hub"),
        (command == "train" and dataset not in GENERATED, f"{dataset} data, or ImageNet weights"),
        (dataset not in (None, *GENERATED) and (dataset, args.data) != ("csv", "my.csv"), f"{dataset} data"),
        (checkpoint not in (None, *CHECKPOINTS), f"the checkpoint {checkpoint}"),
        (onnx not in (None, "model.onnx"), f"the ONNX file {onnx}"),
    ]
    return next((why for applies, why in reasons if applies), None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder as a user's would be after the documented steps that come first, made current: msrn's cache
    (MSRN_CACHE) with the synthetic data and a tiny scenes generation, another in data/scenes, my.csv (24
    synthetic images and their labels), photos/ (and photos.txt listing them), img.jpg, a.jpg, extra.jpg, a
    checkpoint of my.csv's labels at runs/mine/best.pt, runs/my/best.pt and best.pt, and its export model.onnx."""
    root = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSRN_CACHE", str(root / "cache"))
        mp.chdir(root)
        synthetic = ensure_synthetic(default_root("synthetic"))
        for scenes in (default_root("scenes"), root / "data" / "scenes"):  # found there, of any size, and used
            ensure_scenes(scenes, num_train=24, num_test=16, image_size=64)
        rows = (synthetic / "annotations.csv").read_text().splitlines()
        train, test = [r for r in rows if r.endswith(",train")][:16], [r for r in rows if r.endswith(",test")][:8]
        images = [row.split(",")[0] for row in train + test]
        for name in images:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(synthetic / name, root / name)
        (root / "my.csv").write_text("\n".join([rows[0], *train, *test]) + "\n")
        (root / "photos").mkdir()
        for i, name in enumerate(images[:3]):
            shutil.copy(root / name, root / "photos" / f"{i}.png")
        (root / "photos.txt").write_text("\n".join(images[3:5]) + "\n")
        for name in ("img.jpg", "a.jpg", "extra.jpg"):
            shutil.copy(root / images[0], root / name)
        assert cli(tiny_train_args(Path("my.csv"), Path("runs/mine"), epochs=1, batch_size=8)) == 0
        (root / "runs" / "my").mkdir()
        shutil.copy(root / "runs/mine/best.pt", root / "runs/my/best.pt")
        shutil.copy(root / "runs/mine/best.pt", root / "best.pt")
        assert cli(["export", "--checkpoint", "best.pt", "--out", "model.onnx"]) == 0
        yield root


@pytest.fixture()
def tiny_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`msrn demo` on 40 + 24 scenes images at 64 px, in this process: the benchmark's 2600 at 128 px take minutes."""
    full = demo.run_demo

    def run_demo(out: Path, seed: int = 0, epochs: int | None = None, workers: int | None = None, *args, **kw) -> dict:
        return full(out, seed, epochs, 0, *args, **kw, data_size=(40, 24, 64), jobs=1)

    monkeypatch.setattr(demo, "run_demo", run_demo)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [doc for doc in COMMAND_LINES if not doc.inline], ids=str)
def test_documented_command_line_runs(
    doc: Documented,
    workspace: Path,
    tiny_demo: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    """A code block's line runs as written in the workspace (exit status 0) and writes each --out it names, and
    `msrn train` the run folder it reports; a line that needs outside data (a real data set, a server, the Hub,
    several processes) is skipped with its reason. Inline code, often a mention of a command, is parsed only."""
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MSRN_CACHE", str(workspace / "cache"))
    why = needs_outside_data(doc)
    if why:
        pytest.skip(f"needs outside data: {why}")
    command = doc.argv[0]
    argv = [*fill(subparser(build_parser(command), command), doc.argv, RUN_VALUES), *OVERRIDES.get(command, ())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert cli(argv) == 0, doc
    out = getattr(parse(doc, RUN_VALUES)[0], "out", None)
    if out is not None:
        assert Path(out).exists(), f"{doc}: wrote no {out}"
    if command == "train":
        (folder,) = re.findall(r"run folder (\S+)$", capsys.readouterr().out, flags=re.M)
        assert (Path(folder) / "best.pt").is_file(), f"{doc}: no best.pt in the run folder it reported, {folder}"


@pytest.mark.parametrize("command", ["evaluate", "predict", "serve", "export"])
def test_the_deprecated_fast_flag_warns_on_every_command_the_changelog_names(command: str) -> None:
    """CHANGELOG: `--fast` of evaluate, predict, serve and export does nothing and warns (export refused it)."""
    required = {
        "evaluate": ["--dataset", "csv", "--data", "my.csv", "--checkpoint", "m.pt"],
        "predict": ["--checkpoint", "m.pt", "a.jpg"],
        "serve": ["--checkpoint", "m.pt"],
        "export": ["--checkpoint", "m.pt", "--out", "m.onnx"],
    }[command]
    with pytest.warns(FutureWarning, match="--fast is deprecated"):
        build_parser(command).parse_args([command, *required, "--fast"])
