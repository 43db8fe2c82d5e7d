"""A :class:`~elastiserve_serve.level_agent.LevelSource` that watches one ``ElasticModel``.

The operator writes its decision into the CR's ``status.activeLevel``; this source keeps a
watch open on that one object (``fieldSelector=metadata.name=<name>``, which is what a
``resourceNames``-restricted Role allows for list/watch) and exposes the latest decision to
the agent's polling loop. Plain ``urllib`` in a background thread: the serving image has no
Kubernetes client and needs none for one GET and one watch.

Credentials: in a pod, a projected service-account token mounted into the agent container
only (re-read at every reconnect, because the kubelet rotates it) and the cluster CA; in
tests, a kubeconfig (token or client certificate). When the API server is unreachable, the
watch breaks or the object disappears, ``current()`` keeps returning the last decision, so
replicas keep serving the last level (the agent never clears the control file).

Per-node caps: the operator may cap the level of the replicas on a hot node
(``status.nodeCaps: {node: level}``). The agent learns its node's name from the downward API
(``spec.nodeName`` as env ``NODE_NAME``, which the operator's Deployment sets) and serves
``min(status.activeLevel, status.nodeCaps[node])``; a malformed cap, or one for another node,
changes nothing. Without a node name the agent serves the model-wide level.

Levels: the CR speaks indexes (0 = narrowest) and so does the control file: the source writes
``status.activeLevel`` as it is and the serving runtime resolves it against the bundle it
loaded. The agent therefore needs no list of level names, which is what used to go wrong (the
CR could only guess ``L<k>``, while training names levels ``L<k>-<pct>pct``). An index past the
last level is refused by the runtime, which keeps serving the level it has.

Run it: ``python -m elastiserve_serve.level_source_k8s --namespace NS --name NAME
--control-file /dev/shm/elastiserve/level.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from .level_agent import Decision, LevelAgent

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

GROUP_VERSION = "elastiserve.io/v1alpha1"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NODE_NAME_ENV = "NODE_NAME"
"""Env var holding the pod's node name (downward API ``spec.nodeName``)."""


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (the token is read lazily)."""

    server: str
    ssl_context: ssl.SSLContext
    token: Callable[[], str | None] = lambda: None

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def in_cluster(
        cls,
        token_file: Path = SA_DIR / "token",
        ca_file: Path = SA_DIR / "ca.crt",
        server: str | None = None,
    ) -> Connection:
        if server is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        context = ssl.create_default_context(cafile=str(ca_file))
        return cls(server, context, lambda: token_file.read_text().strip() or None)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Connection:
        """The current context of ``path`` (token or client certificate; CA file or data)."""
        config: dict[str, Any] = yaml.safe_load(path.read_text()) or {}

        def named(section: str, name: str) -> dict[str, Any]:
            for item in config.get(section) or []:
                if item.get("name") == name:
                    return dict(item.get(section[:-1]) or {})
            raise ValueError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

        context = named("contexts", str(config.get("current-context")))
        cluster = named("clusters", str(context.get("cluster")))
        user = named("users", str(context.get("user")))
        ssl_context = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
            ssl_context.load_verify_locations(cadata=ca)
        elif cluster.get("certificate-authority"):
            ssl_context.load_verify_locations(cafile=cluster["certificate-authority"])
        cert, key = user.get("client-certificate"), user.get("client-key")
        if user.get("client-certificate-data"):
            folder = Path(tempfile.mkdtemp(prefix="level-agent-"))
            cert, key = folder / "client.crt", folder / "client.key"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            key.chmod(0o600)
        if cert:
            ssl_context.load_cert_chain(str(cert), str(key) if key else None)
        token = user.get("token")
        return cls(str(cluster["server"]).rstrip("/"), ssl_context, lambda: token)


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
    level = _level(status.get("activeLevel"))
    if level is None:
        return None
    cap = node_cap(status, node)
    pin = (obj.get("spec") or {}).get("allowRequestPinning")
    return Decision(
        level=level if cap is None else min(level, cap),
        allow_pin=pin if isinstance(pin, bool) else None,
    )


class K8sLevelSource:
    """Latest decision of one ``ElasticModel``, kept current by a background watch."""

    def __init__(
        self,
        connection: Connection,
        namespace: str,
        name: str,
        *,
        watch_timeout_s: int = 240,
        retry_s: float = 1.0,
        node: str | None = None,
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.name = name
        self.node = node
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self._decision: Decision | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.updates = 0

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

    # ------------------------------------------------------------------ internals
    def _url(self, **params: str) -> str:
        base = (
            f"{self.connection.server}/apis/{GROUP_VERSION}/namespaces/"
            f"{quote(self.namespace)}/elasticmodels"
        )
        return f"{base}?{urlencode(params)}"

    def _open(self, url: str, timeout: float) -> Any:
        request = urllib.request.Request(url, headers=self.connection.headers())
        return urllib.request.urlopen(request, timeout=timeout, context=self.connection.ssl_context)

    def _observe(self, obj: Mapping[str, Any]) -> None:
        decision = decision_from_object(obj, self.node)
        if decision is not None:
            self._decision = decision
            self.updates += 1

    def _list(self) -> str:
        """Read the object once (through list, which the field selector authorises)."""
        selector = f"metadata.name={self.name}"
        with self._open(self._url(fieldSelector=selector), 10.0) as response:
            body = json.load(response)
        for item in body.get("items") or []:
            self._observe(item)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        url = self._url(
            fieldSelector=f"metadata.name={self.name}",
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(self.watch_timeout_s),
        )
        with self._open(url, self.watch_timeout_s + 30.0) as response:
            for line in response:
                if self._stop.is_set():
                    return
                if line.strip():
                    yield json.loads(line)

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                if not resource_version:
                    resource_version = self._list()
                for event in self._watch(resource_version):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        resource_version = ""  # e.g. 410 Gone: list again
                        break
                    new_version = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_version:
                        resource_version = str(new_version)
                    if kind in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                self.last_error = None
            except (OSError, urllib.error.URLError, ValueError) as error:
                # Keep the last decision; the agent keeps the control file as it is.
                self.last_error = str(error)
                log.warning("watch on %s/%s failed: %s", self.namespace, self.name, error)
                resource_version = ""
                self._stop.wait(self.retry_s)


def build_parser() -> argparse.ArgumentParser:
    """The agent's command line (separate so tests can check the pod spec's arguments)."""
    parser = argparse.ArgumentParser(
        prog="level-agent", description="copy an ElasticModel's level into the control file"
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--control-file", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, help="instead of the in-cluster token")
    parser.add_argument("--token-file", type=Path, default=SA_DIR / "token")
    parser.add_argument("--ca-file", type=Path, default=SA_DIR / "ca.crt")
    parser.add_argument("--server", help="API server URL (default: from KUBERNETES_SERVICE_*)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between syncs")
    parser.add_argument(
        "--node-name",
        default=os.environ.get(NODE_NAME_ENV) or None,
        help=f"node this replica runs on, for its cap in status.nodeCaps "
        f"(default: ${NODE_NAME_ENV})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    connection = (
        Connection.from_kubeconfig(args.kubeconfig)
        if args.kubeconfig
        else Connection.in_cluster(args.token_file, args.ca_file, args.server)
    )
    source = K8sLevelSource(connection, args.namespace, args.name, node=args.node_name).start()
    agent = LevelAgent(source, args.control_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    log.info("level agent for %s/%s on node %s -> %s", args.namespace, args.name,
             args.node_name or "(unknown: no cap applies)", args.control_file)
    agent.run(stop, args.interval)
    source.stop()
    log.info("level agent stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
