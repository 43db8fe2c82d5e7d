"""Start and stop a local TorchServe with the configuration from :mod:`.ts_config`.

Used by ``elastiserve serve``, the integration tests and the benchmark. Each server gets its own
run directory holding the config, the token key file, the logs and its temporary directory:
TorchServe's launcher keeps a pid file and its workers' sockets in the temporary directory, so
two servers sharing ``/tmp`` would refuse to start or collide on sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .ts_config import ServeConfig, config_properties
from .ts_metrics import metrics_config


class TorchServeError(RuntimeError):
    """TorchServe did not start, or did not become ready in time."""


@dataclass(frozen=True)
class Keys:
    """The bearer tokens TorchServe generated at startup (``key_file.json``)."""

    inference: str
    management: str


@dataclass
class TorchServe:
    """A running server; use :func:`run_torchserve`."""

    process: subprocess.Popen[bytes]
    run_dir: Path
    config: ServeConfig
    keys: Keys = field(default=Keys("", ""))

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.config.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.config.management_port}"

    @property
    def metrics_address(self) -> str:
        return f"127.0.0.1:{self.config.metrics_port}"

    def log_tail(self, lines: int = 40) -> str:
        path = self.run_dir / "logs" / "ts_log.log"
        out = self.run_dir / "torchserve.out"
        for candidate in (path, out):
            if candidate.exists():
                text = candidate.read_text(errors="replace").splitlines()
                return "\n".join(text[-lines:])
        return "<no log>"

    def describe_model(self, name: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            f"{self.management_url}/models/{name}",
            headers={"Authorization": f"Bearer {self.keys.management}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body: list[dict[str, Any]] = json.load(response)
            return body

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group (launcher, JVM, workers), SIGKILL on timeout."""
        if self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):  # workers whose JVM died first
            os.killpg(pgid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launcher() -> str:
    """The ``torchserve`` launcher installed next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("torchserve")
    if beside.exists():
        return str(beside)
    found = shutil.which("torchserve")
    if found is None:
        raise TorchServeError("the torchserve launcher is not installed (extra 'serve')")
    return found


def worker_environment(base: dict[str, str], run_dir: Path) -> dict[str, str]:
    """The server's environment: ours, with TorchServe's temp, log and metric dirs moved."""
    env = dict(base)
    tmp = run_dir / "tmp"
    env.update(
        TMPDIR=str(tmp),
        TEMP=str(tmp),  # TorchServe's launcher passes this to the JVM's java.io.tmpdir
        LOG_LOCATION=str(run_dir / "logs"),
        METRICS_LOCATION=str(run_dir / "logs"),
    )
    for key in [k for k in env if k.startswith("TS_")]:
        del env[key]  # enable_envvars_config is off anyway; do not let stray ones confuse
    return env


def read_keys(run_dir: Path) -> Keys | None:
    """Parse ``key_file.json`` once TorchServe has written it."""
    try:
        body = json.loads((run_dir / "key_file.json").read_text())
        return Keys(body["inference"]["key"], body["management"]["key"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


@contextmanager
def run_torchserve(
    run_dir: Path,
    model_store: Path,
    models: Sequence[str],
    *,
    ready_timeout_s: float = 180.0,
    bind_host: str = "127.0.0.1",
    metrics_host: str = "127.0.0.1",
    inference_port: int = 0,
    metrics_port: int = 0,
    management_port: int = 0,
    min_ready_workers: int = 1,
    extra_env: dict[str, str] | None = None,
    token_authorization: bool = True,
) -> Iterator[TorchServe]:
    """Start TorchServe serving ``models`` ("name=file.mar"); stop it when the block ends.

    Ports 0 mean a free port (tests, several servers on one machine); a pod passes the fixed
    ports its container spec declares, since probes and Prometheus find them there. A gateway
    that must know where TorchServe listens before it is ready picks the inference and
    management ports itself.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tmp").mkdir(exist_ok=True)
    (run_dir / "key_file.json").unlink(missing_ok=True)
    metrics_path = run_dir / "metrics.yaml"
    metrics_path.write_text(yaml.safe_dump(metrics_config(), sort_keys=False))
    cfg = ServeConfig(
        model_store=model_store,
        models=tuple(models),
        metrics_config=metrics_path,
        inference_port=inference_port or free_port(),
        management_port=management_port or free_port(),
        metrics_port=metrics_port or free_port(),
        grpc_inference_port=free_port(),
        grpc_management_port=free_port(),
        bind_host=bind_host,
        metrics_host=metrics_host,
        token_authorization=token_authorization,
    )
    config_path = run_dir / "config.properties"
    config_path.write_text(config_properties(cfg))
    env = worker_environment({**os.environ, **(extra_env or {})}, run_dir)
    out = (run_dir / "torchserve.out").open("wb")
    process = subprocess.Popen(
        [launcher(), "--start", "--foreground", "--ncs", "--ts-config", str(config_path)],
        cwd=run_dir,  # key_file.json is written to the JVM's working directory
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = TorchServe(process, run_dir, cfg)
    try:
        _wait_ready(server, [m.split("=", 1)[0] for m in models], min_ready_workers,
                    ready_timeout_s)
        yield server
    finally:
        server.stop()
        out.close()


def _wait_ready(server: TorchServe, names: Sequence[str], workers: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise TorchServeError(
                f"torchserve exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        keys = read_keys(server.run_dir) if server.config.token_authorization else Keys("", "")
        if keys is not None:
            server.keys = keys
            try:
                if all(_ready_workers(server, name) >= workers for name in names):
                    return
                last = "workers not ready"
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as err:
                last = str(err)
        time.sleep(0.5)
    raise TorchServeError(f"torchserve not ready in {timeout_s:.0f}s ({last}):\n"
                          f"{server.log_tail()}")


def _ready_workers(server: TorchServe, name: str) -> int:
    described = server.describe_model(name)
    return sum(1 for w in described[0].get("workers", []) if w.get("status") == "READY")
