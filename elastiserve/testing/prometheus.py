"""A real Prometheus server on loopback for tests, benchmarks and the local demo.

The latency objective is judged on what Prometheus answers, so tests must exercise the real server
(Debian's ``prometheus`` package) rather than a stub: scrape timing, staleness and PromQL
semantics are exactly the things a stub gets wrong.  This module writes a scrape configuration for
loopback targets, starts the server on a free port with its own TSDB directory, waits until it is
ready and answers instant queries over the HTTP API.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from elastiserve.testing.ports import ensure_free, free_port

PROMETHEUS_ENV = "ELASTISERVE_PROMETHEUS"
"""Path of the prometheus binary when it is not on PATH as ``prometheus``."""


class PrometheusError(RuntimeError):
    """Prometheus could not be started or did not answer as expected."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One loopback endpoint to scrape, under a job name the queries can select on."""

    job: str
    address: str  # host:port
    metrics_path: str = "/metrics"
    scheme: str = "http"
    bearer_token: str | None = None
    # Target labels, as Kubernetes service discovery would attach them (namespace, pod): the
    # operator's queries select on ``namespace``, which nothing adds on loopback otherwise.
    labels: tuple[tuple[str, str], ...] = ()


def find_binary() -> Path:
    """Locate the prometheus binary, preferring the explicit environment variable."""
    explicit = os.environ.get(PROMETHEUS_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PrometheusError(f"{PROMETHEUS_ENV}={explicit} is not an executable file")
        return path
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusError(
            "prometheus binary not found on PATH; install Debian's 'prometheus' package "
            f"(make test does) or set {PROMETHEUS_ENV}"
        )
    return Path(found)


def file_sd_job(targets_file: Path, job: str = "kubernetes-pods") -> dict[str, object]:
    """A scrape job whose targets come from a file that :mod:`.pod_discovery` keeps current.

    Debian's Prometheus is built without Kubernetes service discovery (``kubernetes_sd_configs``
    is refused as an unknown field), so the test bed finds the pods through the API itself and
    hands them over through Prometheus's file discovery, with the labels Kubernetes discovery
    plus the usual relabelling would give (``namespace``, ``pod``, ``node``).
    """
    return {
        "job_name": job,
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
    }


def scrape_config(
    targets: Sequence[ScrapeTarget],
    interval_s: float,
    extra_jobs: Sequence[dict[str, object]] = (),
) -> dict[str, object]:
    """Build the configuration document; one job per distinct job name, then ``extra_jobs``
    (whole scrape configs, e.g. :func:`kubernetes_pods_job`)."""
    jobs: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    scrape_configs: list[dict[str, object]] = []
    for job, members in jobs.items():
        first = members[0]
        entry: dict[str, object] = {
            "job_name": job,
            "metrics_path": first.metrics_path,
            "scheme": first.scheme,
            "static_configs": _static_configs(members),
        }
        if first.bearer_token:
            entry["authorization"] = {"type": "Bearer", "credentials": first.bearer_token}
        scrape_configs.append(entry)
    scrape_configs.extend(extra_jobs)
    interval = f"{max(1, round(interval_s * 1000))}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": scrape_configs,
    }


def _static_configs(members: Sequence[ScrapeTarget]) -> list[dict[str, object]]:
    """Targets grouped by their label set (Prometheus attaches labels per static config)."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for member in members:
        groups.setdefault(member.labels, []).append(member.address)
    configs: list[dict[str, object]] = []
    for labels, addresses in groups.items():
        config: dict[str, object] = {"targets": addresses}
        if labels:
            config["labels"] = dict(labels)
        configs.append(config)
    return configs


@dataclass(frozen=True)
class Sample:
    """One series' value from an instant query."""

    labels: dict[str, str]
    timestamp: float
    value: float


