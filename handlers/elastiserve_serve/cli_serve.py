"""``elastiserve serve``: TorchServe on this machine, configured as in :mod:`.ts_config`.

Takes a bundle directory (archived on the fly) or ready ``.mar`` files, writes the initial level
to the control file so workers come up at it, starts TorchServe and waits for Ctrl-C/SIGTERM
(or for TorchServe to die: then it exits 1, so a pod's container restarts).

Settings given on the command line win over an archive's (workers, batching, pinning, the
control file): a ``.mar`` is copied into the model store with its ``model-config.yaml``
rewritten (:mod:`.mar_overrides`), which is the only place TorchServe and the handler read
them from. Settings left out keep the archive's.

Authentication, two modes:

* default: TorchServe's own bearer keys, generated per server in ``RUN_DIR/torchserve/
  key_file.json`` (only its path is printed); ``--disable-token-auth`` turns them off;
* ``--key-file PATH`` (a pod's mounted Secret): an authenticating gateway (:mod:`.gateway`)
  listens on ``--bind``/``--port`` and checks ``Authorization: Bearer <key>`` against the file
  (re-read when it changes), while TorchServe's inference and management APIs listen on
  loopback ports of their own with their key check off. ``--gateway`` runs the same gateway
  without a key check, for clusters that authenticate in front of the Service. Behind the
  gateway, ready also needs the control file to exist and name a served level (in a pod, the
  level agent writes it once it read the model's status; locally, pass ``--level`` or run
  ``elastiserve level set``).

Before anything starts, a ``.mar`` must be what ``elastiserve archive`` writes
(:mod:`.archive_check`), ``--level`` a level the bundle has, and every number in range; each
refusal is one line on stderr and exit code 2. The served bundle's level names are recorded
beside the control file (:mod:`.served_levels`) for ``elastiserve level set`` to check against.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elastiserve_store.errors import BundleError

from .archive import ArchiveSpec, build_archive
from .gateway import Gateway, GatewayConfig
from .gateway_keys import KeyFile, KeyFileError
from .gateway_server import GatewayServer
from .level_agent import set_level
from .mar_overrides import MarError, ServeOverrides, read_config, rewrite_mar
from .runtime.batch_plan import batch_candidates, thread_candidates
from .runtime.control import level_index
from .runtime.cpu_threads import auto_threads
from .serve_profile import (
    ProfileError,
    ProfileResult,
    ProfileStopped,
    host_threads,
    profile_mar,
    worker_cores,
)
from .served_levels import ServedLevelsError, levels_of_bundle, levels_of_mar, write_served_levels
from .ts_config import MAX_REQUEST_SIZE
from .ts_server import TorchServe, free_port, run_torchserve

BUNDLE_DEFAULTS = {"workers": 1, "batch_size": 8, "max_batch_delay_ms": 5}
"""What ``--bundle`` archives with when a flag is left out (a .mar keeps its own values)."""


def port_number(text: str) -> int:
    """``--port``: 0 (a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not in 0..65535")
    return value


def positive(text: str) -> int:
    """A count that must be at least 1 (workers, batch size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


AUTO = "auto"


def positive_or_auto(text: str) -> int | str:
    """``--batch-size``/``--threads``: a count of at least 1, or ``auto`` (measured at start)."""
    return AUTO if text.strip().lower() == AUTO else positive(text)


def positive_ms(text: str) -> float:
    """``--objective-ms``: a latency objective, more than 0 ms."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 600_000:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 600000] ms")
    return value


