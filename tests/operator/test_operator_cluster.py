"""The operator against a real API server, controller manager and Prometheus.

The operator runs as a subprocess (so SIGKILL is real) with a ServiceAccount token bound to
exactly ``rbac/operator-clusterrole.yaml``: every behaviour below is also a check that
those rules suffice. Windows in the test CRs are seconds, not minutes.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus

from .cluster_harness import (
    GROUP,
    OPERATOR_NS,
    OPERATOR_SA,
    PLURAL,
    VERSION,
    LatencyExporter,
    OperatorProcess,
    install,
    token_kubeconfig,
    wait_for,
)
from .invalid_specs import INVALID_SPECS, as_object

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

FAST_QUERY = (
    "histogram_quantile(0.95, sum by (le) (rate(elastiserve_request_latency_seconds_bucket"
    '{namespace="$namespace",ModelName="$model"}[4s])))'
)
FAST_RATE = 'sum(rate(ts_inference_requests_total{namespace="$namespace",model_name="$model"}[4s]))'


def model_spec(**policy: Any) -> dict[str, Any]:
    return {
        "model": {"levelCount": 3, "source": {"localPath": "/models/m.mar"}},
        "objective": {"p95Ms": 100, "latencyQuery": FAST_QUERY, "requestRateQuery": FAST_RATE},
        "policy": {
            "mode": "Step",
            "evaluationIntervalSeconds": 1,
            "stableWindowSeconds": 6,
            "panicWindowSeconds": 2,
            "panicThreshold": 2.0,
            "tolerance": 0.1,
            "headroom": 0.2,
            "widenStabilizationSeconds": 5,
            "settleSeconds": 2,
            "staleAfterSeconds": 10,
            **policy,
        },
        "nodePressure": {"enabled": False},
    }


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, kube_client: Any) -> ControlPlane:
    install(control_plane)
    wait_for(
        lambda: _has_account(kube_client), f"ServiceAccount {OPERATOR_NS}/{OPERATOR_SA}"
    )
    return control_plane


def _has_account(kube_client: Any) -> bool:
    from kubernetes import client as k8s

    names = [a.metadata.name for a in  # type: ignore[union-attr]
             k8s.CoreV1Api(kube_client).list_namespaced_service_account(OPERATOR_NS).items]
    return OPERATOR_SA in names


@pytest.fixture(scope="module")
def operator_kubeconfig(
    installed: ControlPlane, kube_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return token_kubeconfig(installed, kube_client, OPERATOR_NS, OPERATOR_SA, path)


@pytest.fixture
def namespace(installed: ControlPlane, kube_namespace: str) -> str:
    return kube_namespace


@pytest.fixture
def crs(kube_client: Any) -> Any:
    from kubernetes import client as k8s

    return k8s.CustomObjectsApi(kube_client)


class World:
    """One test's exporter, Prometheus and operator."""

    def __init__(self, tmp: Path, kubeconfig: Path, namespace: str, model: str) -> None:
        self.tmp = tmp
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.exporter = LatencyExporter(namespace, model).start()
        self._prom_cm = run_prometheus(
            tmp / "prom", [ScrapeTarget("exporter", f"127.0.0.1:{self.exporter.port}")],
            scrape_interval_s=1,
        )
        self.prometheus = self._prom_cm.__enter__()
        self.prom_running = True
        self.operator = self.new_operator()

    def new_operator(self) -> OperatorProcess:
        return OperatorProcess(
            kubeconfig=self.kubeconfig,
            log_path=self.tmp / "operator.log",
            prometheus_url=self.prometheus.url,
            namespaces=(self.namespace,),
        ).start()

    def stop_prometheus(self) -> None:
        if self.prom_running:
            self.prom_running = False
            self._prom_cm.__exit__(None, None, None)

    def close(self) -> None:
        self.operator.stop()
        self.stop_prometheus()
        self.exporter.stop()


