"""``elastiserve level set NAME|INDEX``: write the control file that every local worker reads.

The level is written as typed; the serving runtime resolves it against the levels it loaded: a
level name, else digits as an index (0 = narrowest), so the same command works whatever the
bundle calls its levels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .level_agent import set_level
from .runtime.control import read_control_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["set", "show"])
    parser.add_argument("level", nargs="?", help="level name or index, 0 = narrowest (for 'set')")
    parser.add_argument("--control-file", type=Path,
                        default=Path("/dev/shm/elastiserve/level.json"))
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--allow-pin", dest="allow_pin", action="store_true", default=None)
    pin.add_argument("--deny-pin", dest="allow_pin", action="store_false")


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        print(read_control_file(args.control_file))
        return 0
    if not args.level:
        print("elastiserve level set: a level name or index is required")
        return 2
    state = set_level(args.control_file, args.level, args.allow_pin)
    print(f"{args.control_file}: level {state.level} (generation {state.generation})")
    return 0