def non_negative(text: str) -> int:
    """A delay in ms that may be 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="nested bundle directory")
    source.add_argument("--mar", type=Path, action="append", help=".mar file (repeatable)")
    parser.add_argument("--name", default=None,
                        help="model name to register (default: 'elastic' for --bundle, the file "
                             "name for --mar; with --mar it needs exactly one file)")
    parser.add_argument("--run-dir", type=Path, default=Path(".elastiserve/serve"))
    parser.add_argument("--workers", type=positive, default=None,
                        help="worker processes per model (default: the archive's; 1 for "
                             "--bundle)")
    parser.add_argument("--batch-size", type=positive_or_auto, default=None,
                        help="largest batch, or 'auto': measured on this host at start, the "
                             "smallest batch near the best throughput whose widest-level batch "
                             "fits the objective (needs --objective-ms; default: the archive's; "
                             "8 for --bundle)")
    parser.add_argument("--threads", type=positive_or_auto, default=None,
                        help="torch threads per worker, or 'auto': measured with the batch size "
                             "up to the pod's CPU request (or this host's cores) over the workers "
                             "(default: the archive's; from the pod's CPU request in a pod)")
    parser.add_argument("--objective-ms", type=positive_ms, default=None,
                        help="the latency objective 'auto' plans for (the p95 a client sees)")
    parser.add_argument("--max-batch-delay-ms", type=non_negative, default=None,
                        help="longest wait to fill a batch (default: the archive's; 5 for "
                             "--bundle; TorchServe cannot do 0, which becomes 1)")
    parser.add_argument("--allow-pin", action=argparse.BooleanOptionalAction, default=None,
                        help="let clients pin a level with X-Elastiserve-Level (default: the "
                             "archive's; off for --bundle)")
    parser.add_argument("--level", help="initial level (default: the widest)")
    parser.add_argument("--control-file", type=Path,
                        default=Path("/dev/shm/elastiserve/level.json"),
                        help="level control file the handler follows (wins over the archive's)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="inference address to bind (management stays on loopback)")
    parser.add_argument("--metrics-bind", default="127.0.0.1",
                        help="metrics address to bind (0.0.0.0 in a pod, for Prometheus)")
    parser.add_argument("--port", type=port_number, default=0,
                        help="inference port (0: a free one)")
    parser.add_argument("--metrics-port", type=port_number, default=0,
                        help="metrics port (0: a free one)")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--key-file", type=Path, default=None,
                      help="serve through a gateway that checks 'Authorization: Bearer <key>' "
                           "against this file (re-read when it changes; a pod mounts its "
                           "model's Secret here); TorchServe then listens on loopback only")
    auth.add_argument("--gateway", action="store_true",
                      help="the same gateway without a key check: only where clients are "
                           "authenticated in front (health probes, one port)")
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


def serve_overrides(args: argparse.Namespace) -> ServeOverrides:
    """The command line's settings for an archive; what it leaves out stays as archived.

    The control file is always set: the ``level`` line printed at start names it, and in a
    pod the agent writes the path the operator passes, whatever the archive was built with.
    """
    handler: dict[str, Any] = {"control_file": str(args.control_file)}
    if args.allow_pin is not None:
        handler["allow_pin"] = bool(args.allow_pin)
    if isinstance(args.threads, int):
        handler["threads"] = args.threads
    return ServeOverrides(
        workers=args.workers,
        batch_size=args.batch_size if isinstance(args.batch_size, int) else None,
        max_batch_delay_ms=args.max_batch_delay_ms,
        handler=handler,
    )


def _fail(message: str) -> int:
    print(f"elastiserve serve: {' '.join(message.split())}", file=sys.stderr)
    return 2


def served_level_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The served bundle's levels; empty when several archives may differ."""
    if args.bundle is not None:
        return levels_of_bundle(args.bundle)
    if len(args.mar) == 1:
        return levels_of_mar(args.mar[0])
    return ()


def _record_levels(control_file: Path, names: tuple[str, ...]) -> None:
    """Best effort: in a pod the control volume is read-only for this container."""
    if not names:
        return
    try:
        write_served_levels(control_file, names)
    except OSError as error:
        print(f"note: levels not recorded beside {control_file} ({error.strerror}); "
              "'elastiserve level set' then needs --bundle or --mar", file=sys.stderr)


