"""Start and stop a real local Kubernetes control plane with kwok fake nodes.

``ControlPlane.start`` brings up etcd and kube-apiserver (RBAC on, client-certificate admin),
then kube-controller-manager, kube-scheduler and kwok, creates the fake nodes and returns once
a pod could be scheduled and run: nodes Ready and untainted, the default ServiceAccount there.
Anything that goes wrong on the way stops what was already started before the error is raised,
and every error names the component, and quotes its log tail. Usage::

    with ControlPlane.start(tmp_path / "cp") as cp:
        cp.kubectl("get", "nodes")

``python -m elastiserve.testing.controlplane up`` does the same for a human and waits for
Ctrl-C, printing the kubeconfig to use meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.resources
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from elastiserve.testing import components as comp
from elastiserve.testing.aggregation import make_front_proxy_pki
from elastiserve.testing.apiclient import ApiClient, http_ok
from elastiserve.testing.assets import ASSETS_ENV, Assets
from elastiserve.testing.certs import make_pki
from elastiserve.testing.errors import ControlPlaneError, LeftoverProcessError
from elastiserve.testing.kubeconfig import write_kubeconfig
from elastiserve.testing.kwok_nodes import (
    KWOK_ANNOTATION,
    KWOK_ANNOTATION_VALUE,
    FakeNode,
    default_nodes,
)
from elastiserve.testing.ports import LOOPBACK, ensure_free, free_port
from elastiserve.testing.processes import ManagedProcess, stop_tiers, wait_until
from elastiserve.testing.rundir import RunDir

STOP_GRACE_S = 5.0
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


class ControlPlane:
    """A running control plane; use ``start`` (a context manager) to get one."""

    def __init__(self, run: RunDir, assets: Assets, layout: comp.Layout) -> None:
        self.run = run
        self.assets = assets
        self.layout = layout
        self.processes: list[ManagedProcess] = []
        self._api = ApiClient(LOOPBACK, layout.ports.apiserver, layout.pki)
        self._stopped = False

    # ----------------------------------------------------------------- starting
    @classmethod
    def start(
        cls,
        run_dir: Path,
        *,
        nodes: Sequence[FakeNode] | None = None,
        workloads: bool = True,
        assets: Assets | None = None,
        api_port: int | None = None,
        etcd_port: int | None = None,
        clean_stale: bool = False,
        timeout_s: float = 120.0,
        node_ip: str | None = None,
        kwok: bool = True,
    ) -> ControlPlane:
        """Start a control plane in ``run_dir``; the caller must ``stop`` it (or use ``with``).

        ``workloads=False`` starts only etcd and kube-apiserver (envtest's set), for tests that
        need the API and nothing that runs pods (and so no fake nodes).
        ``node_ip`` prepares the plane for a real node (:mod:`elastiserve.testing.realnode`):
        the API server also listens on that address, which pods reach, and its certificate
        names it; ``kwok=False`` leaves kwok out (a cluster of real nodes only).
        Explicit ports are checked up front; unset ones are picked free.
        """
        found = assets if assets is not None else Assets.locate()
        names = [comp.ETCD, comp.APISERVER]
        if workloads:
            names += [comp.CONTROLLER_MANAGER, comp.SCHEDULER]
            if kwok:
                names.append(comp.KWOK)
        binaries = {name: found.binary(name) for name in names}
        if nodes is None:
            nodes = default_nodes() if workloads else ()
        node_list = list(nodes)
        if node_list and not workloads:
            raise ControlPlaneError("fake nodes need kwok: pass workloads=True or nodes=()")

        ports = _pick_ports(api_port=api_port, etcd_port=etcd_port)
        if node_ip is not None:
            # A crashed real node may still have mounts under an old run directory: undo
            # them before anything there is deleted (a bind mount leads outside it).
            from elastiserve.testing.realnode import sweep_stale

            sweep_stale()
        run = RunDir.claim(run_dir, clean_stale=clean_stale)
        try:
            extra_ips = (node_ip,) if node_ip else ()
            pki = make_pki(run.path / "pki", comp.SERVICE_IP, extra_ips)
            # With a real node, the aggregation layer too (metrics-server for the HPA).
            front = make_front_proxy_pki(run.path / "pki" / "front-proxy") if node_ip else None
            layout = comp.Layout(run_dir=run.path, ports=ports, pki=pki, node_ip=node_ip,
                                 front_proxy=front)
            write_kubeconfig(layout.kubeconfig, layout.api_url, pki)
        except BaseException:
            run.release()
            raise
        plane = cls(run, found, layout)
        try:
            plane._bring_up(binaries, node_list, timeout_s)
        except BaseException:
            plane.stop()
            raise
        return plane

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess.spawn(name, argv, self.layout.log(name), cwd=self.run.path)
        self.processes.append(proc)
        self.run.add(name, proc.pid)
        return proc

    def _bring_up(
        self, binaries: dict[str, Path], nodes: list[FakeNode], timeout_s: float
    ) -> None:
        lay = self.layout
        etcd = self._spawn(comp.ETCD, comp.etcd_argv(binaries[comp.ETCD], lay))
        wait_until(
            lambda: http_ok(LOOPBACK, lay.ports.etcd_client, "/health", tls=False),
            what="etcd to report healthy",
            timeout_s=min(30.0, timeout_s),
            watch=[etcd],
        )
        api = self._spawn(comp.APISERVER, comp.apiserver_argv(binaries[comp.APISERVER], lay))
        wait_until(
            lambda: self._api.ok("/readyz"),
            what="kube-apiserver /readyz",
            timeout_s=timeout_s,
            watch=[etcd, api],
            interval_s=0.25,
        )
        if comp.CONTROLLER_MANAGER not in binaries:
            return
        for node in nodes:
            self._create("/api/v1/nodes", node.manifest())
        started = [
            self._spawn(
                comp.CONTROLLER_MANAGER,
                comp.controller_manager_argv(binaries[comp.CONTROLLER_MANAGER], lay),
            ),
            self._spawn(comp.SCHEDULER, comp.scheduler_argv(binaries[comp.SCHEDULER], lay)),
        ]
        health = [
            (comp.CONTROLLER_MANAGER, lay.ports.controller_manager, True),
            (comp.SCHEDULER, lay.ports.scheduler, True),
        ]
        if comp.KWOK in binaries:
            stages = importlib.resources.files("elastiserve.testing").joinpath(
                "kwok-stages.yaml")
            lay.kwok_config.write_text(stages.read_text(encoding="utf-8"), encoding="utf-8")
            selector = f"{KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}"
            started.append(
                self._spawn(comp.KWOK, comp.kwok_argv(binaries[comp.KWOK], lay, selector)))
            health.append((comp.KWOK, lay.ports.kwok, False))
        watch = [etcd, api, *started]
        for name, port, tls in health:
            wait_until(
                functools.partial(http_ok, LOOPBACK, port, "/healthz", tls=tls),
                what=f"{name} /healthz",
                timeout_s=timeout_s,
                watch=watch,
                interval_s=0.2,
            )
        names = {node.name for node in nodes}
        wait_until(
            lambda: not self._unready_nodes(names),
            what="fake nodes to be Ready without not-ready taints",
            timeout_s=timeout_s,
            watch=watch,
            interval_s=0.25,
            detail=lambda: f" (still waiting for {sorted(self._unready_nodes(names))})",
        )
        wait_until(
            lambda: self._api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
            what="the default ServiceAccount (pods are refused until it exists)",
            timeout_s=timeout_s,
            watch=watch,
            interval_s=0.2,
        )

    def _create(self, path: str, body: dict[str, Any]) -> None:
        reply = self._api.request("POST", path, body)
        if reply.status not in (200, 201):
            raise ControlPlaneError(
                f"POST {path} failed with {reply.status}: {reply.body.decode(errors='replace')}"
            )

    def _unready_nodes(self, names: set[str]) -> set[str]:
        try:
            reply = self._api.request("GET", "/api/v1/nodes")
        except OSError:
            return set(names)
        if reply.status != 200:
            return set(names)
        ready: set[str] = set()
        for item in reply.json().get("items", []):
            conditions = item.get("status", {}).get("conditions") or []
            is_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            )
            taints = item.get("spec", {}).get("taints") or []
            blocked = any(t.get("key") in NOT_READY_TAINTS for t in taints)
            if is_ready and not blocked:
                ready.add(item["metadata"]["name"])
        return names - ready

    # ------------------------------------------------------------------ using
    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def kubeconfig_path(self) -> Path:
        return self.layout.kubeconfig

    @property
    def api_url(self) -> str:
        return self.layout.api_url

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess that should use this cluster and these binaries."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig_path)
        env[ASSETS_ENV] = str(self.assets.directory)
        env["PATH"] = f"{self.assets.directory}{os.pathsep}{env.get('PATH', '')}"
        helm_home = self.run_dir / "helm"
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with ``check`` a failure raises with its stderr."""
        return self._run_tool(comp.KUBECTL, args, input, check, timeout_s)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster, with its cache and config kept in the run dir."""
        return self._run_tool(comp.HELM, args, input, check, timeout_s)

    def _run_tool(
        self,
        name: str,
        args: Sequence[str],
        input: str | None,
        check: bool,
        timeout_s: float,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.assets.binary(name)), f"--kubeconfig={self.kubeconfig_path}", *args]
        try:
            done = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ControlPlaneError(
                f"{name} {' '.join(args)} timed out after {timeout_s}s"
            ) from exc
        if check and done.returncode != 0:
            raise ControlPlaneError(
                f"{name} {' '.join(args)} failed with code {done.returncode}: "
                f"{done.stderr.strip()}"
            )
        return done

    def log_path(self, name: str) -> Path:
        return self.layout.log(name)

    def pids(self) -> list[int]:
        """Pids (and process-group ids) of every process this control plane started."""
        return [proc.pid for proc in self.processes]

    # ---------------------------------------------------------------- stopping
    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL after a grace period); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        servers = (comp.APISERVER, comp.ETCD)
        clients = [p for p in self.processes if p.name not in servers]
        api = [p for p in self.processes if p.name == comp.APISERVER]
        etcd = [p for p in self.processes if p.name == comp.ETCD]
        stop_tiers([clients, api, etcd], grace_s=STOP_GRACE_S)
        if not find_leftovers(self.pids()):
            self.run.release()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pick_ports(*, api_port: int | None, etcd_port: int | None) -> comp.Ports:
    if api_port is not None:
        ensure_free(api_port, "kube-apiserver secure port")
    if etcd_port is not None:
        ensure_free(etcd_port, "etcd client port")
    taken: set[int] = {p for p in (api_port, etcd_port) if p is not None}

    def fresh() -> int:
        while True:
            port = free_port()
            if port not in taken:
                taken.add(port)
                return port

    return comp.Ports(
        etcd_client=etcd_port if etcd_port is not None else fresh(),
        etcd_peer=fresh(),
        apiserver=api_port if api_port is not None else fresh(),
        controller_manager=fresh(),
        scheduler=fresh(),
        kwok=fresh(),
    )


def find_leftovers(pids: Sequence[int]) -> list[str]:
    """Processes still alive whose pid, or process group, is one of ``pids``.

    Every component leads its own process group, so a process forked by a component is found
    through its group even though the harness never saw its pid.
    """
    wanted = set(pids)
    found: list[str] = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            pid = int(proc.info["pid"])
            if pid in wanted or os.getpgid(pid) in wanted:
                found.append(f"{proc.info['name']} (pid {pid})")
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def assert_no_leftovers(pids: Sequence[int]) -> None:
    """Raise ``LeftoverProcessError`` if any process in ``pids`` (or their groups) lives on."""
    left = find_leftovers(pids)
    if left:
        raise LeftoverProcessError(f"processes still running after teardown: {', '.join(left)}")


# ------------------------------------------------------------------ command line
@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that ``kill`` tears the cluster down too."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elastiserve.testing.controlplane",
        description="Run the local Kubernetes test bed until interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and wait for Ctrl-C")
    up.add_argument("--run-dir", type=Path, default=Path("runs/controlplane"))
    up.add_argument("--api-port", type=int, default=None)
    up.add_argument("--clean", action="store_true", help="wipe state left by a crashed run")
    up.add_argument("--no-nodes", action="store_true", help="start without fake nodes")
    up.add_argument("--real-node", action="store_true",
                    help="join a real node (kubelet + containerd + kube-proxy) instead of kwok "
                         "nodes, inside a network namespace of its own (needs root)")
    up.add_argument("--image", type=Path, action="append", default=[],
                    help="with --real-node: an image archive to import into the node "
                         "(repeatable)")
    args = parser.parse_args(argv)
    if args.image and not args.real_node:
        parser.error("--image needs --real-node")
    started = time.monotonic()
    try:
        with _terminate_as_interrupt():
            if args.real_node:
                return _up_real_node(args, started)
            plane = ControlPlane.start(
                args.run_dir,
                nodes=() if args.no_nodes else None,
                api_port=args.api_port,
                clean_stale=args.clean,
            )
            with plane:
                _print_plane(plane, started)
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped.")
        return 0
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _print_plane(plane: ControlPlane, started: float, prefix: str = "") -> None:
    print(f"control plane up in {time.monotonic() - started:.1f}s")
    print(f"API server: {plane.api_url}")
    print(f"logs:       {plane.run_dir / 'logs'}")
    print(f"{prefix}export KUBECONFIG={plane.kubeconfig_path}")
    print(f"export PATH={plane.assets.directory}:$PATH")
    print("Ctrl-C to stop.", flush=True)


def _up_real_node(args: argparse.Namespace, started: float) -> int:
    """``up --real-node``: a namespace of our own, the plane and the node inside it."""
    from elastiserve.testing import netns
    from elastiserve.testing.testbed import real_cluster

    if os.geteuid() != 0:
        print("error: --real-node needs root (network namespace, mounts, cgroups)",
              file=sys.stderr)
        return 1
    missing = [str(path) for path in args.image if not path.is_file()]
    if missing:
        print(f"error: no such image archive: {', '.join(missing)}", file=sys.stderr)
        return 1
    netns.sweep_stale()
    net = netns.create(netns.name_for(os.getpid()))
    try:
        netns.enter(net)
        with real_cluster(args.run_dir, images=args.image) as cluster:
            print(f"real node {cluster.node.name} Ready at {cluster.node.ip} "
                  f"(network namespace {net.name})")
            print(f"run clients inside it: nsenter --net={net.path} -- bash")
            _print_plane(cluster.plane, started)
            while True:
                time.sleep(3600)
    finally:
        netns.leave()
        netns.delete(net.name)


if __name__ == "__main__":
    raise SystemExit(main())
