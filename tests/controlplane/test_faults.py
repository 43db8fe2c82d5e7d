"""Faults at start-up are reported clearly and within seconds, and leave nothing running.

These use fake binaries (shell scripts) so they run without the real assets being built.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from elastiserve.testing.assets import ASSETS_ENV, Assets
from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.errors import (
    AssetMissingError,
    PortInUseError,
    ProcessExitedError,
    ReadinessTimeoutError,
    StaleRunDirError,
)
from elastiserve.testing.rundir import STATE_FILE, STOPPED_MARKER
from tests.controlplane.fakes import fake_assets, processes_under

# Each fault is reported in well under a second here; the bound leaves room for a loaded
# two-core CI machine while staying far below the 120 s start deadline a hang would hit.
FAST_S = 8.0

# A stand-in etcd that answers /health on its client port and nothing else.
HEALTHY_ETCD = """exec python3 -c '
import http.server, sys
url = next(a for a in sys.argv[1:] if a.startswith("--listen-client-urls="))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")
http.server.HTTPServer(("127.0.0.1", int(url.rsplit(":", 1)[1])), Health).serve_forever()
' "$@"
"""


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


class TestMissingBinary:
    def test_empty_assets_dir_names_the_binary_and_the_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        empty = tmp_path / "assets"
        empty.mkdir()
        monkeypatch.setenv(ASSETS_ENV, str(empty))
        clock = Clock()
        with pytest.raises(AssetMissingError) as caught:
            ControlPlane.start(tmp_path / "run")
        assert clock.elapsed < FAST_S
        message = str(caught.value)
        assert "'etcd' is missing" in message
        assert f"{ASSETS_ENV}={empty}" in message
        assert "hack/build-k8s-assets.sh" in message
        assert not (tmp_path / "run").exists(), "nothing may be created before binaries exist"

    def test_one_missing_binary_is_named(self, tmp_path: Path) -> None:
        assets = fake_assets(tmp_path / "assets")
        (assets.directory / "kwok").unlink()
        with pytest.raises(AssetMissingError, match="'kwok' is missing"):
            ControlPlane.start(tmp_path / "run", assets=assets)

    def test_not_executable_is_said_so(self, tmp_path: Path) -> None:
        assets = fake_assets(tmp_path / "assets")
        (assets.directory / "kube-scheduler").chmod(0o644)
        with pytest.raises(AssetMissingError, match="'kube-scheduler' is not executable"):
            ControlPlane.start(tmp_path / "run", assets=assets)


class TestPortInUse:
    @pytest.mark.parametrize(
        ("argument", "purpose"),
        [("api_port", "kube-apiserver secure port"), ("etcd_port", "etcd client port")],
    )
    def test_taken_port_is_named(self, tmp_path: Path, argument: str, purpose: str) -> None:
        assets = fake_assets(tmp_path / "assets")
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            clock = Clock()
            with pytest.raises(PortInUseError) as caught:
                ControlPlane.start(tmp_path / "run", assets=assets, **{argument: port})
        assert clock.elapsed < FAST_S
        assert f"port {port} on 127.0.0.1 ({purpose}) is already in use" in str(caught.value)
        assert processes_under(tmp_path) == []


class TestBinaryExitsAtStart:
    def test_exit_code_and_log_tail_are_reported(self, tmp_path: Path) -> None:
        assets = fake_assets(
            tmp_path / "assets", etcd='echo "fake etcd: member dir is corrupt" >&2; exit 3'
        )
        clock = Clock()
        with pytest.raises(ProcessExitedError) as caught:
            ControlPlane.start(tmp_path / "run", assets=assets)
        assert clock.elapsed < FAST_S
        assert caught.value.name == "etcd"
        assert caught.value.returncode == 3
        message = str(caught.value)
        assert "etcd exited with code 3 during start" in message
        assert "fake etcd: member dir is corrupt" in message
        assert str(tmp_path / "run" / "logs" / "etcd.log") in message
        # A failed start is a clean stop: the run directory can be reused at once.
        assert not (tmp_path / "run" / STATE_FILE).exists()

    def test_later_component_failure_stops_the_earlier_ones(self, tmp_path: Path) -> None:
        # etcd "works" (answers /health) but the API server dies: etcd must be stopped too.
        assets = fake_assets(
            tmp_path / "assets", etcd=HEALTHY_ETCD, kube_apiserver="echo 'bad flag' >&2; exit 7"
        )
        with pytest.raises(ProcessExitedError, match="kube-apiserver exited with code 7"):
            ControlPlane.start(tmp_path / "run", assets=assets, timeout_s=20)
        # The fake etcd is a python process; its argv names the run directory.
        assert processes_under(tmp_path) == []


class TestHang:
    def test_readiness_deadline_is_enforced(self, tmp_path: Path) -> None:
        assets = fake_assets(tmp_path / "assets")  # etcd sleeps and never answers
        clock = Clock()
        with pytest.raises(ReadinessTimeoutError) as caught:
            ControlPlane.start(tmp_path / "run", assets=assets, timeout_s=1.5)
        assert clock.elapsed < FAST_S
        assert "waiting for etcd to report healthy" in str(caught.value)
        assert processes_under(tmp_path) == []


class TestStaleRunDir:
    @staticmethod
    def _leave_state(run_dir: Path, pid: int, create_time: float) -> None:
        run_dir.mkdir(parents=True)
        (run_dir / "etcd").mkdir()
        state = {"processes": [{"name": "etcd", "pid": pid, "create_time": create_time}]}
        (run_dir / STATE_FILE).write_text(json.dumps(state))

    @staticmethod
    def _dead_process() -> tuple[int, float]:
        proc = subprocess.Popen(["sleep", "0.01"])
        created = psutil.Process(proc.pid).create_time()
        proc.wait()
        return proc.pid, created

    def test_crashed_run_is_refused_with_instructions(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        self._leave_state(run_dir, *self._dead_process())
        clock = Clock()
        with pytest.raises(StaleRunDirError) as caught:
            ControlPlane.start(run_dir, assets=fake_assets(tmp_path / "assets"))
        assert clock.elapsed < FAST_S
        message = str(caught.value)
        assert "did not shut down cleanly" in message
        assert f"rm -rf {run_dir}" in message
        assert "clean_stale=True" in message
        assert (run_dir / "etcd").exists(), "refusing must not delete anything"

    def test_live_owner_is_refused_and_named(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        me = psutil.Process(os.getpid())
        self._leave_state(run_dir, me.pid, me.create_time())
        expected = f"in use by live processes \\(etcd pid {me.pid}\\)"
        with pytest.raises(StaleRunDirError, match=expected):
            ControlPlane.start(run_dir, assets=fake_assets(tmp_path / "assets"))

    def test_clean_stale_wipes_and_proceeds(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        self._leave_state(run_dir, *self._dead_process())
        (run_dir / "etcd" / "old-member").write_text("stale")
        assets = fake_assets(tmp_path / "assets", etcd="exit 3")
        # Getting as far as starting (the fake) etcd proves the stale state was cleared.
        with pytest.raises(ProcessExitedError, match="etcd exited with code 3"):
            ControlPlane.start(run_dir, assets=assets, clean_stale=True)
        assert not (run_dir / "etcd" / "old-member").exists()


def test_fake_assets_are_what_the_harness_resolves(tmp_path: Path) -> None:
    assets = fake_assets(tmp_path / "assets")
    assert Assets(assets.directory, from_env=True).binary("etcd") == assets.directory / "etcd"


class TestRunDirReuse:
    def test_foreign_non_empty_directory_is_refused_untouched(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "logs" / "mine.txt").write_text("keep me")
        with pytest.raises(StaleRunDirError, match="not made by the control-plane harness"):
            ControlPlane.start(run_dir, assets=fake_assets(tmp_path / "assets"))
        assert (run_dir / "logs" / "mine.txt").read_text() == "keep me"

    def test_cleanly_stopped_directory_is_reused(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        assets = fake_assets(tmp_path / "assets", etcd="echo attempt; exit 3")
        for _ in range(2):
            # A failed start is still a clean stop, so the second start is allowed.
            with pytest.raises(ProcessExitedError):
                ControlPlane.start(run_dir, assets=assets)
            assert (run_dir / STOPPED_MARKER).exists()
        log = (run_dir / "logs" / "etcd.log").read_text()
        assert log.count("attempt") == 1, "logs of the previous run are cleared"
