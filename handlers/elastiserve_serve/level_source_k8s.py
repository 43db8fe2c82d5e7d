"""A :class:`~elastiserve_serve.level_agent.LevelSource` that watches one ``ElasticModel``.

The operator writes its decision into the CR's ``status.activeLevel``; this source keeps a
watch open on that one object (``fieldSelector=metadata.name=<name>``, which is what a
``resourceNames``-restricted Role allows for list/watch) and exposes the latest decision to
the agent's polling loop.

Surviving the network (the ``kubernetes`` client's list and ``Watch``, which tracks resource
versions and bookmarks):

* list once, then watch from the list's resource version with ``allowWatchBookmarks`` in
  windows of ``watch_timeout_s``; each new window resumes from the last resource version seen
  (an event's or a bookmark's), so nothing is missed and nothing is re-read;
* a watch cut mid-stream, a refused connection (an API server restarting) or an error answer
  (an expired token: 401) is retried after a :class:`~.backoff.Backoff` delay (0.1-0.2 s
  first, doubling to at most 5 s, reset by a sync), resuming from the last resource version;
  a version the server no longer has (410 Gone) is listed again;
* credentials are read again on every request: the projected service-account token file (the
  kubelet rotates it) in a pod, the kubeconfig in tests;
* a heartbeat file (:mod:`.agent_heartbeat`) holds the time of the last sync; the agent's
  liveness probe (``--check-alive``) fails when it is too old.

When the API server is unreachable, the watch breaks or the object disappears, ``current()``
keeps returning the last decision, so replicas keep serving the last level (the agent never
clears the control file).

Per-node caps: the operator may cap the level of the replicas on a hot node
(``status.nodeCaps: {node: level}``). The agent learns its node's name from the downward API
(``spec.nodeName`` as env ``NODE_NAME``, which the operator's Deployment sets) and serves
``min(status.activeLevel, status.nodeCaps[node])``; a malformed cap, or one for another node,
changes nothing. Without a node name the agent serves the model-wide level.

Worker bounds: with ``spec.policy.loops`` Both or Worker the operator writes
``status.workerBounds`` (``floor``, ``objectiveMs``); the agent copies them into the control
file beside the level, which then is the ceiling each worker picks under, per batch
(``runtime.batch_level``). Without them (Operator) the file holds the level alone.

Levels: the CR speaks indexes (0 = narrowest) and so does the control file: the source writes
``status.activeLevel`` as it is and the serving runtime resolves it against the bundle it
loaded. An index past the last level is refused by the runtime, which keeps serving the level
it has (and the gateway's readiness says why).

Run it: ``python -m elastiserve_serve.level_source_k8s --namespace NS --name NAME
--control-file /dev/shm/elastiserve/level.json``; its liveness probe is the same command with
``--check-alive`` (exit 0 while the last sync is at most ``--max-stale-s`` old). The
``kubernetes`` package is imported only by the agent itself, never by the probe.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agent_heartbeat import DEFAULT_MAX_STALE_S, Heartbeat, check_alive, heartbeat_file_for
from .backoff import Backoff
from .level_agent import Decision, LevelAgent
from .runtime.control import MAX_OBJECTIVE_MS

__all__ = [
    "NODE_NAME_ENV",
    "Connection",
    "K8sLevelSource",
    "build_parser",
    "decision_from_object",
    "main",
    "node_cap",
]

log = logging.getLogger(__name__)

GROUP = "elastiserve.io"
VERSION = "v1alpha1"
PLURAL = "elasticmodels"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NODE_NAME_ENV = "NODE_NAME"
"""Env var holding the pod's node name (downward API ``spec.nodeName``)."""
HTTP_GONE = 410


@dataclass(frozen=True)
class Connection:
    """Makes a ``kubernetes.client.ApiClient`` per connection attempt, with fresh credentials."""

    make_client: Callable[[], Any]

    @classmethod
    def in_cluster(
        cls,
        token_file: Path = SA_DIR / "token",
        ca_file: Path = SA_DIR / "ca.crt",
        server: str | None = None,
    ) -> Connection:
        """The projected token and CA; the token is read again for every request."""
        if server is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

        def make() -> Any:
            from kubernetes import client

            config = client.Configuration(host=server, ssl_ca_cert=str(ca_file))
            config.api_key = {"authorization": _read_token(token_file)}
            config.api_key_prefix = {"authorization": "Bearer"}

            def refresh(conf: Any) -> None:  # called before every request: a rotated token
                conf.api_key["authorization"] = _read_token(token_file)

            hook: Any = refresh
            config.refresh_api_key_hook = hook
            return client.ApiClient(config)

        return cls(make)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Connection:
        """The current context of ``path``, read again at every connection attempt."""

        def make() -> Any:
            from kubernetes import config

            return config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]

        return cls(make)


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as error:
        log.warning("cannot read the token %s: %s", path, error.strerror)
        return ""


