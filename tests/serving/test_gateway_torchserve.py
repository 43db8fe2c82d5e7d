"""Two ``elastiserve serve --mar X --key-file K`` replicas on real TorchServe, one shared key.

What a Service in front of an ``ElasticModel``'s pods needs, checked on the real command the
pod runs (two subprocesses on free ports, as two replicas): one key from one file answers on
both, no key or a wrong one gets 401, the health routes answer without a key once a worker is
ready, a rotated key file (atomic rename, as a Secret update) switches keys without a restart,
and the command line's serving settings are what TorchServe and the handler run with, over the
archive's own. Readiness also waits for the level control file (a pod's level agent writes it
once it read the model's status): a replica started while the model is narrowed is not ready
until then, and its first answer comes from the narrowed level.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from elastiserve.testing.ports import free_port
from elastiserve.testing.processes import wait_until
from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.level_agent import set_level

from .bundles import make_bundle
from .tiny import png_bytes

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

MODEL = "elastic"
READY_TIMEOUT_S = 300.0


@dataclass
class Replica:
    """One ``elastiserve serve`` process standing in for a serving pod."""

    name: str
    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    unready_reason: str = ""
    first_level: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_file(self) -> Path:
        return self.folder / "shm" / "level.json"

    def log(self) -> str:
        path = self.folder / "serve.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "<no log>"

    def alive(self) -> None:
        assert self.process.poll() is None, f"{self.name} exited:\n{self.log()}"

    def predict(self, key: str | None, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.post(f"{self.url}/predictions/{MODEL}", content=png_bytes(),
                          headers={"Content-Type": "image/png", **auth, **headers}, timeout=60)

    def describe(self) -> dict[str, Any]:
        """The model as TorchServe's management API (loopback, no key behind the gateway)
        reports it; the address is in the config the serve command wrote."""
        config = (self.folder / "run" / "torchserve" / "config.properties").read_text()
        (address,) = [line.split("=", 1)[1] for line in config.splitlines()
                      if line.startswith("management_address=")]
        (described,) = httpx.get(f"{address}/models/{MODEL}", timeout=10).json()
        assert isinstance(described, dict)
        return described

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start(name: str, root: Path, mar: Path, key_file: Path, *flags: str) -> Replica:
    folder = root / name
    (folder / "shm").mkdir(parents=True)
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("elastiserve")), "serve",
        "--mar", str(mar), "--name", MODEL, "--run-dir", str(folder / "run"),
        "--port", str(port), "--control-file", str(folder / "shm" / "level.json"),
        "--key-file", str(key_file), *flags,
    ]
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return Replica(name, folder, port, process)


def ready(replica: Replica) -> bool:
    replica.alive()
    try:
        return httpx.get(f"{replica.url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def workers_ready(replica: Replica) -> bool:
    replica.alive()
    try:
        return any(w.get("status") == "READY" for w in replica.describe()["workers"])
    except (OSError, ValueError, httpx.HTTPError):
        return False


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "key"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    return path


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> Iterator[list[Replica]]:
    assert shutil.which("java") is not None, "TorchServe needs Java 17 on PATH"
    root = tmp_path_factory.mktemp("replicas")
    # The archive says otherwise on every setting the command line then sets.
    archived = ArchiveSpec(workers=2, batch_size=1, max_batch_delay_ms=50,
                           handler={"control_file": str(root / "unused" / "level.json"),
                                    "allow_pin": False, "threads": 1})
    mar = build_archive(make_bundle(root / "bundle"), root / "mar", "archived", archived)
    serving = ("--workers", "1", "--batch-size", "3", "--max-batch-delay-ms", "7")
    started = [start("a", root, mar, key_file, *serving, "--allow-pin"),
               start("b", root, mar, key_file, *serving, "--no-allow-pin")]
    key = key_file.read_text().strip()
    try:
        for replica in started:
            wait_until(lambda r=replica: workers_ready(r),  # type: ignore[misc]
                       what=f"replica {replica.name}'s worker", timeout_s=READY_TIMEOUT_S,
                       interval_s=0.5, detail=replica.log)
            # TorchServe is up, but the model is narrowed and no agent has said so yet.
            unready = httpx.get(f"{replica.url}/v2/health/ready", timeout=10)
            assert unready.status_code == 503, unready.text
            replica.unready_reason = unready.json()["reason"]
            set_level(replica.control_file, 1)  # what the level agent writes: L1
            wait_until(lambda r=replica: ready(r), what=f"replica {replica.name} ready",  # type: ignore[misc]
                       timeout_s=30, interval_s=0.2, detail=replica.log)
            replica.first_level = replica.predict(key).json()["level"]
        yield started
    finally:
        for replica in started:
            replica.stop()


def test_a_replica_started_while_narrowed_is_ready_only_at_that_level(
    replicas: list[Replica],
) -> None:
    for replica in replicas:
        assert "control file" in replica.unready_reason and "does not exist" in \
            replica.unready_reason, replica.unready_reason
        assert replica.first_level == "L1"


def test_one_key_answers_on_every_replica(replicas: list[Replica], key_file: Path) -> None:
    key = key_file.read_text().strip()
    for replica in replicas:
        answer = replica.predict(key)
        assert answer.status_code == 200, (replica.name, answer.text)
        assert answer.json()["level"] == answer.headers["x-elastiserve-level"]


def test_no_key_or_a_wrong_one_is_401(replicas: list[Replica], key_file: Path) -> None:
    key = key_file.read_text().strip()
    for replica in replicas:
        for wrong in (None, key[:-1], key + "x", "Bearer"):
            answer = replica.predict(wrong)
            assert answer.status_code == 401, (replica.name, wrong, answer.text)
            assert answer.json()["code"] == 401


def test_health_answers_without_a_key(replicas: list[Replica]) -> None:
    for replica in replicas:
        ready_answer = httpx.get(f"{replica.url}/v2/health/ready", timeout=10)
        assert ready_answer.status_code == 200 and ready_answer.json() == {"ready": True}
        ping = httpx.get(f"{replica.url}/ping", timeout=10)
        assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}
        assert httpx.get(f"{replica.url}/v2/health/live", timeout=10).status_code == 200


def test_torchserve_runs_the_command_lines_batching_not_the_archives(
    replicas: list[Replica],
) -> None:
    for replica in replicas:
        described = replica.describe()
        assert (described["minWorkers"], described["maxWorkers"]) == (1, 1), described
        assert described["batchSize"] == 3 and described["maxBatchDelay"] == 7, described
        assert len(described["workers"]) == 1


def test_pinning_and_the_control_file_come_from_the_command_line(
    replicas: list[Replica], key_file: Path,
) -> None:
    key = key_file.read_text().strip()
    a, b = replicas
    pinned = a.predict(key, **{"X-Elastiserve-Level": "L0"})
    assert pinned.status_code == 200 and pinned.json()["level"] == "L0"
    assert b.predict(key, **{"X-Elastiserve-Level": "L0"}).status_code == 403
    # The archive names another control file; the handler follows the command line's.
    set_level(a.control_file, "L1")
    wait_until(lambda: a.predict(key).json().get("level") == "L1", what="level L1 on a",
               timeout_s=30, detail=a.log)


def test_a_rotated_key_file_takes_over_without_a_restart(
    replicas: list[Replica], key_file: Path,
) -> None:
    old = key_file.read_text().strip()
    pids = [r.process.pid for r in replicas]
    new = secrets.token_urlsafe(32)
    partial = key_file.with_name("key.new")
    partial.write_text(new + "\n")
    os.replace(partial, key_file)
    for replica in replicas:
        assert replica.predict(old).status_code == 401, replica.name
        answer = replica.predict(new)
        assert answer.status_code == 200, (replica.name, answer.text)
        replica.alive()
    assert [r.process.pid for r in replicas] == pids
