"""``elastiserve archive BUNDLE_DIR``: verify a bundle and write ``NAME.mar``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .archive import ArchiveSpec, build_archive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="nested bundle directory (manifest + weights)")
    parser.add_argument("--name", required=True, help="model name (the URL path segment)")
    parser.add_argument("--export-path", type=Path, default=Path("model-store"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=int, default=5)
    parser.add_argument("--allow-pin", action="store_true",
                        help="let clients pin a level with X-Elastiserve-Level")
    parser.add_argument("--control-file", default="/dev/shm/elastiserve/level.json")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker")
    parser.add_argument("--trace-levels", action="store_true",
                        help="run each level as a graph traced in memory at load (falls back "
                             "to eager per level if tracing is unsafe)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing .mar")


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
    path = build_archive(args.bundle, args.export_path, args.name, spec, force=args.force)
    print(path)
    return 0