def _level(raw: object) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        return None
    return raw


def node_cap(status: Mapping[str, Any], node: str | None) -> int | None:
    """The cap ``status.nodeCaps`` sets for ``node``, or ``None`` (no cap, or unusable)."""
    caps = status.get("nodeCaps")
    if not node or not isinstance(caps, Mapping):
        return None
    return _level(caps.get(node))


def decision_from_object(obj: Mapping[str, Any], node: str | None = None) -> Decision | None:
    """The decision an ``ElasticModel`` holds for a replica on ``node``, or ``None`` (no
    level decided yet): the model's level, lowered to the node's cap if it has one."""
    status = obj.get("status") or {}
    if not isinstance(status, Mapping):
        return None
    level = _level(status.get("activeLevel"))
    if level is None:
        return None
    cap = node_cap(status, node)
    spec = obj.get("spec") or {}
    pin = spec.get("allowRequestPinning") if isinstance(spec, Mapping) else None
    floor, objective_ms = worker_bounds(status)
    return Decision(
        level=level if cap is None else min(level, cap),
        allow_pin=pin if isinstance(pin, bool) else None,
        floor=floor,
        objective_ms=objective_ms,
    )


def worker_bounds(status: Mapping[str, Any]) -> tuple[int | None, float | None]:
    """``status.workerBounds`` (floor, objective in ms) for the workers' per-batch choice, or
    ``(None, None)`` (absent: ``spec.policy.loops`` is Operator; malformed: the same, so a
    broken field makes replicas serve the ceiling exactly, as before the choice existed)."""
    bounds = status.get("workerBounds")
    if not isinstance(bounds, Mapping):
        return None, None
    floor = _level(bounds.get("floor"))
    objective = bounds.get("objectiveMs")
    if (floor is None or isinstance(objective, bool) or not isinstance(objective, (int, float))
            or not 0 < objective <= MAX_OBJECTIVE_MS):
        return None, None
    return floor, float(objective)


class K8sLevelSource:
    """Latest decision of one ``ElasticModel``, kept current by a background watch."""

    def __init__(
        self,
        connection: Connection,
        namespace: str,
        name: str,
        *,
        watch_timeout_s: int = 60,
        backoff: Backoff | None = None,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.name = name
        self.node = node
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or Backoff(base_s=0.2, cap_s=5.0)
        self._clock = clock
        self._decision: Decision | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.last_error: str | None = None
        self.updates = 0
        self.reconnects = 0
        self.relists = 0
        self.last_sync: float | None = None
        """Wall-clock time of the last sync with the API server (``None``: never yet)."""
        self.resource_version: str | None = None

    # ------------------------------------------------------------------ LevelSource
    def current(self) -> Decision | None:
        return self._decision

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> K8sLevelSource:
        self._thread = threading.Thread(target=self._run, name="level-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()

    # ------------------------------------------------------------------ internals
    def _synced(self) -> None:
        self.last_sync = self._clock()
        self.last_error = None
        self.backoff.reset()

    def _observe(self, obj: Any) -> None:
        if not isinstance(obj, Mapping):
            return
        decision = decision_from_object(obj, self.node)
        if decision is not None:
            self._decision = decision
            self.updates += 1

    def _list(self, api: Any) -> str:
        """Read the object once (through list, which the field selector authorises)."""
        body = api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL,
            field_selector=f"metadata.name={self.name}", _request_timeout=(5, 15),
        )
        for item in (body.get("items") or []) if isinstance(body, Mapping) else []:
            self._observe(item)
        self.relists += 1
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        self._synced()
        return str(version or "")

    def _watch_window(self, api: Any, resource_version: str) -> None:
        """One watch from ``resource_version`` until the server ends it (or it breaks)."""
        from kubernetes import watch

        self._watch = watcher = watch.Watch()  # type: ignore[no-untyped-call]
        started = time.monotonic()
        events = 0
        for event in watcher.stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
            field_selector=f"metadata.name={self.name}", resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s,
            _request_timeout=(5, self.watch_timeout_s + 15),
        ):
            if self._stop.is_set():
                break
            events += 1
            if watcher.resource_version:
                self.resource_version = str(watcher.resource_version)
            kind = event.get("type") if isinstance(event, Mapping) else None
            if kind in ("ADDED", "MODIFIED"):
                self._observe(event.get("raw_object"))
            self._synced()  # an event or a bookmark: the server is there and we are current
        # The server closes a window at its timeout; a window that ended much sooner without
        # a word was cut (a proxy, a restart): retry after a delay, not in a tight loop.
        if events == 0 and time.monotonic() - started < self.watch_timeout_s / 2:
            raise ConnectionError("the watch ended early without an event")
        if events == 0:
            self._synced()

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            api_client = None
            try:
                api_client = self.connection.make_client()
                from kubernetes import client

                api = client.CustomObjectsApi(api_client)
                if not self.resource_version:
                    self.resource_version = self._list(api)
                self._watch_window(api, self.resource_version)
                continue
            except ApiException as error:
                if error.status == HTTP_GONE:
                    self.resource_version = None  # too old: list again, at once
                    log.info("watch on %s/%s: resource version gone, listing again",
                             self.namespace, self.name)
                    continue
                self._failed(f"API answered {error.status} {error.reason}")
            except Exception as error:  # network, TLS, a broken stream: keep the decision
                self._failed(f"{type(error).__name__}: {error}")
            finally:
                self._watch = None
                if api_client is not None:
                    api_client.close()
            self.reconnects += 1
            self._stop.wait(self.backoff.next_delay())

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.warning("watch on %s/%s failed (keeping %s): %s", self.namespace, self.name,
                        self._decision, message[:300])
        self.last_error = message


