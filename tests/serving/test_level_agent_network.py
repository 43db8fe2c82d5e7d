"""The level agent survives the network: a cut watch, an API server restart, a revoked token.

Against the test bed's real API server, through a small TCP proxy in this file that can cut
every open stream (a watch cut mid-stream) or stop listening for a while (an API server
restarting: connections refused, then back). The agent connects as a pod's agent does: the
in-cluster connection with a token file and the CA, a per-model ServiceAccount whose Role
allows only its one ElasticModel. A revoked token (its bound Secret deleted, which the API
server honours at once, as it would an expired one) is replaced in the token file the way the
kubelet rotates a projected token; the agent must pick it up at its next reconnect.

Also: the reconnect policy, the 410 (resource version too old) relist, and the liveness probe
(``--check-alive``) against the agent process.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.testing.controlplane import ControlPlane
from elastiserve_operator.children import Owner, build_rbac, names_for
from elastiserve_serve.agent_heartbeat import Heartbeat, check_alive
from elastiserve_serve.backoff import Backoff
from elastiserve_serve.level_agent import LevelAgent
from elastiserve_serve.level_source_k8s import Connection, K8sLevelSource, main
from elastiserve_serve.runtime.control import read_control_file
from tests.operator.cluster_harness import GROUP, PLURAL, VERSION, install

RECOVERY_S = 10.0
""""Within seconds": a level decided while the network was down shows in the control file
at most this long after the network is back."""


# ------------------------------------------------------------------------------ no cluster


def test_backoff_grows_caps_jitters_and_resets() -> None:
    policy = Backoff(base_s=0.2, cap_s=5.0, jitter=lambda: 1.0 - 1e-9)
    delays = [policy.next_delay() for _ in range(10)]
    assert delays[0] == pytest.approx(0.2, rel=1e-6)
    assert delays == sorted(delays) and max(delays) == pytest.approx(5.0, rel=1e-6)
    low = Backoff(base_s=0.2, cap_s=5.0, jitter=lambda: 0.0)
    assert low.next_delay() == pytest.approx(0.1)  # half the nominal at the least
    for _ in range(1000):  # no overflow however long the outage
        low.next_delay()
    assert low.next_delay() == pytest.approx(2.5)
    low.reset()
    assert low.next_delay() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        Backoff(base_s=0.0)


def test_heartbeat_and_check_alive(tmp_path: Path) -> None:
    path = tmp_path / "shm" / "level-agent.alive"
    assert not check_alive(path, 10.0)[0]
    beat = Heartbeat(path)
    beat.beat(1000.0)
    assert check_alive(path, 10.0, now=1005.0) == (True, "last sync 5 s ago")
    ok, why = check_alive(path, 10.0, now=1011.0)
    assert not ok and "11 s ago" in why
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    assert not check_alive(path, 10.0)[0]


def test_the_probe_imports_no_kubernetes_client(tmp_path: Path) -> None:
    # The agent's container is limited to a few dozen MB; the probe runs inside it.
    control = tmp_path / "level.json"
    Heartbeat(control.with_name("level-agent.alive")).beat(time.time())
    code = ("import sys; from elastiserve_serve.level_source_k8s import main; "
            f"rc = main(['--check-alive', '--control-file', {str(control)!r}]); "
            "print(rc, sorted(m for m in ('kubernetes', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split("\n")[-2] == "0 []", out.stdout


def test_check_alive_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    control = tmp_path / "level.json"
    args = ["--check-alive", "--control-file", str(control), "--max-stale-s", "30"]
    assert main(args) == 1
    Heartbeat(control.with_name("level-agent.alive")).beat(time.time() - 60)
    assert main(args) == 1
    assert "more than 30 s" in capsys.readouterr().err
    Heartbeat(control.with_name("level-agent.alive")).beat(time.time())
    assert main(args) == 0
    assert main(["--control-file", str(control)]) == 2  # the agent itself needs its object


# ------------------------------------------------------------------------------ the proxy


class CuttingProxy:
    """``127.0.0.1:port`` -> the API server, byte for byte (TLS passes through untouched)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Break every open stream (both directions), as a dropped network path does."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def down(self) -> None:
        """Stop listening and cut: what clients see while an API server restarts."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


# ------------------------------------------------------------------------------ the cluster


@dataclass
class Bed:
    plane: ControlPlane
    crs: Any
    core: Any
    namespace: str
    account: str
    proxy: CuttingProxy
    token_file: Path
    ca_file: Path
    control: Path

    def status(self, level: int) -> None:
        self.crs.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, "mine", {"status": {"activeLevel": level}})

    def token(self, holder: str) -> str:
        """A token of the agent's account bound to a Secret: deleting it revokes the token."""
        from kubernetes import client as k8s

        secret = self.core.create_namespaced_secret(
            self.namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=holder)))
        request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600,
            bound_object_ref=k8s.V1BoundObjectReference(
                kind="Secret", api_version="v1", name=holder, uid=secret.metadata.uid)))
        answer = self.core.create_namespaced_service_account_token(
            self.account, self.namespace, request)
        return str(answer.status.token)

    def write_token(self, token: str) -> None:
        partial = self.token_file.with_name("token.new")
        partial.write_text(token)
        os.replace(partial, self.token_file)  # as the kubelet swaps a projected token

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.proxy.port}"

    def source(self, **kwargs: Any) -> K8sLevelSource:
        connection = Connection.in_cluster(self.token_file, self.ca_file, self.server)
        return K8sLevelSource(connection, self.namespace, "mine", watch_timeout_s=30,
                              backoff=Backoff(base_s=0.1, cap_s=2.0), **kwargs)

    def wait_level(self, level: int, timeout_s: float = RECOVERY_S,
                   why: Callable[[], str] = lambda: "") -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            state = read_control_file(self.control) if self.control.exists() else None
            if state is not None and state.level == level:
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"control file never showed {level} in {timeout_s} s; {why()}")