@pytest.fixture
def world(tmp_path: Path, operator_kubeconfig: Path, namespace: str) -> Iterator[World]:
    w = World(tmp_path, operator_kubeconfig, namespace, "m1")
    try:
        yield w
    finally:
        w.close()
        print("operator log tail:\n" + w.operator.log_tail())


def create(crs: Any, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticModel",
            "metadata": {"name": name}, "spec": spec}
    result: dict[str, Any] = crs.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return result


def get(crs: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = crs.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return result


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def must(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    found = condition(obj, kind)
    assert found is not None, (kind, obj.get("status"))
    return found


def children(control_plane: ControlPlane, namespace: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for kind in ("deployments", "services", "configmaps", "serviceaccounts", "roles",
                 "rolebindings", "secrets"):
        out = control_plane.kubectl("get", kind, "-n", namespace, "-o", "json",
                                    "-l", "app.kubernetes.io/managed-by=elastiserve-operator")
        found[kind] = json.loads(out.stdout)["items"]
    return found


def events(kube_client: Any, namespace: str, name: str) -> list[Any]:
    from kubernetes import client as k8s

    items = k8s.CoreV1Api(kube_client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=ElasticModel"
    ).items
    return [e for e in items if e.source and e.source.component == "elastiserve-operator"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda c: c.name)
def test_api_server_refuses_invalid_spec(case: Any, crs: Any, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    name = f"bad-{uuid.uuid4().hex[:6]}"
    if case.old is not None:
        crs.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, as_object(case, name, old=True)
        )
        body = as_object(case, name)
        with pytest.raises(ApiException) as refused:
            crs.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"spec": body["spec"]}
            )
    else:
        with pytest.raises(ApiException) as refused:
            crs.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, as_object(case, name)
            )
    assert refused.value.status == 422, refused.value.body
    status = json.loads(str(refused.value.body))  # the raw body escapes '<' as \u003c
    said = status["message"] + " ".join(
        c.get("message", "") for c in (status.get("details") or {}).get("causes") or []
    )
    assert case.message in said


# --------------------------------------------------------------------------- reconcile


