"""Fake asset directories for the fault tests.

Each fake binary is a shell script, so a test can make "etcd" exit at once, hang, or ignore
SIGTERM, and the harness's reactions are checked in a second instead of a real cluster start.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from elastiserve.testing.assets import Assets
from elastiserve.testing.components import APISERVER, CONTROLLER_MANAGER, ETCD, KWOK, SCHEDULER

CONTROL_PLANE_BINARIES = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KWOK)


def fake_assets(directory: Path, **bodies: str) -> Assets:
    """Executable scripts for every binary; ``bodies`` overrides one by name (``_`` for ``-``).

    By default a fake binary just sleeps, like a server that never becomes ready.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in CONTROL_PLANE_BINARIES:
        body = bodies.get(name.replace("-", "_"), "exec sleep 300")
        script = directory / name
        script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        script.chmod(0o755)
    return Assets(directory, from_env=True)


def processes_under(directory: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions ``directory``.

    Pass the test's ``tmp_path``: a fake binary's path, or the run directory in its arguments,
    is under it.
    """
    marker = str(directory)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found
