"""``elastiserve train --strategy discovery``: options and entry point (placeholder)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(group: Any) -> None:
    """Add this strategy's own options to an argparse argument group."""
    del group


def run(args: argparse.Namespace, data: Any, rank: int) -> int:
    """Train with this strategy and write a bundle under ``args.out``."""
    del args, data, rank
    print("elastiserve train: --strategy discovery is not built yet", file=sys.stderr)
    return 2