def test_children_status_and_garbage_collection(
    world: World, crs: Any, namespace: str, installed: ControlPlane
) -> None:
    created = create(crs, namespace, "m1", model_spec())
    uid = created["metadata"]["uid"]

    def reconciled() -> dict[str, Any] | None:
        obj = get(crs, namespace, "m1")
        status = obj.get("status") or {}
        degraded = condition(obj, "Degraded")
        if degraded and status.get("activeLevel") == 2 and status.get("observedGeneration"):
            return obj
        return None

    obj = wait_for(reconciled, "first reconcile and evaluation", timeout_s=40)
    assert must(obj, "Degraded")["status"] == "False"
    assert must(obj, "Degraded")["observedGeneration"] == obj["metadata"]["generation"]
    found = children(installed, namespace)
    for kind, items in found.items():
        assert len(items) == 1, (kind, items)
        (owner,) = items[0]["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["controller"] is True
    pod = found["deployments"][0]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    agent = next(c for c in pod["containers"] if c["name"] == "level-agent")
    serving = next(c for c in pod["containers"] if c["name"] == "torchserve")
    assert any(m["name"] == "agent-token" for m in agent["volumeMounts"])
    assert not any(m["name"] == "agent-token" for m in serving["volumeMounts"])
    role = found["roles"][0]["rules"][0]
    assert role["resourceNames"] == ["m1"] and set(role["verbs"]) == {"get", "list", "watch"}
    # One inference key for every replica, mounted into the serving container only.
    (secret,) = found["secrets"]
    assert secret["metadata"]["name"] == "m1-inference-key"
    key = secret["data"]["key"]
    assert len(base64.b64decode(key)) >= 43
    assert obj["status"]["inferenceKeySecret"] == "m1-inference-key"
    assert must(obj, "InferenceAuth")["reason"] == "SharedKey"
    volume = next(v for v in pod["volumes"] if v["name"] == "inference-key")
    assert volume["secret"]["secretName"] == "m1-inference-key"
    assert any(m["name"] == "inference-key" for m in serving["volumeMounts"])
    assert not any(m["name"] == "inference-key" for m in agent["volumeMounts"])

    # The pods run on kwok nodes: Ready follows the Deployment.
    wait_for(lambda: (condition(get(crs, namespace, "m1"), "Ready") or {}).get("status")
             == "True", "Ready=True", timeout_s=60)

    # A readiness write that lost a race (here: overwritten by hand) gets no Deployment
    # event to fix it; the policy loop sees the disagreement and rewrites it.
    crs.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "m1",
                                              {"status": {"readyReplicas": 0}})
    assert (get(crs, namespace, "m1").get("status") or {}).get("readyReplicas") == 0
    wait_for(lambda: (get(crs, namespace, "m1").get("status") or {}).get("readyReplicas") == 1,
             "readyReplicas corrected by the policy loop", timeout_s=15)
    text = _fetch(f"http://127.0.0.1:{world.operator.metrics_port}/metrics")
    assert _metric(text, "elastiserve_operator_ready_corrections_total") >= 1

    # A spec change re-applies the children (same names, no duplicates).
    crs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "m1",
                                       {"spec": {"replicas": 2}})
    wait_for(lambda: children(installed, namespace)["deployments"][0]["spec"]["replicas"] == 2,
             "deployment scaled to 2")
    assert all(len(v) == 1 for v in children(installed, namespace).values())
    # Reconciles never replace the key the replicas and the clients hold.
    assert children(installed, namespace)["secrets"][0]["data"]["key"] == key

    crs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "m1")
    wait_for(lambda: not any(children(installed, namespace).values()),
             "children garbage-collected", timeout_s=60, every_s=1.0)


# --------------------------------------------------------------------------- policy


def test_narrows_on_breach_and_widens_after_stabilisation(
    world: World, crs: Any, namespace: str, kube_client: Any
) -> None:
    world.exporter.latency_s = 0.03
    create(crs, namespace, "m1", model_spec())
    wait_for(lambda: (condition(get(crs, namespace, "m1"), "MetricsAvailable") or {})
             .get("status") == "True", "MetricsAvailable=True", timeout_s=40)
    assert get(crs, namespace, "m1")["status"]["activeLevel"] == 2

    world.exporter.latency_s = 0.4  # 4x the objective: panic
    breach_at = time.monotonic()
    wait_for(lambda: get(crs, namespace, "m1")["status"]["activeLevel"] == 0,
             "narrowed to level 0", timeout_s=40)
    narrowed_in = time.monotonic() - breach_at
    status = get(crs, namespace, "m1")["status"]
    assert status["desiredLevel"] == 0 and "narrowing" in status["lastSwitchReason"]

    world.exporter.latency_s = 0.01
    wait_for(lambda: get(crs, namespace, "m1")["status"]["activeLevel"] == 2,
             "widened back to level 2", timeout_s=60)
    switches = wait_for(lambda: len(events(kube_client, namespace, "m1")) >= 4 and
                        events(kube_client, namespace, "m1"), "one Event per switch")
    reasons = {e.reason for e in switches}
    assert "Headroom" in reasons and reasons & {"Panic", "SustainedBreach"}
    assert len(switches) == 4, [(e.reason, e.message) for e in switches]
    # Panic window 2 s + scrape 1 s + a 4 s rate window + settle: well under the 40 s bound.
    assert narrowed_in < 30


