"""The whole loop on the local control plane: load rises, the operator narrows, then widens.

Real components: kube-apiserver/etcd/controller-manager/scheduler with kwok nodes (the session's
``control_plane``), the operator as a subprocess (``python -m elastiserve_operator``) holding a
TokenRequest token of its least-privilege ServiceAccount (``rbac/operator-clusterrole.yaml``,
exactly as ``tests/operator``), a real Prometheus, real TorchServe processes serving a real
nested bundle, and the real level agent.

How the stand-ins are wired (kwok pods run no containers, so the pods are played locally):

1. The test applies an ``ElasticModel``; the operator creates its children as in a cluster:
   Deployment, Service, ConfigMap, and the per-model ServiceAccount + one-object Role.
2. The test reads the **Deployment the operator wrote** and runs each of its ``REPLICAS``
   "pods" as two local processes built from that pod spec's own argument lists:

   * container ``torchserve``: ``elastiserve serve`` with the container's args, where only
     paths and addresses are replaced: ``--mar`` (a ``.mar`` of the test bundle, archived with
     this replica's control file, since the handler reads the path from the archive),
     ``--run-dir``, ``--bind``/``--metrics-bind`` (loopback, not the pod's 0.0.0.0) and
     ``--port``/``--metrics-port`` (free ports, several replicas share one host);
   * container ``level-agent``: ``python -m elastiserve_serve.level_source_k8s`` with the
     container's args, where ``--control-file`` is this replica's file (the pod's shared
     ``emptyDir``), and ``--token-file``/``--ca-file`` hold what the pod's projected volume
     holds: a token of the per-model ServiceAccount minted through TokenRequest (1 h, the
     API server's default audience) and the cluster CA; ``--server`` replaces the in-cluster
     ``KUBERNETES_SERVICE_HOST``.

3. Prometheus scrapes each replica's TorchServe metrics endpoint with the target labels that
   Kubernetes service discovery would attach (``namespace``, ``pod``), so the operator's PromQL
   runs unchanged. The CR's ``latencyQuery`` is the end-to-end estimate
   (:func:`~elastiserve_operator.signals.prometheus.end_to_end_latency_query`: handler p95 +
   mean frontend queue wait) over a 5 s window.
4. A closed-loop burst per level (pinned by index in the request header) measures what each
   level sustains; the objective and the CR's ``spec.model.profile`` (for the Predictive
   policy) are patched from those numbers. Before that patch (the objective is still far out
   of reach, so the operator does not move), an open-loop probe pinned to the full level at
   the planned plateau shows the plateau breaks the objective there, raising the plateau
   until it does (:func:`overload_plateau`): the proof that narrowing was needed, taken
   without the operator in the way, since the Predictive policy may narrow on the rising
   rate before the client ever sees a breach. Then an open-loop client (round-robin over the
   replicas, as a Service would) runs a ramp: low load, a climb to that plateau (probing
   starts at ``HIGH`` x the full level's measured capacity; every try is capped at
   ``NARROW_SHARE`` of the narrowest level's, see :func:`plateau`), the plateau, a fall, low
   load again. The bundle's levels are named as training names them (``L<k>-<pct>pct``)
   while the CR speaks indexes: the answers' level header shows the index was resolved.

Recorded every second, printed and written to ``timeline.json`` in the test's tmp dir: offset,
offered rps, the p95 the operator last acted on (``status.p95Ms``), the same query asked of
Prometheus, the client's p95 over the same trailing window, the CR's level and the level that
answered.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.ports import free_port
from elastiserve.testing.prometheus import PrometheusServer, ScrapeTarget, run_prometheus
from elastiserve_operator.children import names_for
from elastiserve_operator.signals.prometheus import end_to_end_latency_query, render_query
from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.loadgen import (
    Result,
    Target,
    percentile,
    piecewise_arrivals,
    planned_rate,
    run_schedule,
)
from tests.operator.cluster_harness import (
    GROUP,
    OPERATOR_NS,
    OPERATOR_SA,
    PLURAL,
    VERSION,
    OperatorProcess,
    install,
    token_kubeconfig,
    wait_for,
)
from tests.serving.bundles import make_bundle

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.prometheus,
    pytest.mark.torchserve,
    pytest.mark.slow,
]

NAME = "elastic"  # the CR, and so the TorchServe model name the PromQL selects on
LEVEL_NAMES = ("L0-25pct", "L1-50pct", "L2-100pct")  # as `elastiserve train` names them
FULL = len(LEVEL_NAMES) - 1
REPLICAS = 1
WINDOW_S = 5  # PromQL rate window; the client's p95 uses the same trailing window
LOW, HIGH = 0.35, 1.7  # load as a fraction of the full level's measured capacity
NARROW_SHARE = 0.7  # the plateau never asks more than this share of the narrowest level
MIN_HIGH = 1.1  # below this the plateau would not overload the full level clearly
HIGH_SPAN = (28.0, 68.0)  # offsets of the plateau
PROBE_S, PROBE_STEP = 6.0, 1.2  # overload probe: seconds per try, plateau raise per try


def plan(high: float) -> tuple[tuple[float, float, float], ...]:
    """(seconds, from, to) as multiples of the full level's capacity, plateau at ``high``."""
    return (
        (20.0, LOW, LOW),
        (8.0, LOW, high),
        (40.0, high, high),
        (4.0, high, LOW),
        (45.0, LOW, LOW),
    )


