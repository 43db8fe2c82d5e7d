"""``elastiserve serve``: TorchServe on this machine, configured as in :mod:`.ts_config`.

Takes a bundle directory (archived on the fly) or ready ``.mar`` files, writes the initial level
to the control file so workers come up at it, starts TorchServe and waits for Ctrl-C. The bearer
tokens stay in ``RUN_DIR/key_file.json``; only its path is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import threading
from pathlib import Path

from .archive import ArchiveSpec, build_archive
from .level_agent import set_level
from .ts_server import run_torchserve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="nested bundle directory")
    source.add_argument("--mar", type=Path, action="append", help=".mar file (repeatable)")
    parser.add_argument("--name", default=None,
                        help="model name to register (default: 'elastic' for --bundle, the file "
                             "name for --mar; with --mar it needs exactly one file)")
    parser.add_argument("--run-dir", type=Path, default=Path(".elastiserve/serve"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=int, default=5)
    parser.add_argument("--allow-pin", action="store_true")
    parser.add_argument("--level", help="initial level (default: the widest)")
    parser.add_argument("--control-file", type=Path,
                        default=Path("/dev/shm/elastiserve/level.json"))
    parser.add_argument("--bind", default="127.0.0.1",
                        help="inference address to bind (management stays on loopback)")
    parser.add_argument("--metrics-bind", default="127.0.0.1",
                        help="metrics address to bind (0.0.0.0 in a pod, for Prometheus)")
    parser.add_argument("--port", type=int, default=0, help="inference port (0: a free one)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="metrics port (0: a free one)")
    parser.add_argument("--disable-token-auth", action="store_true",
                        help="no TorchServe bearer keys: only behind an authenticating gateway "
                             "(several replicas behind one Service cannot share the per-server "
                             "keys)")


def mar_registrations(mars: list[Path], name: str | None) -> list[str]:
    """TorchServe ``models=`` entries: ``name=file.mar``.

    The operator's pod passes ``--name`` (the CR's model name) because its Service, Prometheus
    queries and clients address the model by that name, whatever the file is called.
    """
    return [f"{name or mar.stem}={mar.name}" for mar in mars]


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir.resolve()
    # Workers run from TorchServe's own directory: a relative path would name another file there,
    # and the level would silently never change.
    args.control_file = args.control_file.resolve()
    if args.mar is not None and args.name is not None and len(args.mar) != 1:
        print("elastiserve serve: --name needs exactly one --mar (each would get that name)",
              file=sys.stderr)
        return 2
    store = run_dir / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    if args.bundle is not None:
        spec = ArchiveSpec(
            workers=args.workers,
            batch_size=args.batch_size,
            max_batch_delay_ms=args.max_batch_delay_ms,
            handler={"control_file": str(args.control_file), "allow_pin": args.allow_pin},
        )
        name = args.name or "elastic"
        build_archive(args.bundle, store, name, spec, force=True)
        models = [f"{name}={name}.mar"]
    else:
        for mar in args.mar:
            shutil.copy2(mar, store / mar.name)
        models = mar_registrations(args.mar, args.name)
    if args.level:
        set_level(args.control_file, args.level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with run_torchserve(
        run_dir / "torchserve", store, models, bind_host=args.bind,
        metrics_host=args.metrics_bind, inference_port=args.port, metrics_port=args.metrics_port,
        token_authorization=not args.disable_token_auth,
    ) as server:
        print(f"inference:  {server.inference_url}/predictions/<model>")
        print(f"management: {server.management_url}")
        print(f"metrics:    http://{server.metrics_address}/metrics")
        if args.disable_token_auth:
            print("tokens:     none (token authorisation disabled: authenticate in front)")
        else:
            print(f"tokens:     {server.run_dir / 'key_file.json'} "
                  f"(Authorization: Bearer <key>)")
        print(f"level:      elastiserve level set <name|index> --control-file {args.control_file}")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0
