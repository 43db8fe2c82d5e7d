"""Teardown of a real node leaves nothing behind: after a clean stop, and after a crash.

Each case runs ``python -m elastiserve.testing.controlplane up --real-node`` as its own process
(it makes a network namespace of its own inside the session's), starts a pod on it, then
stops it with SIGTERM (clean) or SIGKILL (crash). After a clean stop nothing may remain; after
a crash the shims, mounts, cgroups and namespace do remain (checked, so the sweep is really
tested) and the stale-state sweep, which every start runs first, removes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastiserve.testing import host_state, netns, realnode
from elastiserve.testing.assets import Assets
from elastiserve.testing.node_config import KUBELET_SYSCTLS
from elastiserve.testing.pause_image import ECHO_REPOSITORY, write_pause_image
from elastiserve.testing.processes import wait_until

pytestmark = [pytest.mark.controlplane, pytest.mark.realnode, pytest.mark.slow]

READY_LINE = "Ctrl-C to stop."


class Bed:
    """One ``up --real-node`` process and what the test needs to talk to it."""

    def __init__(self, run_dir: Path, tmp: Path) -> None:
        self.run_dir = run_dir
        self.log = tmp / "up.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "elastiserve.testing.controlplane", "up", "--real-node",
             "--run-dir", str(run_dir)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        wait_until(self._ready, what="`up --real-node` to print its ready line",
                   timeout_s=180.0, interval_s=0.2, detail=lambda: f"\n{self._log()}")
        self.netns = netns.name_for(self.proc.pid)
        self.kubeconfig = run_dir / "kubeconfig"

    def _log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"up --real-node exited with {self.proc.returncode}:\n"
                                 f"{self._log()}")
        return READY_LINE in self._log()

    def kubectl(self, *args: str, input: str | None = None) -> str:
        kubectl = Assets.locate().binary("kubectl")
        done = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", "--", str(kubectl),
             f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def run_pod(self, image: str) -> None:
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo"},
            "spec": {"automountServiceAccountToken": False, "containers": [{
                "name": "echo", "image": image, "imagePullPolicy": "Never", "args": [":8080"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }], "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}]},
        }
        wait_until(lambda: "default" in self.kubectl("get", "sa", "-o", "name"),
                   what="the default ServiceAccount", timeout_s=30.0)
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))

        def running() -> bool:
            status = json.loads(self.kubectl("get", "pod", "echo", "-o", "json"))["status"]
            return bool(status.get("phase") == "Running")

        wait_until(running, what="the pod to run", timeout_s=90.0, interval_s=0.3)

    def cgroup_root(self) -> str:
        return f"elastiserve-{self.proc.pid}"


def _state(bed: Bed) -> list[str]:
    """What of the bed's node is still on the host."""
    left = realnode.find_leftovers(bed.run_dir, {}, bed.cgroup_root())
    if (netns.NETNS_DIR / bed.netns).exists():
        left.append(f"network namespace {bed.netns}")
    if (realnode.REGISTRY_DIR / f"realnode-{bed.proc.pid}.json").exists():
        left.append("registry entry")
    return left


@pytest.fixture
def echo_image(tmp_path: Path) -> str:
    binary = Assets.locate().binary(realnode.PAUSE)
    return write_pause_image(binary, tmp_path, repository=ECHO_REPOSITORY,
                             entrypoint=("/pause", "-http")).ref


@pytest.fixture
def sysctls_before() -> Iterator[dict[str, str]]:
    yield host_state.read_sysctls(KUBELET_SYSCTLS)


def test_clean_stop_leaves_nothing(
    tmp_path: Path, echo_image: str, sysctls_before: dict[str, str]
) -> None:
    bed = Bed(tmp_path / "cp", tmp_path)
    try:
        bed.run_pod(echo_image)
        assert host_state.mounts_under(bed.run_dir), "a running pod has mounts (sanity)"
    finally:
        bed.proc.send_signal(signal.SIGTERM)
        code = bed.proc.wait(timeout=120)
    assert code == 0, bed._log()
    assert _state(bed) == []
    assert host_state.read_sysctls(KUBELET_SYSCTLS) == sysctls_before


def test_a_crashed_run_is_swept(
    tmp_path: Path, echo_image: str, sysctls_before: dict[str, str]
) -> None:
    bed = Bed(tmp_path / "cp", tmp_path)
    try:
        bed.run_pod(echo_image)
    finally:
        bed.proc.send_signal(signal.SIGKILL)
        bed.proc.wait(timeout=30)
    # Components die with their parent (PDEATHSIG); shims, containers, mounts, cgroups and the
    # namespace do not: the crash really left state for the sweep to find.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and host_state.processes_mentioning(
            str(bed.run_dir / "etcd")):
        time.sleep(0.1)
    left = _state(bed)
    assert any(item.startswith("mount ") for item in left), left
    assert any(item.startswith("cgroup ") for item in left), left
    assert f"network namespace {bed.netns}" in left

    swept = realnode.sweep_stale()
    assert str(bed.run_dir.resolve() / "node") in swept
    assert bed.netns in netns.sweep_stale()
    assert _state(bed) == []
    assert host_state.read_sysctls(KUBELET_SYSCTLS) == sysctls_before
    assert not os.path.exists(f"/proc/{bed.proc.pid}")