@pytest.fixture
def bed(control_plane: ControlPlane, kube_client: Any, kube_namespace: str,
        tmp_path: Path) -> Iterator[Bed]:
    from kubernetes import client as k8s

    install(control_plane)
    crs = k8s.CustomObjectsApi(kube_client)
    core = k8s.CoreV1Api(kube_client)
    ns = kube_namespace
    spec = {"model": {"levelCount": 3, "source": {"localPath": "/m.mar"}},
            "objective": {"p95Ms": 100}}
    crs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticModel",
        "metadata": {"name": "mine"}, "spec": spec})
    mine: Any = crs.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "mine")
    uid = mine["metadata"]["uid"]
    for obj in build_rbac(Owner("mine", ns, uid)):
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
    admin = yaml.safe_load(control_plane.kubeconfig_path.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca_file = tmp_path / "ca.crt"
    if "certificate-authority-data" in cluster:
        ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        ca_file.write_bytes(Path(cluster["certificate-authority"]).read_bytes())
    host, port = control_plane.api_url.removeprefix("https://").rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)))
    proxy.up()
    bed = Bed(control_plane, crs, core, ns, names_for("mine").account, proxy,
              tmp_path / "token", ca_file, tmp_path / "shm" / "level.json")
    time.sleep(1.0)  # the API server's RBAC cache catches up
    bed.write_token(bed.token("holder-a"))
    try:
        yield bed
    finally:
        proxy.down()


@contextlib.contextmanager
def running(bed: Bed, source: K8sLevelSource) -> Iterator[K8sLevelSource]:
    agent = LevelAgent(source.start(), bed.control)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        yield source
    finally:
        stop.set()
        source.stop()
        thread.join(5)


cluster = pytest.mark.controlplane