def prepare_store(args: argparse.Namespace, store: Path,
                  overrides: ServeOverrides) -> tuple[str, ...]:
    """Check every input and fill the model store; returns the served level names.

    Raises what it refuses (a bundle or archive that is not one, an unknown level, settings
    out of range); nothing has started yet.
    """
    names = served_level_names(args)
    if args.level and names:
        try:
            level_index(names, args.level)
        except KeyError:
            raise ValueError(f"--level {args.level[:40]!r} is not a level of the served bundle "
                             f"({', '.join(names)}, or an index 0..{len(names) - 1})") from None
    store.mkdir(parents=True, exist_ok=True)
    if args.bundle is not None:
        chosen = {k: v if isinstance(v := getattr(args, k), int) else default
                  for k, default in BUNDLE_DEFAULTS.items()}
        handler: dict[str, Any] = {"control_file": str(args.control_file),
                                   "allow_pin": bool(args.allow_pin)}
        if isinstance(args.threads, int):
            handler["threads"] = args.threads
        spec = ArchiveSpec(**chosen, handler=handler)
        name = args.name or "elastic"
        build_archive(args.bundle, store, name, spec, force=True)
    else:
        for mar in args.mar:
            rewrite_mar(mar, store / mar.name, overrides)
    return names


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir.resolve()
    # Workers run from TorchServe's own directory: a relative path would name another file there,
    # and the level would silently never change.
    args.control_file = args.control_file.resolve()
    if args.mar is not None and args.name is not None and len(args.mar) != 1:
        return _fail("--name needs exactly one --mar (each would get that name)")
    planning = AUTO in (args.batch_size, args.threads)
    if planning and args.objective_ms is None:
        return _fail("--batch-size auto and --threads auto need --objective-ms (the latency "
                     "the plan must keep)")
    if not planning and args.objective_ms is not None:
        return _fail("--objective-ms is only used by --batch-size auto or --threads auto")
    if planning and args.mar is not None and len(args.mar) != 1:
        return _fail("--batch-size auto and --threads auto need exactly one --mar")
    keys = None
    if args.key_file is not None:
        keys = KeyFile(args.key_file)
        try:
            keys.load()  # refuse to start without a usable key rather than refuse every call
        except KeyFileError as error:
            return _fail(f"--key-file: {error}")
    try:
        overrides = serve_overrides(args)
        names = prepare_store(args, run_dir / "model-store", overrides)
        if args.level:
            level = args.level if not names or args.level in names else \
                level_index(names, args.level)
            set_level(args.control_file, level)
    except (MarError, BundleError, ServedLevelsError, ValueError, OSError) as error:
        return _fail(str(error))
    _record_levels(args.control_file, names)
    store = run_dir / "model-store"
    models = ([f"{args.name or 'elastic'}={args.name or 'elastic'}.mar"]
              if args.bundle is not None else mar_registrations(args.mar, args.name))

    def plan() -> int | None:
        """The measured plan, if asked for: ``None`` when done, else the exit code."""
        if not planning:
            return None
        try:
            apply_serving_plan(args, store / models[0].split("=", 1)[1], run_dir, stop)
        except (ProfileStopped, KeyboardInterrupt):
            print("elastiserve serve: stopped while profiling", file=sys.stderr)
            return 0
        except (MarError, ProfileError, OSError) as error:
            return _fail(f"auto batch size/threads: {error}")
        return None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if keys is not None or args.gateway:
        return _serve_behind_gateway(args, run_dir, store, models, keys, stop, names, plan)
    if (code := plan()) is not None:
        return code
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
        return _wait(server, stop)