def build_parser() -> argparse.ArgumentParser:
    """The agent's command line (separate so tests can check the pod spec's arguments)."""
    parser = argparse.ArgumentParser(
        prog="level-agent", description="copy an ElasticModel's level into the control file"
    )
    parser.add_argument("--namespace")
    parser.add_argument("--name")
    parser.add_argument("--control-file", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, help="instead of the in-cluster token")
    parser.add_argument("--token-file", type=Path, default=SA_DIR / "token")
    parser.add_argument("--ca-file", type=Path, default=SA_DIR / "ca.crt")
    parser.add_argument("--server", help="API server URL (default: from KUBERNETES_SERVICE_*)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between syncs")
    parser.add_argument("--watch-timeout-s", type=int, default=60,
                        help="length of one watch window (the server ends it; default 60)")
    parser.add_argument(
        "--node-name",
        default=os.environ.get(NODE_NAME_ENV) or None,
        help=f"node this replica runs on, for its cap in status.nodeCaps "
        f"(default: ${NODE_NAME_ENV})",
    )
    parser.add_argument("--heartbeat-file", type=Path, default=None,
                        help="liveness heartbeat (default: level-agent.alive beside the "
                             "control file)")
    parser.add_argument("--check-alive", action="store_true",
                        help="liveness probe: exit 0 if the agent synced within --max-stale-s, "
                             "else print why and exit 1 (imports no Kubernetes client)")
    parser.add_argument("--max-stale-s", type=float, default=DEFAULT_MAX_STALE_S,
                        help=f"for --check-alive (default {DEFAULT_MAX_STALE_S:.0f})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    heartbeat_path = args.heartbeat_file or heartbeat_file_for(args.control_file)
    if args.check_alive:
        alive, why = check_alive(heartbeat_path, args.max_stale_s)
        print(f"level agent {'alive' if alive else 'not alive'}: {why}",
              file=sys.stdout if alive else sys.stderr)
        return 0 if alive else 1
    if not args.namespace or not args.name:
        print("level-agent: --namespace and --name are required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    connection = (
        Connection.from_kubeconfig(args.kubeconfig)
        if args.kubeconfig
        else Connection.in_cluster(args.token_file, args.ca_file, args.server)
    )
    heartbeat = Heartbeat(heartbeat_path)
    started_at = time.time()
    heartbeat.beat(started_at)  # a new agent gets the whole allowance for its first sync
    source = K8sLevelSource(connection, args.namespace, args.name, node=args.node_name,
                            watch_timeout_s=args.watch_timeout_s).start()
    agent = LevelAgent(source, args.control_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    log.info("level agent for %s/%s on node %s -> %s (heartbeat %s)", args.namespace,
             args.name, args.node_name or "(unknown: no cap applies)", args.control_file,
             heartbeat_path)
    while not stop.is_set():
        agent.sync_once()
        if source.last_sync is not None:
            heartbeat.beat(source.last_sync)
        stop.wait(args.interval)
    source.stop()
    log.info("level agent stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
