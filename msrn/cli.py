"""The `msrn` command line: one subcommand per module, each with `add_arguments` (its options, declared as
fields: msrn.options) and `main`.

Every subcommand lives in its own module and is imported only when used, so `msrn inspect`
does not pay for matplotlib or onnx. User errors (`MSRNError`) become one line on stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from msrn import __version__
from msrn.errors import MSRNError
from msrn.options import add_version_option

# under a launcher, a process still alive this long after its command returned is stuck (bound_exit)
EXIT_BOUND_S = 60
# subcommand -> (module holding add_arguments/main, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("msrn.demo", "train and evaluate a small MSRN and a baseline on the built-in scenes benchmark"),
    "train": ("msrn.engine.train", "train MSRN on a dataset"),
    "compare": ("msrn.engine.compare", "train every head alike under each recipe and seed, and compare them"),
    "evaluate": ("msrn.engine.evaluate", "evaluate a checkpoint (project or reference) on a split"),
    "inspect": ("msrn.data.inspect", "show what a dataset reader sees"),
    "labels": ("msrn.labels.report", "build the label graph and label vectors of a dataset"),
    "predict": ("msrn.inference.predict", "tag images with a trained model"),
    "export": ("msrn.inference.export", "export a checkpoint to ONNX or to a model folder (--format hub)"),
    "push": ("msrn.inference.push", "publish a checkpoint on the Hugging Face Hub as a model folder with its card"),
    "serve": ("msrn.inference.serve", "a local web page to try a model"),
}


def command_name(argv: Sequence[str]) -> str | None:
    """The subcommand argv names: its first word that is not an option (`msrn` itself takes no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line on stderr (status 2) that names the option and points to --help,
    as every other bad value is reported (MSRNError)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser listing every subcommand from COMMANDS; only `command`'s module is imported, for its options."""
    parser = Parser(prog="msrn", description=__doc__.splitlines()[0])
    add_version_option(parser, f"msrn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name != command:
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def bound_exit() -> None:
    """Under torchrun (or another launcher that sets WORLD_SIZE): a process that has not exited EXIT_BOUND_S
    seconds from now writes every thread's stack to stderr and exits with status 1. Called when the
    command has returned: on a cluster, a job whose process hangs on its way out holds its GPUs until
    the time limit. faulthandler's watchdog needs no Python thread, so it fires in a stuck shutdown too."""
    if "TORCHELASTIC_RUN_ID" in os.environ or os.environ.get("WORLD_SIZE", "1") != "1":
        faulthandler.dump_traceback_later(EXIT_BOUND_S, exit=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_name(argv))
    args = parser.parse_args(argv)
    if getattr(args, "_missing", False):
        parser.error(f"command '{args.command}' is not available in this build")
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except MSRNError as e:
        print(f"msrn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `msrn inspect ... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
    except OSError as e:  # a full disk, a permission, a vanished file: the machine's state, not a bug
        print(f"msrn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msrn {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        bound_exit()


if __name__ == "__main__":
    sys.exit(main())