class PrometheusServer:
    """A running Prometheus process; use :func:`run_prometheus` to get one."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, run_dir: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.process = process
        self.port = port
        self.run_dir = run_dir
        self.host = host

    @property
    def url(self) -> str:
        """Where clients in this process reach it (loopback also when it listens wider)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def listen_url(self) -> str:
        """Where others reach it: the address it listens on (a pod needs the node's)."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "prometheus.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def query(self, promql: str, timeout_s: float = 5.0) -> list[Sample]:
        """Run an instant query and return every series in the vector result."""
        params = urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(
                f"{self.url}/api/v1/query?{params}", timeout=timeout_s
            ) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise PrometheusError(f"query {promql!r} failed: HTTP {err.code}: {detail}") from err
        if body.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            ts, value = data["result"]
            return [Sample({}, float(ts), float(value))]
        return [
            Sample(dict(item["metric"]), float(item["value"][0]), float(item["value"][1]))
            for item in data["result"]
        ]

    def wait_for_value(
        self, promql: str, timeout_s: float = 30.0, poll_s: float = 0.25
    ) -> list[Sample]:
        """Poll until the query returns at least one finite sample; error on the deadline."""
        deadline = time.monotonic() + timeout_s
        last: list[Sample] = []
        while time.monotonic() < deadline:
            self._check_alive()
            last = self.query(promql)
            if any(math.isfinite(s.value) for s in last):
                return last
            time.sleep(poll_s)
        raise PrometheusError(f"no finite value for {promql!r} within {timeout_s:.0f}s: {last}")

    def targets_health(self) -> dict[str, str]:
        """Map each scraped address to its health ('up', 'down', 'unknown')."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
            body = json.load(response)
        return {t["labels"]["instance"]: t["health"] for t in body["data"]["activeTargets"]}

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise PrometheusError(
                f"prometheus exited with code {code}; log tail:\n{self.log_tail()}"
            )

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it ignores the deadline."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=grace_s)


def _wait_ready(server: PrometheusServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server._check_alive()
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise PrometheusError(
        f"prometheus on port {server.port} not ready within {timeout_s:.0f}s; "
        f"log tail:\n{server.log_tail()}"
    )


@contextmanager
def run_prometheus(
    run_dir: Path,
    targets: Sequence[ScrapeTarget],
    *,
    scrape_interval_s: float = 1.0,
    port: int | None = None,
    ready_timeout_s: float = 30.0,
    extra_jobs: Sequence[dict[str, object]] = (),
    listen_host: str = "127.0.0.1",
) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping ``targets`` and stop it when the block ends, whatever happens.

    ``listen_host`` other than loopback is for the real node's test network only, where the
    operator's pod queries it at the node's address (``0.0.0.0`` there reaches nothing else).

    ``run_dir`` receives the configuration, the TSDB and the log; it must not hold a TSDB from
    another, still running server (Prometheus would refuse its lock file).
    """
    binary = find_binary()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / "data" / "lock"
    if lock.exists():
        # A crashed earlier run leaves its lock behind; a live one would still hold the port
        # recorded in the pid file, which we check before discarding anything.
        _refuse_if_live(run_dir)
        shutil.rmtree(run_dir / "data")
    chosen = port or free_port()
    ensure_free(chosen, "prometheus")
    config_path = run_dir / "prometheus.yml"
    config_path.write_text(
        yaml.safe_dump(scrape_config(targets, scrape_interval_s, extra_jobs))
    )
    log = (run_dir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={run_dir / 'data'}",
            f"--web.listen-address={listen_host}:{chosen}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (run_dir / "prometheus.pid").write_text(str(process.pid))
    server = PrometheusServer(process, chosen, run_dir, listen_host)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        server.stop()
        log.close()
        (run_dir / "prometheus.pid").unlink(missing_ok=True)


def _refuse_if_live(run_dir: Path) -> None:
    pid_file = run_dir / "prometheus.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return
    except PermissionError:
        pass
    raise PrometheusError(
        f"{run_dir} belongs to a prometheus that is still running (pid {pid}); stop it first"
    )