def test_prometheus_down_holds_level(world: World, crs: Any, namespace: str) -> None:
    world.exporter.latency_s = 0.03
    create(crs, namespace, "m1", model_spec())
    wait_for(lambda: (condition(get(crs, namespace, "m1"), "MetricsAvailable") or {})
             .get("status") == "True", "MetricsAvailable=True", timeout_s=40)
    level = get(crs, namespace, "m1")["status"]["activeLevel"]

    world.stop_prometheus()
    world.exporter.latency_s = 0.5  # would narrow, if anyone could see it
    obj = wait_for(lambda: (lambda o: o if (condition(o, "MetricsAvailable") or {})
                            .get("status") == "False" else None)(get(crs, namespace, "m1")),
                   "MetricsAvailable=False", timeout_s=20)
    assert must(obj, "MetricsAvailable")["reason"] == "MetricsMissing"
    assert "Prometheus" in must(obj, "MetricsAvailable")["message"]
    assert "p95Ms" not in obj["status"]
    time.sleep(3)
    assert get(crs, namespace, "m1")["status"]["activeLevel"] == level


# --------------------------------------------------------------------------- crash safety


def test_sigkill_during_switch_then_restart_is_consistent(
    world: World, crs: Any, namespace: str, installed: ControlPlane
) -> None:
    world.exporter.latency_s = 0.03
    create(crs, namespace, "m1", model_spec())
    wait_for(lambda: (condition(get(crs, namespace, "m1"), "MetricsAvailable") or {})
             .get("status") == "True", "MetricsAvailable=True", timeout_s=40)
    world.exporter.latency_s = 0.4
    # Kill as soon as the first narrowing lands: the second one is then in flight.
    wait_for(lambda: get(crs, namespace, "m1")["status"]["activeLevel"] < 2,
             "first narrowing", timeout_s=40, every_s=0.05)
    world.operator.kill()
    killed = get(crs, namespace, "m1")["status"]
    assert killed["activeLevel"] == killed["desiredLevel"] == killed["policyState"]["level"]

    world.operator = world.new_operator()
    wait_for(lambda: get(crs, namespace, "m1")["status"]["activeLevel"] == 0,
             "narrowing completes after restart", timeout_s=40)
    status = get(crs, namespace, "m1")["status"]
    assert status["activeLevel"] == status["desiredLevel"] == status["policyState"]["level"]
    assert all(len(v) == 1 for v in children(installed, namespace).values())
    gen = get(crs, namespace, "m1")["metadata"]["generation"]
    assert all(c["observedGeneration"] == gen for c in status["conditions"])


# --------------------------------------------------------------------------- operations


def test_operator_metrics_liveness_and_least_privilege(
    world: World, crs: Any, namespace: str, installed: ControlPlane
) -> None:
    import urllib.request

    create(crs, namespace, "m1", model_spec())
    wait_for(lambda: (get(crs, namespace, "m1").get("status") or {}).get("activeLevel") == 2,
             "evaluated")
    url = f"http://127.0.0.1:{world.operator.metrics_port}/metrics"
    text = wait_for(lambda: _fetch(url), "operator metrics")
    assert "elastiserve_operator_reconcile_duration_seconds_bucket" in text
    assert 'elastiserve_operator_active_level{name="m1"' in text
    # The objective the model runs with, for the dashboard's p95-vs-objective panel.
    objective_s = model_spec()["objective"]["p95Ms"] / 1000.0
    assert (f'elastiserve_operator_objective_seconds{{name="m1",namespace="{namespace}"}} '
            f"{objective_s}") in text
    assert "elastiserve_operator_decisions_total" in text
    health = f"http://127.0.0.1:{world.operator.liveness_port}/healthz"
    assert wait_for(lambda: _fetch(health) is not None, "liveness endpoint")
    with urllib.request.urlopen(health, timeout=5) as response:
        assert response.status == 200

    # The operator's token is bound to the ClusterRole only: it may create Secrets (each
    # model's key) but read none, and it is no cluster-admin.
    kube = ["--kubeconfig", str(world.kubeconfig)]
    for verb, what in (("list", "secrets"), ("get", "secrets"), ("watch", "secrets"),
                       ("update", "secrets"), ("delete", "deployments"), ("create", "pods"),
                       ("create", "clusterrolebindings")):
        done = installed.kubectl(*kube, "auth", "can-i", verb, what, "-A", check=False)
        assert done.stdout.strip() == "no", (verb, what, done.stdout)
    done = installed.kubectl(*kube, "auth", "can-i", "create", "secrets", "-n", namespace,
                             check=False)
    assert done.stdout.strip() == "yes"
    done = installed.kubectl(*kube, "auth", "can-i", "patch", "elasticmodels.elastiserve.io",
                             "-n", namespace, check=False)
    assert done.stdout.strip() == "yes"


