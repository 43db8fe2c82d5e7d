"""A real Kubernetes node in the test bed: containerd + runc, kubelet and kube-proxy.

kwok's nodes only pretend; pods scheduled here really run, from images built by this project
and imported into the node's own containerd, with real probes, mounts, security contexts and
Service routing (kube-proxy, iptables mode). ``RealNode.start(plane, ...)`` joins a running
:class:`~elastiserve.testing.controlplane.ControlPlane` that was started with
``node_ip=NODE_IP`` from inside the test network (:mod:`elastiserve.testing.netns`), and
returns once the node is Ready and untainted. What was found to work on this kind of machine,
and why each setting is there, is in ``../shared/REAL-NODE.md`` and
:mod:`elastiserve.testing.node_config`.

State outside the processes is recorded before it is made and undone at ``stop`` (also by
:func:`sweep_stale` after a crash): a registry file under ``/run/elastiserve`` names the run
directory and the kernel settings kubelet will change; teardown stops the pods, kubelet,
kube-proxy and containerd, kills the shims that outlive containerd, unmounts everything under
the run directory, removes the ``kubepods`` cgroup trees depth-first and restores the sysctls.
:meth:`RealNode.leftovers` lists anything of that still there (the tests assert it is empty).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from elastiserve.testing import host_state, netns
from elastiserve.testing import node_config as cfg
from elastiserve.testing.assets import Assets
from elastiserve.testing.certs import make_client_cert
from elastiserve.testing.errors import ControlPlaneError
from elastiserve.testing.kubeconfig import write_kubeconfig
from elastiserve.testing.pause_image import ECHO_REPOSITORY, write_pause_image
from elastiserve.testing.ports import LOOPBACK, free_port
from elastiserve.testing.processes import ManagedProcess, wait_until

REGISTRY_DIR = Path("/run/elastiserve")
CONTAINERD = "containerd"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
PAUSE = "elastiserve-pause"
STOP_GRACE_S = 10.0


class RealNodeError(ControlPlaneError):
    """The real node could not be started, or left state behind."""


def _need_executable(name: str, *candidates: str) -> Path:
    for candidate in (shutil.which(name), *candidates):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise RealNodeError(
        f"the real node needs {name!r}, which is not installed (Debian: `make system-deps` "
        "installs containerd, runc, containernetworking-plugins, iptables)"
    )


def check_prerequisites() -> dict[str, Path]:
    """Every host tool the node needs, or one line naming the first one missing."""
    if os.geteuid() != 0:
        raise RealNodeError("the real node needs root (kubelet mounts, cgroups, iptables)")
    if netns.entered() is None:
        raise RealNodeError(
            "the real node runs inside the test bed's network namespace; start it from the "
            "pytest plugin or `python -m elastiserve.testing.controlplane up --real-node`"
        )
    tools = {
        CONTAINERD: _need_executable(CONTAINERD, "/usr/bin/containerd"),
        "ctr": _need_executable("ctr", "/usr/bin/ctr"),
        "runc": _need_executable("runc", "/usr/sbin/runc", "/usr/bin/runc"),
        "iptables": _need_executable("iptables", "/usr/sbin/iptables"),
        "bridge": _need_executable("bridge-cni", str(cfg.CNI_BIN_DIR / "bridge")),
        "host-local": _need_executable("host-local-cni", str(cfg.CNI_BIN_DIR / "host-local")),
    }
    return tools


class RealNode:
    """A running node; use :meth:`start` (a context manager) to get one."""

    def __init__(self, layout: cfg.NodeLayout, plane: Any, tools: dict[str, Path]) -> None:
        self.layout = layout
        self.plane = plane
        self.tools = tools
        self.processes: dict[str, ManagedProcess] = {}
        self.images: dict[str, str] = {}
        self.echo_image = ""
        """The harness's echo workload (``-http ADDR`` as the container's args)."""
        self.sysctls: dict[str, str] = {}
        self._registry = REGISTRY_DIR / f"realnode-{os.getpid()}.json"
        self._stopped = False

    # ----------------------------------------------------------------- starting
    @classmethod
    def start(
        cls,
        plane: Any,
        run_dir: Path,
        *,
        images: Sequence[Path] = (),
        assets: Assets | None = None,
        timeout_s: float = 120.0,
    ) -> RealNode:
        """Join ``plane`` with a node whose state lives in ``run_dir``; import ``images``.

        ``plane`` must have been started with ``node_ip`` (the API server then listens where
        pods can reach it). Any failure stops what was started and raises one error that
        names the component and quotes its log.
        """
        tools = check_prerequisites()
        node_ip = plane.layout.node_ip
        if node_ip is None:
            raise RealNodeError("the control plane was started without node_ip; pass "
                                "node_ip=netns.NODE_IP to ControlPlane.start")
        found = assets if assets is not None else plane.assets
        binaries = {name: found.binary(name) for name in (KUBELET, KUBE_PROXY, PAUSE)}
        sweep_stale()
        root = run_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
        pause = write_pause_image(binaries[PAUSE], root / "images")
        echo = write_pause_image(binaries[PAUSE], root / "images", repository=ECHO_REPOSITORY,
                                 entrypoint=("/pause", "-http"))
        ports = cfg.NodePorts(
            kubelet=free_port(), kubelet_healthz=free_port(),
            proxy_healthz=free_port(), proxy_metrics=free_port(),
        )
        layout = cfg.NodeLayout(
            root=root,
            node_ip=node_ip,
            ports=ports,
            sandbox_image=pause.ref,
            ca_cert=plane.layout.pki.ca_cert,
            kubelet_kubeconfig=root / "kubelet.kubeconfig",
            proxy_kubeconfig=root / "kube-proxy.kubeconfig",
            cgroup_root=f"elastiserve-{os.getpid()}",
        )
        node = cls(layout, plane, tools)
        try:
            node._record()
            node._write_files()
            node._start_containerd(binaries, [pause.archive, echo.archive, *images])
            node.echo_image = echo.ref
            node._start_kubelet(binaries[KUBELET], timeout_s)
            node._start_proxy(binaries[KUBE_PROXY], timeout_s)
        except BaseException:
            node.stop()
            raise
        return node

    def _record(self) -> None:
        """Write the registry entry first, so even a crash during start can be swept."""
        self.sysctls = host_state.read_sysctls(cfg.KUBELET_SYSCTLS)
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        entry = {"pid": os.getpid(), "root": str(self.layout.root), "sysctls": self.sysctls,
                 "cgroup_root": self.layout.cgroup_root}
        tmp = self._registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=2), encoding="utf-8")
        tmp.replace(self._registry)

    def _write_files(self) -> None:
        lay = self.layout
        for directory in (lay.containerd_dir, lay.cni_conf_dir, lay.cni_ipam_dir,
                          lay.kubelet_dir, lay.pod_logs):
            directory.mkdir(parents=True, exist_ok=True)
        lay.containerd_config.write_text(cfg.containerd_config(lay), encoding="utf-8")
        (lay.cni_conf_dir / "10-elastiserve.conflist").write_text(
            cfg.cni_conflist(lay), encoding="utf-8")
        lay.kubelet_config.write_text(cfg.kubelet_config(lay), encoding="utf-8")
        lay.proxy_config.write_text(cfg.proxy_config(lay), encoding="utf-8")
        # No cluster DNS here: pods get a resolver file with no nameserver, so a lookup
        # fails at once instead of waiting on an address outside the namespace.
        lay.resolv_conf.write_text("search svc.cluster.local cluster.local\n", encoding="utf-8")
        pki = self.plane.layout.pki
        server = self.plane.api_url
        cert, key = make_client_cert(pki, "kubelet", f"system:node:{cfg.NODE_NAME}",
                                     "system:nodes")
        write_kubeconfig(lay.kubelet_kubeconfig, server, pki, cert=cert, key=key)
        cert, key = make_client_cert(pki, "kube-proxy", "system:kube-proxy")
        write_kubeconfig(lay.proxy_kubeconfig, server, pki, cert=cert, key=key)

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess.spawn(name, argv, self.layout.root / "logs" / f"{name}.log",
                                    cwd=self.layout.root)
        self.processes[name] = proc
        return proc

    def ctr(self, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this node's containerd, in the namespace kubelet uses."""
        argv = [str(self.tools["ctr"]), f"--address={self.layout.containerd_socket}",
                "--namespace=k8s.io", *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise RealNodeError(f"ctr {' '.join(args)} timed out after {timeout_s:.0f}s") from exc
        if done.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def import_image(self, archive: Path) -> list[str]:
        """Import an image archive (OCI or docker format); returns the references it holds."""
        done = self.ctr("images", "import", "--no-unpack=false", str(archive))
        refs = [line.split()[1] for line in done.stdout.splitlines()
                if line.startswith("unpacking ") and len(line.split()) > 1]
        for ref in refs:
            self.images[ref] = str(archive)
        return refs

    def _start_containerd(self, binaries: dict[str, Path], archives: list[Path]) -> None:
        lay = self.layout
        proc = self._spawn(CONTAINERD, cfg.containerd_argv(self.tools[CONTAINERD], lay))
        wait_until(lambda: lay.containerd_socket.exists() and self._ctr_ok(),
                   what="containerd to answer on its socket", timeout_s=30.0, watch=[proc])
        for archive in archives:
            self.import_image(archive)

    def _ctr_ok(self) -> bool:
        try:
            self.ctr("version", timeout_s=5.0)
        except RealNodeError:
            return False
        return True

    def _start_kubelet(self, binary: Path, timeout_s: float) -> None:
        lay = self.layout
        host_state.make_cgroup_root(lay.cgroup_root)
        proc = self._spawn(KUBELET, cfg.kubelet_argv(binary, lay, lay.root / "kubelet-pki"))
        watch = [self.processes[CONTAINERD], proc]
        wait_until(self._node_ready, what=f"node {cfg.NODE_NAME} to be Ready and untainted",
                   timeout_s=timeout_s, watch=watch, interval_s=0.2)

    def _start_proxy(self, binary: Path, timeout_s: float) -> None:
        from elastiserve.testing.apiclient import http_ok

        proc = self._spawn(KUBE_PROXY, cfg.proxy_argv(binary, self.layout))
        wait_until(lambda: http_ok(LOOPBACK, self.layout.ports.proxy_healthz, "/healthz",
                                   tls=False),
                   what="kube-proxy /healthz", timeout_s=timeout_s,
                   watch=[*self.processes.values(), proc], interval_s=0.2)

    def _node_ready(self) -> bool:
        reply = self.plane.kubectl("get", "node", cfg.NODE_NAME, "-o", "json", check=False)
        if reply.returncode != 0:
            return False
        node = json.loads(reply.stdout)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in node.get("status", {}).get("conditions") or [])
        taints = [t.get("key") for t in node.get("spec", {}).get("taints") or []]
        return ready and not any(t.startswith("node.kubernetes.io/") for t in taints if t)

    # ------------------------------------------------------------------ using
    @property
    def name(self) -> str:
        return cfg.NODE_NAME

    @property
    def ip(self) -> str:
        return self.layout.node_ip

    def log_path(self, name: str) -> Path:
        return self.layout.root / "logs" / f"{name}.log"

    # ---------------------------------------------------------------- stopping
    def _delete_pods(self, timeout_s: float) -> None:
        """Ask the API to delete every pod on this node and give kubelet time to stop them."""
        if KUBELET not in self.processes or self.processes[KUBELET].returncode() is not None:
            return
        selector = f"spec.nodeName={cfg.NODE_NAME}"
        # Cordoned first: a Deployment's replacement pods then stay Pending instead of
        # landing on the node again while it drains.
        self.plane.kubectl("cordon", cfg.NODE_NAME, check=False)
        self.plane.kubectl("delete", "pods", "--all-namespaces", f"--field-selector={selector}",
                           "--grace-period=1", "--wait=false", check=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listed = self.plane.kubectl("get", "pods", "-A", f"--field-selector={selector}",
                                        "-o", "name", check=False)
            if listed.returncode != 0 or not listed.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Pods, kube-proxy and kubelet, containerd and its shims, then mounts, cgroups and
        sysctls; idempotent, and safe after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ControlPlaneError):
            self._delete_pods(timeout_s=30.0)
        for name in (KUBE_PROXY, KUBELET):
            if name in self.processes:
                self.processes[name].stop(grace_s=STOP_GRACE_S)
        cleanup_root(self.layout.root, self.sysctls, self.layout.cgroup_root,
                     containerd=self.processes.get(CONTAINERD))
        with contextlib.suppress(FileNotFoundError):
            self._registry.unlink()

    def leftovers(self) -> list[str]:
        return find_leftovers(self.layout.root, self.sysctls, self.layout.cgroup_root)

    def __enter__(self) -> RealNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cleanup_root(
    root: Path,
    sysctls: dict[str, str],
    cgroup_root: str,
    *,
    containerd: ManagedProcess | None = None,
) -> None:
    """Undo everything a node with state in ``root`` made (running or crashed)."""
    trees = host_state.cgroup_trees(cgroup_root)
    host_state.kill_cgroup_tasks(trees)  # the containers' processes
    socket = str(root / "containerd" / "containerd.sock")
    if containerd is not None:
        containerd.stop(grace_s=STOP_GRACE_S)
    # Shims outlive containerd; anything else still naming this run's files goes too.
    host_state.kill_processes([pid for pid, _ in host_state.processes_mentioning(socket)])
    host_state.kill_processes([pid for pid, _ in host_state.processes_mentioning(str(root))])
    host_state.unmount_all(root)
    host_state.remove_cgroup_trees(host_state.cgroup_trees(cgroup_root))
    host_state.restore_sysctls(sysctls)