def plateau(capacities: Sequence[float]) -> float:
    """The plateau's load: past the full level, but one the narrowest level serves easily.

    On a CPU where per-request overhead is close to the model's cost the levels' capacities
    differ by 2-3x only; a plateau at a fixed 1.7x the full level then sits at the narrowest
    level's capacity, its queue never drains and no policy can bring the p95 back. Capping the
    plateau at a share of the narrowest level keeps the test about the loop, not the machine.
    """
    high = min(HIGH, ceiling(capacities))
    assert high >= MIN_HIGH, (
        f"levels too close to show switching: capacities {capacities} rps per replica"
    )
    return high


def ceiling(capacities: Sequence[float]) -> float:
    """The most the plateau may ask, as a multiple of the full level's measured capacity."""
    return NARROW_SHARE * capacities[0] / capacities[FULL]


def overload_plateau(
    full: Sequence[Target], body: bytes, capacities: Sequence[float], objective_ms: float
) -> tuple[float, list[tuple[float, float]]]:
    """A plateau that provably breaks the objective at the full level, and the probes' p95s.

    The closed-loop burst that measures capacity runs 16 client threads per replica on the
    same CPUs as TorchServe, so it can read the full level's capacity low (a CI run measured
    72 rps where open-loop load of 100 rps kept the p95 at 55 ms): a plateau of 1.7x that
    reading then overloads nothing, and the Predictive policy, trusting the same reading,
    narrows on the rising rate before any breach. So the plateau is probed open loop, pinned
    to the full level, exactly as the ramp will offer it, and raised by ``PROBE_STEP`` up to
    :func:`ceiling` until the p95 of the probe's second half passes the objective.
    """
    high = plateau(capacities)
    top = ceiling(capacities)
    probes: list[tuple[float, float]] = []
    while True:
        rate = high * capacities[FULL] * REPLICAS
        results: list[Result] = []
        run_schedule(full, body, piecewise_arrivals([(PROBE_S, rate, rate)]), results,
                     max_in_flight=96, timeout_s=60)
        failed = [r for r in results if r.status != 200]
        assert not failed, f"the probe at {rate:.1f} rps had {len(failed)} failures"
        late = [r.latency_s for r in results if r.scheduled - results[0].scheduled >= PROBE_S / 2]
        p95_ms = percentile(late, 95) * 1000
        probes.append((round(rate, 1), round(p95_ms, 1)))
        if p95_ms > objective_ms:
            return high, probes
        assert high < top, (
            f"no plateau up to {top:.2f}x the full level's measured capacity breaks the "
            f"objective {objective_ms} ms there (probes, rps and p95 ms: {probes}); "
            f"capacities {capacities} rps per replica"
        )
        high = min(top, high * PROBE_STEP)


def policy() -> dict[str, Any]:
    """Seconds instead of minutes; settle covers the rate window plus a scrape.

    Predictive, with the profile measured by the test: Step mode widens on a low p95 alone,
    so right after a narrowing has drained the queue it widens into the same overload again
    (seen here: it oscillated every 8 s through the plateau). The profile lets the operator
    see that the full level cannot take the arriving rate.
    """
    return {
        "mode": "Predictive",
        "evaluationIntervalSeconds": 1,
        "stableWindowSeconds": 6,
        "panicWindowSeconds": 2,
        "panicThreshold": 2.0,
        "tolerance": 0.1,
        "headroom": 0.2,
        "widenStabilizationSeconds": 8,
        "settleSeconds": WINDOW_S + 1,
        "staleAfterSeconds": 10,
    }