def test_a_key_secret_that_exists_is_used_as_it_is(
    world: World, crs: Any, namespace: str, installed: ControlPlane
) -> None:
    """Bring your own key: a Secret created before the model is neither replaced nor read."""
    mine = base64.b64encode(b"my-own-key").decode()
    manifest = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "m1-inference-key"}, "data": {"key": mine}}
    installed.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    create(crs, namespace, "m1", model_spec())

    def reconciled() -> dict[str, Any] | None:
        obj = get(crs, namespace, "m1")
        return obj if (obj.get("status") or {}).get("inferenceKeySecret") else None

    obj = wait_for(reconciled, "reconcile pointing to the key Secret", timeout_s=40)
    assert obj["status"]["inferenceKeySecret"] == "m1-inference-key"
    assert must(obj, "Degraded")["status"] == "False"
    out = installed.kubectl("get", "secret", "m1-inference-key", "-n", namespace, "-o", "json")
    assert json.loads(out.stdout)["data"]["key"] == mine


def _fetch(url: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


# --------------------------------------------------------------------------- skip path


def _metric(text: str | None, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in an exposition."""
    total = 0.0
    for line in (text or "").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total


def test_skipped_children_are_reapplied_when_deleted_or_edited(
    world: World, crs: Any, namespace: str, installed: ControlPlane
) -> None:
    """A reconcile skips children it applied before, so drift must bring them back."""
    create(crs, namespace, "m1", model_spec())
    wait_for(lambda: (get(crs, namespace, "m1").get("status") or {}).get("observedGeneration"),
             "first reconcile", timeout_s=40)
    url = f"http://127.0.0.1:{world.operator.metrics_port}/metrics"
    skipped = _metric(_fetch(url), "elastiserve_operator_child_applies_skipped_total")

    # A policy-only change changes no child: every apply is skipped, the status follows.
    crs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "m1",
                                       {"spec": {"objective": {"p95Ms": 150}}})
    generation = get(crs, namespace, "m1")["metadata"]["generation"]
    wait_for(lambda: get(crs, namespace, "m1")["status"].get("observedGeneration")
             == generation, "reconcile of the policy-only change")
    wait_for(lambda: _metric(_fetch(url), "elastiserve_operator_child_applies_skipped_total")
             >= skipped + 6, "six skipped applies")

    def configmap() -> dict[str, Any] | None:
        items = children(installed, namespace)["configmaps"]
        return items[0] if items else None

    def deployment() -> dict[str, Any]:
        return children(installed, namespace)["deployments"][0]

    applied = (configmap() or {})["data"]["serving.json"]
    installed.kubectl("delete", "configmap", "-n", namespace, "m1-config")
    wait_for(lambda: (configmap() or {}).get("data", {}).get("serving.json") == applied,
             "deleted ConfigMap re-applied")

    installed.kubectl("patch", "configmap", "-n", namespace, "m1-config", "--type=merge",
                      "-p", json.dumps({"data": {"serving.json": "{}"}}))
    wait_for(lambda: (configmap() or {}).get("data", {}).get("serving.json") == applied,
             "edited ConfigMap restored")

    image = next(c["image"] for c in deployment()["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "torchserve")
    installed.kubectl("set", "image", "-n", namespace, "deployment/m1-serving",
                      "torchserve=example.invalid/other:1")
    wait_for(lambda: next(c["image"] for c in deployment()["spec"]["template"]["spec"]
                          ["containers"] if c["name"] == "torchserve") == image,
             "edited Deployment restored")

    installed.kubectl("delete", "rolebinding", "-n", namespace, "m1-level-agent")
    wait_for(lambda: len(children(installed, namespace)["rolebindings"]) == 1,
             "deleted RoleBinding re-applied")
    assert _metric(_fetch(url), "elastiserve_operator_child_drifts_total") >= 4
    assert all(len(v) == 1 for v in children(installed, namespace).values())


# --------------------------------------------------------------------------- peering


def test_two_peered_replicas_one_acts_and_the_other_takes_over(
    tmp_path: Path, operator_kubeconfig: Path, namespace: str, crs: Any,
    installed: ControlPlane,
) -> None:
    """Two operators with one peering name: one reconciles and evaluates, the other waits;
    when the acting one is SIGKILLed the other takes over within the peering lifetime."""
    peering = "elastiserve-test"
    installed.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": peering, "namespace": namespace},
    }))
    exporter = LatencyExporter(namespace, "m1").start()
    with run_prometheus(tmp_path / "prom",
                        [ScrapeTarget("exporter", f"127.0.0.1:{exporter.port}")],
                        scrape_interval_s=1) as prometheus:
        replicas = [
            OperatorProcess(kubeconfig=operator_kubeconfig, log_path=tmp_path / f"op{i}.log",
                            prometheus_url=prometheus.url, namespaces=(namespace,),
                            peering=peering).start()
            for i in range(2)
        ]
        try:
            urls = [f"http://127.0.0.1:{r.metrics_port}/metrics" for r in replicas]
            wait_for(lambda: all(_fetch(u) is not None for u in urls), "both replicas up")
            # Both announce themselves before any work exists, then one pauses.
            wait_for(lambda: len(json.loads(installed.kubectl(
                "get", "kopfpeering", peering, "-n", namespace, "-o", "json").stdout)
                .get("status") or {}) == 2, "both replicas in the peering", timeout_s=30)
            time.sleep(2)
            create(crs, namespace, "m1", model_spec())

            def decisions() -> list[float]:
                return [_metric(_fetch(u), "elastiserve_operator_decisions_total") for u in urls]

            wait_for(lambda: max(decisions()) >= 3, "evaluations by one replica", timeout_s=40)
            time.sleep(3)
            counts = decisions()
            reconciles = [_metric(_fetch(u),
                                  "elastiserve_operator_reconcile_duration_seconds_count")
                          for u in urls]
            acting = 0 if counts[0] > 0 else 1
            waiting = 1 - acting
            assert counts[waiting] == 0 and reconciles[waiting] == 0, (counts, reconciles)
            assert reconciles[acting] >= 1
            assert get(crs, namespace, "m1")["status"]["activeLevel"] == 2

            replicas[acting].kill()
            killed_at = time.monotonic()
            crs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "m1",
                                               {"spec": {"objective": {"p95Ms": 150}}})
            generation = get(crs, namespace, "m1")["metadata"]["generation"]
            wait_for(lambda: get(crs, namespace, "m1")["status"].get("observedGeneration")
                     == generation, "the waiting replica reconciles", timeout_s=90, every_s=1)
            wait_for(lambda: decisions()[waiting] >= 2, "the waiting replica evaluates",
                     timeout_s=30)
            took = time.monotonic() - killed_at
            # The dead replica's record expires 20 s after its last keep-alive.
            assert took < 60, took
            print(f"takeover after SIGKILL: {took:.1f} s")
        finally:
            for r in replicas:
                r.stop()
            exporter.stop()
            for r in replicas:
                print(f"{r.log_path.name} tail:\n" + r.log_tail(15))
