"""The test bed's own network namespace: where the real node, its pods and every client live.

kubelet refuses a loopback node IP, and the network rule of this project allows test traffic
only to loopback or to addresses inside namespaces the test bed made itself. So the harness
makes one namespace per test session (``es-<pid>``) holding:

* ``lo`` (up), so everything that used host loopback before keeps working unchanged;
* a veth pair whose first end carries the node's /32 address (``NODE_IP``) and a route for the
  Service range, so a ClusterIP connection is routed (and then rewritten by kube-proxy) instead
  of failing with "network unreachable" before netfilter sees it. No default route: nothing
  inside can reach an address outside the namespace, by construction.

The pytest plugin moves the test process itself into the namespace (``enter``) before anything
starts, so that the control plane, TorchServe, Prometheus and every in-process client share
it. Only the main thread switches (``setns`` is per thread); threads and children created
afterwards inherit it. Work that needs the outside network (building images from the package
registries) runs through :func:`outside_argv`.

A namespace left by a crashed run (its owner pid is gone) is removed by :func:`sweep_stale`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing import host_state
from elastiserve.testing.errors import ControlPlaneError

NETNS_DIR = Path("/run/netns")
PREFIX = "es-"
NODE_IP = "10.213.0.2"
NODE_DEVICE = "es-node"
PEER_DEVICE = "es-peer"
SERVICE_ROUTE = "10.96.0.0/16"
_CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^es-(\d+)$")

# The host namespace, opened before the switch: children that need the outside network are
# started through it. None until ``enter`` runs.
_host_fd: int | None = None
_entered: str | None = None


@dataclass(frozen=True)
class TestNetwork:
    """One namespace of the test bed."""

    name: str
    node_ip: str = NODE_IP

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ip") or "/usr/sbin/ip"
    if not Path(binary).exists():
        raise ControlPlaneError("the 'ip' command (Debian iproute2) is needed for the test network")
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=20, check=False
    )
    if check and done.returncode != 0:
        raise ControlPlaneError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def name_for(pid: int) -> str:
    return f"{PREFIX}{pid}"


def create(name: str) -> TestNetwork:
    """Make the namespace with ``lo`` up, the node's veth address and the Service route."""
    _ip("netns", "add", name)
    try:
        inside = ("-n", name)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "add", NODE_DEVICE, "type", "veth", "peer", "name", PEER_DEVICE)
        _ip(*inside, "addr", "add", f"{NODE_IP}/32", "dev", NODE_DEVICE)
        _ip(*inside, "link", "set", PEER_DEVICE, "up")
        _ip(*inside, "link", "set", NODE_DEVICE, "up")
        _ip(*inside, "route", "add", SERVICE_ROUTE, "dev", NODE_DEVICE, "src", NODE_IP)
    except BaseException:
        _ip("netns", "delete", name, check=False)
        raise
    return TestNetwork(name)


def delete(name: str) -> None:
    """Remove the namespace (its veth pair and every rule in it go with it)."""
    if (NETNS_DIR / name).exists():
        _ip("netns", "delete", name, check=False)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise ControlPlaneError(f"setns into a network namespace failed: {os.strerror(err)}")


def enter(net: TestNetwork) -> None:
    """Move the calling thread (call it from the main thread, first) into ``net``."""
    global _host_fd, _entered
    if _entered is not None:
        raise ControlPlaneError(f"already inside the test network {_entered}")
    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(net.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
    except BaseException:
        os.close(host)
        raise
    finally:
        os.close(target)
    _host_fd = host
    _entered = net.name
    os.environ["ELASTISERVE_TEST_NETNS"] = net.name


def leave() -> None:
    """Back to the host namespace (the calling thread); a no-op when never entered."""
    global _host_fd, _entered
    if _host_fd is None:
        return
    _setns(_host_fd)
    os.close(_host_fd)
    _host_fd = None
    _entered = None
    os.environ.pop("ELASTISERVE_TEST_NETNS", None)


def entered() -> str | None:
    """The test network this process is in, if any."""
    return _entered


def outside_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` made to run in the host namespace (image builds reach the registries there).

    Unchanged when this process never entered a test network.
    """
    if _host_fd is None:
        return list(argv)
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    return [nsenter, f"--net=/proc/{os.getpid()}/fd/{_host_fd}", "--", *argv]


def stale_names() -> list[str]:
    """Test-bed namespaces whose owning process is gone."""
    if not NETNS_DIR.is_dir():
        return []
    found: list[str] = []
    for entry in sorted(NETNS_DIR.iterdir()):
        match = _NAME.match(entry.name)
        if match and not host_state.pid_alive(int(match.group(1))):
            found.append(entry.name)
    return found


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (by inode), for the sweep."""
    try:
        target = os.stat(NETNS_DIR / name)
    except OSError:
        return []
    pids: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            st = os.stat(proc / "ns" / "net")
            if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
                pids.append(int(proc.name))
    return pids


def sweep_stale() -> list[str]:
    """Delete namespaces a crashed run left behind (killing what still runs in them)."""
    removed: list[str] = []
    for name in stale_names():
        for pid in pids_in(name):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
        delete(name)
        removed.append(name)
    return removed
