"""``elastiserve demo``: the arguments; the demo itself (torch, TorchServe) loads only to run.

The CLI imports this module when ``demo`` is the chosen command; it stays light anyway: the
imports below only prove that the extras the demo needs are installed (the CLI then runs the
command, or prints a hint naming the extras) before any torch import is paid for.

Numbers are checked by the parser and ``--bundle`` before anything starts, so bad input is one
line and exit code 2, not a traceback minutes into a run.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import elastiserve_operator.signals.prometheus  # noqa: F401  (operator extra)
import elastiserve_serve.ts_server  # noqa: F401  (serve extra)
import elastiserve_train  # noqa: F401  (train extra: the model and matplotlib)

IMAGES_PER_REQUEST = 32
"""Images per demo request. With 16, the narrowest level served 2.5x what the full one
serves end to end (TorchServe's per-request cost is a few ms beside a forward pass of the
same order); with 32, 3.3x (``benchmarks/serving.py --breakdown-only``, quiet machine)."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"),
                        help="model, logs, timeline.json and timeline.png (default runs/demo)")
    parser.add_argument("--bundle", type=Path, help="serve this bundle instead of training one")
    parser.add_argument("--objective-ms", type=positive_int,
                        help="p95 objective (default: derived from the full level's measured "
                             "latency)")
    parser.add_argument("--peak-factor", type=positive_float, default=2.0,
                        help="peak load as a multiple of the full level's capacity (default 2)")
    parser.add_argument("--images-per-request", type=positive_int,
                        default=IMAGES_PER_REQUEST,
                        help=f"images in each request body (default {IMAGES_PER_REQUEST}: "
                             f"enough model work per request for the levels' capacities to "
                             f"differ past the HTTP path's cost)")
    parser.add_argument("--quiet", action="store_true", help="no line per second")


def run(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        from elastiserve_store.errors import BundleError
        from elastiserve_store.manifest import Manifest

        try:
            Manifest.read(args.bundle)
        except BundleError as error:
            print(f"elastiserve demo: --bundle: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
    from .demo import run as run_demo

    return run_demo(args)