def apply_serving_plan(args: argparse.Namespace, mar: Path, run_dir: Path,
                       stop: threading.Event | None = None) -> ProfileResult:
    """Profile the model store's archive on this host (:mod:`.serve_profile`), rewrite it with
    the planned batch size (and threads, for ``--threads auto``), print the plan, and keep the
    whole profile in ``RUN_DIR/serving-profile.json``."""
    config = read_config(mar)
    workers = int(config.get("minWorkers") or 1)
    handler = dict(config.get("handler") or {})
    archived = int(handler.get("threads") or 0)
    if args.threads == AUTO:
        counts = thread_candidates(host_threads(workers))
    else:  # the count the worker will run with (runtime.cpu_threads); 0: torch's default
        counts = (auto_threads(archived, os.environ)[0],)
    # A fixed batch size is timed alone: the threads must be the best for that batch.
    batches = (batch_candidates() if args.batch_size == AUTO
               else (int(config.get("batchSize") or 1),))
    result = profile_mar(mar, objective_ms=float(args.objective_ms),
                         max_batch_delay_ms=int(config.get("maxBatchDelay") or 0),
                         thread_counts=counts, cores=worker_cores(workers), batches=batches,
                         handler=handler, stop=stop)
    chosen = result.plan
    overrides = ServeOverrides(
        batch_size=chosen.batch_size if args.batch_size == AUTO else None,
        handler={"threads": chosen.threads} if args.threads == AUTO else {},
    )
    rewrite_mar(mar, mar, overrides)
    (run_dir / "serving-profile.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    print(f"profile:    batch size {overrides.batch_size or batches[0]}, threads "
          f"{chosen.threads} ({result.level}: {chosen.seconds * 1000:.1f} ms a batch, "
          f"{chosen.requests_per_s:.0f} requests/s a worker; {chosen.reason}; profiled in "
          f"{result.seconds:.1f} s, RUN_DIR/serving-profile.json)", flush=True)
    return result


def _serve_behind_gateway(
    args: argparse.Namespace, run_dir: Path, store: Path, models: list[str],
    keys: KeyFile | None, stop: threading.Event, names: tuple[str, ...] = (),
    plan: Callable[[], int | None] = lambda: None,
) -> int:
    """The gateway on ``--bind``/``--port``, TorchServe behind it on loopback only.

    TorchServe's key check is off because nothing but this pod's containers (or this host's
    processes, locally) can reach a loopback port; the gateway listens before TorchServe is
    ready, so probes get a 503 with the reason meanwhile. ``plan`` (``--batch-size auto``)
    runs after the gateway listens: a pod's liveness probe is answered while it measures.
    """
    inference_port, management_port = free_port(), free_port()
    config = GatewayConfig(
        inference_url=f"http://127.0.0.1:{inference_port}",
        management_url=f"http://127.0.0.1:{management_port}",
        models=[m.split("=", 1)[0] for m in models],
        max_request_size=MAX_REQUEST_SIZE,
        # In a pod the host name is the pod's name (what `kubectl get pods` shows).
        replica=socket.gethostname(),
        # Ready only once the control file names a served level: a replica that starts while
        # the model is narrowed must serve that level from its first request.
        control_file=args.control_file,
        level_names=names,
        # The v2 model metadata (input shape, classes, levels, version) is read from here.
        model_archives={name: store / file for name, file in (m.split("=", 1) for m in models)},
    )
    gateway = GatewayServer(Gateway(config, keys), args.bind, args.port)
    port = gateway.start()
    try:
        if (code := plan()) is not None:
            return code
        with run_torchserve(
            run_dir / "torchserve", store, models, bind_host="127.0.0.1",
            metrics_host=args.metrics_bind, inference_port=inference_port,
            management_port=management_port, metrics_port=args.metrics_port,
            token_authorization=False,
        ) as server:
            print(f"inference:  http://{args.bind}:{port}/predictions/<model> (gateway)")
            print(f"health:     http://{args.bind}:{port}/v2/health/ready")
            print(f"metrics:    http://{server.metrics_address}/metrics")
            if keys is not None:
                print(f"tokens:     Authorization: Bearer <the key in {keys.path}>")
            else:
                print("tokens:     none (the gateway checks no key: authenticate in front)")
            print(f"level:      elastiserve level set <name|index> --control-file "
                  f"{args.control_file}")
            code = _wait(server, stop)
            gateway.stop()  # drain the gateway while TorchServe still answers
            return code
    finally:
        gateway.stop()


def _wait(server: TorchServe, stop: threading.Event) -> int:
    """Until SIGTERM/Ctrl-C (0) or TorchServe's death (1)."""
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(1.0):
            if server.process.poll() is not None:
                print(f"elastiserve serve: torchserve exited with {server.process.returncode}",
                      file=sys.stderr)
                return 1
    return 0