def model_spec(objective_ms: int) -> dict[str, Any]:
    rate = (
        'sum(rate(ts_inference_requests_total{namespace="$namespace",model_name="$model"}'
        f"[{WINDOW_S}s]))"
    )
    return {
        "replicas": REPLICAS,
        "model": {"levelCount": len(LEVEL_NAMES), "source": {"localPath": f"/models/{NAME}.mar"}},
        "objective": {
            "p95Ms": objective_ms,
            "latencyQuery": end_to_end_latency_query(f"{WINDOW_S}s"),
            "requestRateQuery": rate,
        },
        "serving": {"workers": 1, "batchSize": 4, "maxBatchDelayMs": 5},
        "allowRequestPinning": True,  # the test pins levels to measure their capacity
        "policy": policy(),
        "nodePressure": {"enabled": False},
    }


# --------------------------------------------------------------------------- stand-in pods


def replace_args(args: Sequence[str], values: dict[str, str]) -> list[str]:
    """The container's args with the value after each flag in ``values`` replaced.

    Every flag must be there: if the operator stops passing one, the wiring is stale and the
    test says so instead of testing something else.
    """
    out = list(args)
    for flag, value in values.items():
        assert flag in out, f"{flag} not in the pod spec's args {args}"
        out[out.index(flag) + 1] = value
    return out


def server_and_ca(plane: ControlPlane, folder: Path) -> tuple[str, Path]:
    """The API server URL and its CA as a file (what the pod's projected volume carries)."""
    admin = yaml.safe_load(plane.kubeconfig_path.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = folder / "ca.crt"
    if "certificate-authority-data" in cluster:
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        ca.write_bytes(Path(cluster["certificate-authority"]).read_bytes())
    return str(cluster["server"]), ca


def mint_token(kube_client: Any, namespace: str, account: str, path: Path) -> Path:
    """TokenRequest, as the kubelet does for a projected ``serviceAccountToken`` volume."""
    from kubernetes import client as k8s

    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    made = k8s.CoreV1Api(kube_client).create_namespaced_service_account_token(
        account, namespace, request
    )
    path.write_text(str(made.status.token))  # type: ignore[union-attr]
    path.chmod(0o600)
    return path


@dataclass
class Replica:
    """One stand-in pod: TorchServe through ``elastiserve serve`` plus the level agent."""

    index: int
    folder: Path
    inference_port: int
    metrics_port: int
    serve: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None

    @property
    def control_file(self) -> Path:
        return self.folder / "shm" / "level.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}/predictions/{NAME}"

    @property
    def key_file(self) -> Path:
        """What the pod mounts from the model's key Secret: the one key of every replica."""
        return self.folder.parent / "inference-key"

    def token(self) -> str:
        return self.key_file.read_text().strip()

    def start_serving(self, bundle: Path, container: dict[str, Any]) -> None:
        args = container["args"]
        spec = ArchiveSpec(
            workers=int(args[args.index("--workers") + 1]),
            batch_size=int(args[args.index("--batch-size") + 1]),
            max_batch_delay_ms=int(args[args.index("--max-batch-delay-ms") + 1]),
            response_timeout_s=60,
            handler={"control_file": str(self.control_file), "threads": 1},
        )
        mar = build_archive(bundle, self.folder / "mar", NAME, spec)
        if not self.key_file.exists():
            self.key_file.write_text(secrets.token_urlsafe(32) + "\n")
        local = replace_args(args, {
            "--key-file": str(self.key_file),
            "--mar": str(mar),
            "--run-dir": str(self.folder / "run"),
            "--control-file": str(self.control_file),
            "--bind": "127.0.0.1",
            "--port": str(self.inference_port),
            "--metrics-bind": "127.0.0.1",
            "--metrics-port": str(self.metrics_port),
        })
        command = [str(Path(sys.executable).with_name(container["command"][0])), *local]
        self.serve = _spawn(command, self.folder / "serve.log")

    def start_agent(self, container: dict[str, Any], token: Path, ca: Path, server: str) -> None:
        local = replace_args(container["args"], {
            "--control-file": str(self.control_file),
            "--token-file": str(token),
            "--ca-file": str(ca),
        })
        assert container["command"][:3] == ["python", "-m", "elastiserve_serve.level_source_k8s"]
        command = [sys.executable, *container["command"][1:], *local, "--server", server]
        self.agent = _spawn(command, self.folder / "agent.log")

    def stop(self) -> None:
        for process in (self.agent, self.serve):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.agent, self.serve):
            if process is not None:
                try:
                    process.wait(40)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ))


