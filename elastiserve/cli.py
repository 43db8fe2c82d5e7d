"""The ``elastiserve`` command.

Subcommands register themselves lazily: the parser names every command but imports a component
only when that command runs, so ``elastiserve --help`` works on an install with no extras (the
operator image has no torch, the serving image has no kopf).

Bad input is answered in one line on stderr with exit code 2, never with a traceback or a usage
block: a malformed flag or number (:class:`OneLineParser`), a missing file, a directory that is
not a bundle, an unknown level (each command's own checks, and :func:`main` for any input error
a command lets through). Anything else a command raises is one line with exit code 1 (set
``ELASTISERVE_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from elastiserve import __version__


@dataclass(frozen=True)
class Command:
    """A subcommand whose implementation lives in a component that may not be installed."""

    name: str
    help: str
    module: str
    extra: str


# Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: tuple[Command, ...] = (
    Command("train", "build a nested elastic bundle by prune-and-grow", "elastiserve_train.cli",
            "train"),
    Command("archive", "package a nested bundle as a TorchServe .mar (no pickle inside)",
            "elastiserve_serve.cli_archive", "serve"),
    Command("serve", "run TorchServe locally with a safe configuration",
            "elastiserve_serve.cli_serve", "serve"),
    Command("level", "set the active level through the control file",
            "elastiserve_serve.cli_level", "serve"),
    Command("demo", "train, serve and switch levels under a load ramp on this machine",
            "elastiserve.local.cli_demo", "train,serve,operator"),
    Command("operator", "run the Kubernetes operator (kopf)", "elastiserve_operator.cli",
            "operator"),
)


MAX_MESSAGE = 400
DEBUG_ENV = "ELASTISERVE_DEBUG"
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, LookupError)
"""Errors that mean the input was wrong (a path, a number, a name); with the project's own
error classes (any class defined in an ``elastiserve*`` module), they exit with 2."""


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: MESSAGE``) and exit 2.

    argparse's own answer is the usage block and then the error: several lines, of which the
    one that matters is the last. ``--help`` still prints the full usage.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _is_input_error(error: BaseException) -> bool:
    if isinstance(error, INPUT_ERRORS):
        return True
    return any(cls.__module__.startswith("elastiserve") for cls in type(error).__mro__)


def _version(_: argparse.Namespace) -> int:
    print(f"elastiserve {__version__}")
    return 0


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` command's module is imported.

    Importing every command's module would make ``elastiserve --help`` pay for torch (seconds)
    and would hide which extra a command needs until something else failed. The other commands
    get a light placeholder that still lists them with their help line.
    """
    parser = OneLineParser(
        prog="elastiserve",
        description=(
            "Serve PyTorch CNNs at nested capacities from one set of weights and switch between "
            "them at runtime to hold a latency objective."
        ),
    )
    parser.add_argument("--version", action="version", version=f"elastiserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the version and exit")
    version.set_defaults(func=_version)
    for command in COMMANDS:
        if command.name != selected:
            sub.add_parser(command.name, help=command.help)
            continue
        try:
            module = importlib.import_module(command.module)
        except ImportError as err:
            missing = err.name or command.module
            placeholder = sub.add_parser(
                command.name, help=f"{command.help} (needs the '{command.extra}' extra)"
            )
            placeholder.set_defaults(func=_missing_extra(command, missing))
            continue
        cmd_parser = sub.add_parser(command.name, help=command.help)
        module.add_arguments(cmd_parser)
        cmd_parser.set_defaults(func=module.run)
    return parser


def _selected_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, if any (the first non-option word)."""
    names = {command.name for command in COMMANDS}
    for word in argv:
        if not word.startswith("-"):
            return word if word in names else None
    return None


def _missing_extra(command: Command, missing: str) -> Callable[[argparse.Namespace], int]:
    def fail(_: argparse.Namespace) -> int:
        print(
            f"elastiserve {command.name}: module '{missing}' is not installed; "
            f"install it with: pip install 'elastiserve[{command.extra}]'",
            file=sys.stderr,
        )
        return 2

    return fail


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser that can parse ``argv``: the one holding the named command's arguments."""
    return build_parser(_selected_command(argv))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = parser_for(words)
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    if os.environ.get(DEBUG_ENV):
        result: int = func(args)
        return result
    try:
        result = func(args)
    except Exception as error:  # one line, never a traceback (Ctrl-C is not bad input)
        kind = "" if _is_input_error(error) else "internal error: "
        print(f"elastiserve {args.command}: {kind}{one_line(error) or type(error).__name__}"
              f"{'' if kind == '' else f' ({type(error).__name__}; {DEBUG_ENV}=1 shows where)'}",
              file=sys.stderr)
        return 2 if not kind else 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