@cluster
def test_a_watch_cut_mid_stream_resumes_from_its_resource_version(bed: Bed) -> None:
    bed.status(2)
    with running(bed, bed.source()) as source:
        bed.wait_level(2, why=lambda: str(source.last_error))
        time.sleep(0.5)  # the watch is open
        for level in (0, 1, 2):
            bed.proxy.cut()
            bed.status(level)  # decided while the watch is down
            took = bed.wait_level(level, why=lambda: str(source.last_error))
            assert took < RECOVERY_S
        assert source.reconnects >= 3 or bed.proxy.accepted >= 4
        # Resumed from the last resource version each time: listed only at the start.
        assert source.relists == 1


@cluster
def test_an_api_server_restart_is_recovered_within_seconds(bed: Bed) -> None:
    bed.status(2)
    with running(bed, bed.source()) as source:
        bed.wait_level(2)
        bed.proxy.down()
        bed.status(0)  # decided while the API server is "restarting"
        time.sleep(4.0)
        state = read_control_file(bed.control)
        assert state is not None and state.level == 2  # the last level stays meanwhile
        assert source.last_error is not None
        bed.proxy.up()
        took = bed.wait_level(0, why=lambda: str(source.last_error))
        assert took < RECOVERY_S, took


@cluster
def test_a_revoked_token_is_replaced_from_the_token_file_at_reconnect(bed: Bed) -> None:
    from kubernetes import client as k8s

    def lists_with(token: str) -> int:
        config = k8s.Configuration(host=bed.server, ssl_ca_cert=str(bed.ca_file))
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
        try:
            k8s.CustomObjectsApi(k8s.ApiClient(config)).list_namespaced_custom_object(
                GROUP, VERSION, bed.namespace, PLURAL, field_selector="metadata.name=mine")
        except k8s.exceptions.ApiException as error:
            return int(error.status)
        return 200

    old = bed.token_file.read_text()
    assert lists_with(old) == 200
    bed.status(1)
    with running(bed, bed.source()) as source:
        bed.wait_level(1)
        bed.write_token(bed.token("holder-b"))  # the kubelet rotates the projected token
        bed.core.delete_namespaced_secret("holder-a", bed.namespace)  # the old one is dead
        deadline = time.monotonic() + 10
        while lists_with(old) != 401:  # the API server refuses it from now on
            assert time.monotonic() < deadline, "the old token was never refused"
            time.sleep(0.2)
        bed.proxy.cut()
        bed.status(0)
        took = bed.wait_level(0, why=lambda: str(source.last_error))
        assert took < RECOVERY_S


@cluster
def test_a_resource_version_too_old_is_listed_again(bed: Bed) -> None:
    bed.status(2)
    source = bed.source()
    source.resource_version = "1"  # long compacted out of the watch cache: 410 Gone
    with running(bed, source):
        bed.wait_level(2, why=lambda: str(source.last_error))
        assert source.relists >= 1


@cluster
def test_liveness_follows_the_agents_syncs(bed: Bed, tmp_path: Path) -> None:
    """The agent process as a pod runs it, and its probe: alive while it syncs, not alive
    once it has not synced for longer than allowed, alive again after."""
    bed.status(2)
    command = [sys.executable, "-m", "elastiserve_serve.level_source_k8s",
               "--namespace", bed.namespace, "--name", "mine",
               "--control-file", str(bed.control), "--token-file", str(bed.token_file),
               "--ca-file", str(bed.ca_file), "--server", bed.server,
               "--watch-timeout-s", "4"]
    probe = [*command, "--check-alive", "--max-stale-s", "7"]
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def alive() -> bool:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0

    def wait(want: bool, timeout_s: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if alive() is want:
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(f"probe never said {want}: {(tmp_path / 'agent.log').read_text()}")

    try:
        bed.wait_level(2, timeout_s=30)
        assert alive()
        time.sleep(6.0)  # longer than a watch window: an idle model still syncs
        assert alive()
        bed.proxy.down()
        wait(False, 20.0)
        assert agent.poll() is None  # the probe fails; the agent itself keeps going
        bed.proxy.up()
        wait(True, RECOVERY_S)
    finally:
        agent.terminate()
        agent.wait(10)
