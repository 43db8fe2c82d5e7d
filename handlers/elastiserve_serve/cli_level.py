"""``elastiserve level set NAME|INDEX``: write the control file that every local worker reads.

The level must be one the served bundle has: a level name, or digits as an index (0 =
narrowest). The bundle is the one ``elastiserve serve`` recorded beside the control file
(:mod:`.served_levels`), or the ``--bundle``/``--mar`` given here. Anything else is refused in
one line with exit code 2 and nothing is written: a typo must not look like a switch while the
workers keep their level. An index is written as a number, a name as itself; the runtime
resolves either against the levels it loaded.

``show`` prints the control file's state, or why it cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .level_agent import set_level
from .runtime.control import ControlFileError, level_index, read_control_file
from .served_levels import (
    ServedLevelsError,
    levels_file_for,
    levels_of_bundle,
    levels_of_mar,
    read_served_levels,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["set", "show"])
    parser.add_argument("level", nargs="?", help="level name or index, 0 = narrowest (for 'set')")
    parser.add_argument("--control-file", type=Path,
                        default=Path("/dev/shm/elastiserve/level.json"))
    served = parser.add_mutually_exclusive_group()
    served.add_argument("--bundle", type=Path, help="check the level against this bundle "
                        "(default: the levels 'elastiserve serve' recorded beside the file)")
    served.add_argument("--mar", type=Path, help="check the level against this .mar's bundle")
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--allow-pin", dest="allow_pin", action="store_true", default=None)
    pin.add_argument("--deny-pin", dest="allow_pin", action="store_false")


def _fail(message: str) -> int:
    print(f"elastiserve level: {message}", file=sys.stderr)
    return 2


def served_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The levels to check against; raises :class:`ServedLevelsError` when none are known."""
    if args.bundle is not None:
        return levels_of_bundle(args.bundle)
    if args.mar is not None:
        return levels_of_mar(args.mar)
    names = read_served_levels(args.control_file)
    if names is None:
        raise ServedLevelsError(
            f"no served bundle is recorded for {args.control_file} "
            f"({levels_file_for(args.control_file).name}, written by 'elastiserve serve'); "
            "pass --bundle or --mar")
    return names


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        try:
            print(read_control_file(args.control_file))
        except (ControlFileError, OSError) as error:
            return _fail(str(error))
        return 0
    if not args.level:
        return _fail("set needs a level name or index")
    try:
        names = served_names(args)
    except ServedLevelsError as error:
        return _fail(str(error))
    try:
        index = level_index(names, args.level)
    except KeyError:
        shown = repr(args.level) if len(args.level) <= 40 else repr(args.level[:40] + "...")
        return _fail(f"unknown level {shown}: the served bundle has {len(names)} levels "
                     f"({', '.join(names)}) or an index 0..{len(names) - 1}")
    level: int | str = args.level if args.level in names else index
    try:
        read_control_file(args.control_file)  # a link, FIFO or garbage there: say so, write none
        state = set_level(args.control_file, level, args.allow_pin)
    except ControlFileError as error:
        return _fail(f"{error}; remove it first")
    except OSError as error:
        return _fail(f"cannot write {args.control_file}: {error.strerror or error}")
    print(f"{args.control_file}: level {names[index]} (index {index}, generation "
          f"{state.generation})")
    return 0
