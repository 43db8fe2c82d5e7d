"""``elastiserve archive BUNDLE_DIR``: verify a bundle and write ``NAME.mar``.

Bad input (a directory that is not a bundle, a name that is not a file name, an archive that
exists without ``--force``, numbers out of range) is one line on stderr and exit code 2, checked
before the archiver runs (it would print its own multi-line complaint).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from elastiserve_store.errors import BundleError

from .archive import ArchiveSpec, build_archive
from .cli_serve import non_negative, positive

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""TorchServe's model name rule, bounded: the name is also the archive's file name."""


def model_name(text: str) -> str:
    if not MODEL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a model name (letters, digits, '_', '-', '.'; no path)")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="nested bundle directory (manifest + weights)")
    parser.add_argument("--name", required=True, type=model_name,
                        help="model name (the URL path segment)")
    parser.add_argument("--export-path", type=Path, default=Path("model-store"))
    parser.add_argument("--workers", type=positive, default=1)
    parser.add_argument("--batch-size", type=positive, default=8)
    parser.add_argument("--max-batch-delay-ms", type=non_negative, default=5)
    parser.add_argument("--allow-pin", action="store_true",
                        help="let clients pin a level with X-Elastiserve-Level")
    parser.add_argument("--control-file", default="/dev/shm/elastiserve/level.json")
    parser.add_argument("--threads", type=non_negative, default=0,
                        help="torch threads per worker (default 0: in a pod the operator "
                        "runs, the container's CPU request over its workers, else torch's "
                        "default)")
    parser.add_argument("--trace-levels", action=argparse.BooleanOptionalAction, default=True,
                        help="run each level as a graph traced in memory at load, checked equal "
                             "to eager (a level that fails stays eager and the worker logs "
                             "why); on by default, the runtime's own default")
    parser.add_argument("--force", action="store_true", help="overwrite an existing .mar")


def _fail(message: str) -> int:
    print(f"elastiserve archive: {' '.join(message.split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    spec = ArchiveSpec(
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        handler={
            "control_file": args.control_file,
            "allow_pin": bool(args.allow_pin),
            "threads": args.threads,
            "trace_levels": bool(args.trace_levels),
        },
    )
    target = args.export_path / f"{args.name}.mar"
    if target.exists() and not args.force:
        return _fail(f"{target} exists; pass --force to overwrite it")
    if args.export_path.exists() and not args.export_path.is_dir():
        return _fail(f"--export-path {args.export_path} is not a directory")
    try:
        path = build_archive(args.bundle, args.export_path, args.name, spec, force=args.force)
    except (BundleError, OSError, ValueError) as error:
        return _fail(str(error))
    print(path)
    return 0