def find_leftovers(root: Path, sysctls: dict[str, str], cgroup_root: str) -> list[str]:
    """Everything of a node in ``root`` still present: the teardown tests assert none."""
    left: list[str] = []
    socket = str(root / "containerd" / "containerd.sock")
    for pid, cmdline in host_state.processes_mentioning(str(root)):
        left.append(f"process {pid}: {cmdline[:120]}")
    for pid, cmdline in host_state.processes_mentioning(socket):
        if not any(f"process {pid}:" in item for item in left):
            left.append(f"process {pid}: {cmdline[:120]}")
    left.extend(f"mount {point}" for point in host_state.mounts_under(root))
    left.extend(f"cgroup {tree}" for tree in host_state.cgroup_trees(cgroup_root))
    now = host_state.read_sysctls(sysctls)
    left.extend(f"sysctl {key}={now.get(key)} (was {value})"
                for key, value in sysctls.items() if now.get(key) != value)
    return left


def sweep_stale() -> list[str]:
    """Clean up after real nodes whose harness process died without stopping them."""
    swept: list[str] = []
    if not REGISTRY_DIR.is_dir():
        return swept
    for entry in sorted(REGISTRY_DIR.glob("realnode-*.json")):
        try:
            record = json.loads(entry.read_text(encoding="utf-8"))
            pid, root = int(record["pid"]), Path(record["root"])
            sysctls = {str(k): str(v) for k, v in dict(record.get("sysctls", {})).items()}
            cgroup_root = str(record["cgroup_root"])
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        if host_state.pid_alive(pid):
            continue  # a live harness (this one included) owns it
        cleanup_root(root, sysctls, cgroup_root)
        entry.unlink(missing_ok=True)
        swept.append(str(root))
    return swept

