"""Teardown stops every process the harness started, even when the test body fails.

The leftover check is exercised both ways: against a real control plane (must find nothing)
and against a process that is deliberately left alive (must find it), so a check that could
never fail would be caught.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from elastiserve.testing.controlplane import ControlPlane, assert_no_leftovers, find_leftovers
from elastiserve.testing.errors import LeftoverProcessError
from elastiserve.testing.ports import ensure_free
from elastiserve.testing.processes import ManagedProcess
from elastiserve.testing.rundir import STATE_FILE


class Boom(Exception):
    pass


@pytest.mark.controlplane
def test_real_control_plane_leaves_nothing_when_the_body_raises(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(Boom), ControlPlane.start(tmp_path / "cp", workloads=False, nodes=()) as cp:
        pids = cp.pids()
        assert len(pids) == 2
        assert find_leftovers(pids), "while running, its processes must be found"
        api_port = cp.layout.ports.apiserver
        cp.kubectl("get", "namespaces")
        raise Boom
    assert_no_leftovers(pids)
    ensure_free(api_port, "kube-apiserver secure port")
    assert not (tmp_path / "cp" / STATE_FILE).exists()


def test_leftover_check_finds_a_live_process(tmp_path: Path) -> None:
    proc = ManagedProcess.spawn("sleeper", ["sleep", "30"], tmp_path / "sleeper.log")
    try:
        with pytest.raises(LeftoverProcessError, match=f"pid {proc.pid}"):
            assert_no_leftovers([proc.pid])
    finally:
        proc.stop(grace_s=1)
    assert_no_leftovers([proc.pid])


def test_sigterm_ignoring_group_is_killed_with_its_children(tmp_path: Path) -> None:
    """A component that ignores SIGTERM, and a grandchild it forked, are both SIGKILLed."""
    script = "trap '' TERM; sleep 300 & wait"
    proc = ManagedProcess.spawn("stubborn", ["sh", "-c", script], tmp_path / "stubborn.log")
    deadline = time.monotonic() + 5
    grandchildren: list[psutil.Process] = []
    while not grandchildren and time.monotonic() < deadline:
        time.sleep(0.05)
        grandchildren = psutil.Process(proc.pid).children()
    assert grandchildren, "the script should have forked sleep"

    started = time.monotonic()
    proc.stop(grace_s=1.0)
    assert 0.9 < time.monotonic() - started < 5, "SIGKILL must follow the grace period"
    assert proc.returncode() == -signal.SIGKILL
    assert_no_leftovers([proc.pid])
    assert not any(child.is_running() and child.status() != "zombie" for child in grandchildren)


def test_parent_death_signal_kills_orphans(tmp_path: Path) -> None:
    """If the harness itself is SIGKILLed, its components die with it (PR_SET_PDEATHSIG)."""
    code = (
        "import sys, time, pathlib;"
        "from elastiserve.testing.processes import ManagedProcess;"
        "p = ManagedProcess.spawn('orphan', ['sleep', '300'], pathlib.Path(sys.argv[1]));"
        "print(p.pid, flush=True); time.sleep(300)"
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "orphan.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert harness.stdout is not None
    child_pid = int(harness.stdout.readline())
    assert psutil.pid_exists(child_pid)
    harness.kill()
    harness.wait()
    deadline = time.monotonic() + 5
    while find_leftovers([child_pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_no_leftovers([child_pid])