def image_body(size: int) -> bytes:
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def ready(replica: Replica, body: bytes) -> bool:
    if replica.serve is not None and replica.serve.poll() is not None:
        raise AssertionError(f"elastiserve serve exited: {(replica.folder / 'serve.log')}")
    try:
        headers = {"Authorization": f"Bearer {replica.token()}"}
        return httpx.post(replica.url, content=body, headers=headers, timeout=30).status_code == 200
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return False


def pinned_to(targets: Sequence[Target], level: int) -> list[Target]:
    """``targets`` with every request pinned to ``level`` by index (the CR allows pinning)."""
    return [Target(t.url, {**t.headers, "X-Elastiserve-Level": str(level)}) for t in targets]


def measure_capacity(targets: Sequence[Target], body: bytes, seconds: float = 5.0) -> float:
    """Closed-loop requests/s the replicas sustain together (16 clients per replica)."""
    done = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(target: Target) -> None:
        nonlocal done
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < deadline:
                if http.post(target.url, content=body, headers=dict(target.headers)).status_code \
                        == 200:
                    with lock:
                        done += 1

    threads = [threading.Thread(target=client, args=(t,)) for t in targets for _ in range(16)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done / (time.monotonic() - start)


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Row:
    t: float
    offered_rps: float
    p95_operator_ms: float | None  # status.p95Ms: what the operator acted on
    p95_prom_ms: float | None  # the same query, asked by the test
    p95_client_ms: float | None  # answers received in the trailing window
    answered: int
    active_level: int | None
    served_level: str | None


class Recorder:
    """Samples the loop once a second while the load runs."""

    def __init__(self, crs: Any, namespace: str, prom: PrometheusServer,
                 results: list[Result], scale: float,
                 ramp: tuple[tuple[float, float, float], ...]) -> None:
        self.crs, self.namespace, self.prom = crs, namespace, prom
        self.results, self.scale, self.plan = results, scale, ramp
        self.query = render_query(end_to_end_latency_query(f"{WINDOW_S}s"),
                                  namespace=namespace, name=NAME, model=NAME)
        self.rows: list[Row] = []
        self.start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def begin(self, start: float) -> None:
        self.start = start
        self._thread.start()

    def end(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # a slow API answer skips a row, not the test
                self.rows.append(self.sample())

    def sample(self) -> Row:
        now = time.monotonic()
        status = self.crs.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, NAME).get("status") or {}
        prom = [s.value for s in self.prom.query(self.query) if math.isfinite(s.value)]
        recent = [r for r in list(self.results) if now - WINDOW_S <= r.received <= now]
        latest = [r.level for r in recent if r.received >= now - 1.0 and r.level]
        return Row(
            t=round(now - self.start, 1),
            offered_rps=round(planned_rate(self.plan, now - self.start) * self.scale, 1),
            p95_operator_ms=status.get("p95Ms"),
            p95_prom_ms=round(prom[0] * 1000, 1) if prom else None,
            p95_client_ms=round(percentile([r.latency_s for r in recent], 95) * 1000, 1)
            if recent else None,
            answered=len(recent),
            active_level=status.get("activeLevel"),
            served_level=max(set(latest), key=latest.count) if latest else None,
        )


def print_timeline(rows: Sequence[Row], objective_ms: float) -> None:
    print(f"\nobjective p95 {objective_ms:.0f} ms; window {WINDOW_S} s")
    print(f"{'t':>6} {'offered':>8} {'p95 op':>8} {'p95 prom':>9} {'p95 client':>11} "
          f"{'level':>5} {'served':>10}")
    for r in rows:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"
        print(f"{r.t:>6.1f} {r.offered_rps:>8.1f} {ms(r.p95_operator_ms):>8} "
              f"{ms(r.p95_prom_ms):>9} {ms(r.p95_client_ms):>11} "
              f"{r.active_level if r.active_level is not None else '-':>5} "
              f"{r.served_level or '-':>10}")


# --------------------------------------------------------------------------- the test


@pytest.fixture
def world(control_plane: ControlPlane, kube_client: Any, kube_namespace: str,
          tmp_path: Path) -> Iterator[dict[str, Any]]:
    install(control_plane)
    from kubernetes import client as k8s

    wait_for(lambda: any(a.metadata.name == OPERATOR_SA for a in  # type: ignore[union-attr]
                         k8s.CoreV1Api(kube_client).list_namespaced_service_account(
                             OPERATOR_NS).items), "operator ServiceAccount")
    operator_kc = token_kubeconfig(control_plane, kube_client, OPERATOR_NS, OPERATOR_SA,
                                   tmp_path / "operator.kubeconfig")
    replicas = [Replica(i, tmp_path / f"pod-{i}", free_port(), free_port())
                for i in range(REPLICAS)]
    deployment = names_for(NAME).deployment
    targets = [
        ScrapeTarget("torchserve", f"127.0.0.1:{r.metrics_port}",
                     labels=(("namespace", kube_namespace), ("pod", f"{deployment}-{r.index}")))
        for r in replicas
    ]
    with contextlib.ExitStack() as stack:
        prom = stack.enter_context(run_prometheus(tmp_path / "prom", targets,
                                                  scrape_interval_s=1))
        operator = OperatorProcess(operator_kc, tmp_path / "operator.log", prom.url,
                                   namespaces=(kube_namespace,)).start()
        stack.callback(operator.stop)
        for replica in replicas:
            stack.callback(replica.stop)
        yield {"prom": prom, "operator": operator, "replicas": replicas, "tmp": tmp_path,
               "crs": k8s.CustomObjectsApi(kube_client), "namespace": kube_namespace}
        print("operator log tail:\n" + operator.log_tail(30))


def test_load_ramp_narrows_then_widens(
    world: dict[str, Any], control_plane: ControlPlane, kube_client: Any
) -> None:
    crs, ns, tmp = world["crs"], world["namespace"], world["tmp"]
    prom: PrometheusServer = world["prom"]
    replicas: list[Replica] = world["replicas"]
    size = 96  # heavy enough that the levels differ by more than per-request overhead
    bundle = make_bundle(tmp / "bundle", width_mult=1.0, ratios=(0.25, 0.5, 1.0), size=size,
                         names=LEVEL_NAMES)
    body = image_body(size)

    # 1. The CR, with an objective nothing breaches while the capacity is measured.
    crs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticModel",
        "metadata": {"name": NAME}, "spec": model_spec(60_000)})
    names = names_for(NAME)
    apps = __import__("kubernetes").client.AppsV1Api(kube_client)
    pod = wait_for(lambda: _pod_spec(apps, ns, names.deployment), "the operator's Deployment",
                   timeout_s=60)
    containers = {c["name"]: c for c in pod["containers"]}
    assert pod["serviceAccountName"] == names.account

    # 2. The stand-in pods, from that pod spec.
    server, ca = server_and_ca(control_plane, tmp)
    token = mint_token(kube_client, ns, names.account, tmp / "token")
    for replica in replicas:
        replica.start_serving(bundle, containers["torchserve"])
    for replica in replicas:
        replica.start_agent(containers["level-agent"], token, ca, server)
    for replica in replicas:
        wait_for(lambda r=replica: ready(r, body), f"replica {replica.index} serving",  # type: ignore[misc]
                 timeout_s=240, every_s=1.0)
        # The agent wrote the CR's index, the runtime answers with the bundle's name.
        wait_for(lambda r=replica: r.control_file.exists() and  # type: ignore[misc]
                 json.loads(r.control_file.read_text())["level"] == FULL,
                 "agent wrote the operator's level index", timeout_s=30)
    targets = [Target(r.url, {"Authorization": f"Bearer {r.token()}"}) for r in replicas]

    # 3. Each level's capacity (pinned by index through the header; the runtime resolves it),
    # then the objective: the time the full level takes to serve 8 requests per replica at
    # capacity (low load sits well under it, overload passes it within a second or two).
    capacities = []
    for level in range(len(LEVEL_NAMES)):
        pinned = pinned_to(targets, level)
        measure_capacity(pinned, body, 1.0)  # warm-up
        capacities.append(measure_capacity(pinned, body) / REPLICAS)
    capacity = capacities[FULL] * REPLICAS
    objective_ms = max(150, round(8 / capacities[FULL] * 1000))
    high, probes = overload_plateau(pinned_to(targets, FULL), body, capacities, objective_ms)
    profile = [{"name": n, "capacityRps": round(c, 1)}
               for n, c in zip(LEVEL_NAMES, capacities, strict=True)]
    crs.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME, {"spec": {
        "objective": {"p95Ms": objective_ms}, "model": {"profile": profile}}})
    print(f"\nper-replica capacity {[round(c, 1) for c in capacities]} rps; "
          f"objective {objective_ms} ms; plateau {high:.2f}x full after probes "
          f"(rps, p95 ms at the full level) {probes}")
    # The calibration bursts leave the rate window and the policy's stable window.
    time.sleep(WINDOW_S + policy()["stableWindowSeconds"] + 3)

    # 4. The ramp, open loop, with the timeline recorded.
    results: list[Result] = []
    ramp = plan(high)
    arrivals = piecewise_arrivals([(d, a * capacity, b * capacity) for d, a, b in ramp])
    recorder = Recorder(crs, ns, prom, results, capacity, ramp)
    recorder.begin(time.monotonic())
    try:
        run_schedule(targets, body, arrivals, results, max_in_flight=96, timeout_s=60)
    finally:
        recorder.end()
    rows = recorder.rows
    (tmp / "timeline.json").write_text(json.dumps({
        "capacity_rps_per_replica": capacities, "objective_ms": objective_ms,
        "plateau_x_full": high, "probes_rps_p95_ms": probes,
        "window_s": WINDOW_S,
        "replicas": REPLICAS, "rows": [asdict(r) for r in rows]}, indent=1))
    print_timeline(rows, objective_ms)
    print(f"timeline: {tmp / 'timeline.json'}")

    # Zero failed requests, through every switch.
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    assert len(results) == len(arrivals)

    # Load past what the full level serves (the probe broke the objective there at this
    # rate): the operator narrowed during the plateau...
    plateau_rows = [r for r in rows if HIGH_SPAN[0] <= r.t < HIGH_SPAN[1]]
    narrowed = [r for r in plateau_rows if r.active_level is not None and r.active_level < FULL]
    assert narrowed, "the operator never narrowed under overload"
    # ... the answers came from the narrower level, by the bundle's name ...
    assert {r.served_level for r in narrowed} & set(LEVEL_NAMES[:FULL])
    # ... and the client's p95 was under the objective while the load stayed high (back under
    # it if the narrowing came after a breach; never over it if the Predictive policy moved
    # on the rising rate first).
    first = narrowed[0].t
    recovered = [r for r in plateau_rows if r.t > first and r.p95_client_ms is not None
                 and r.p95_client_ms <= objective_ms]
    assert recovered, "p95 never returned under the objective after narrowing"

    # Load fell: the operator widened back to the full level, its first widening step no
    # sooner than the stabilisation window after its last narrowing (HPA-style: the minimum
    # recommendation over the window rules).
    late = [r for r in rows if r.t >= HIGH_SPAN[1]]
    assert [r for r in late if r.active_level == FULL], "never widened back after the load fell"
    moves = [(b.t, b.active_level - a.active_level) for a, b in itertools.pairwise(rows)
             if a.active_level is not None and b.active_level is not None
             and a.active_level != b.active_level]
    last_narrowing = max(t for t, step in moves if step < 0 and t < HIGH_SPAN[1])
    first_widening = min(t for t, step in moves if step > 0 and t > last_narrowing)
    assert first_widening - last_narrowing >= policy()["widenStabilizationSeconds"] - 2
    assert rows[-1].served_level == LEVEL_NAMES[FULL]

    # What the operator acts on tracks what the client sees (see the report for the figures).
    pairs = [(r.p95_operator_ms, r.p95_client_ms) for r in rows
             if r.p95_operator_ms is not None and r.p95_client_ms is not None]
    errors = sorted(abs(op - cl) for op, cl in pairs)
    median = errors[len(errors) // 2]
    print(f"|operator p95 - client p95|: median {median:.0f} ms, "
          f"p90 {errors[int(len(errors) * 0.9)]:.0f} ms over {len(pairs)} seconds")
    assert median <= 0.5 * objective_ms


def _pod_spec(apps: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        found = apps.read_namespaced_deployment(name, namespace)
    except ApiException:
        return None
    spec: dict[str, Any] = apps.api_client.sanitize_for_serialization(found)["spec"]
    return dict(spec["template"]["spec"])
