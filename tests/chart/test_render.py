"""The chart rendered by the real helm, without a cluster: lint, schema, RBAC, pod security,
settings that reach the operator, monitoring and the dashboard.

Checks that need the API server's own judgement (OpenAPI schemas, PodSecurity admission,
scheduling) are in ``test_cluster.py``; these are the fast ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
import yaml

from elastiserve.testing.helm import (
    CHART_DIR,
    JETSON_VALUES,
    KUBE_VERSION_ARG,
    REPO_ROOT,
    ChartValues,
    HelmError,
    find,
    iter_rules,
    render,
    run_helm,
    template,
)

CRD = REPO_ROOT / "operator" / "elastiserve_operator" / "crd" / "elasticmodels.yaml"
DEFAULT = ChartValues()
JETSON = ChartValues(files=(JETSON_VALUES,))
NAMESPACED = ChartValues(set_json={"watchNamespaces": ["team-a", "team-b"]})
PROFILES = [DEFAULT, JETSON, NAMESPACED]
PROFILE_IDS = ["default", "jetson", "ns"]


OPERATOR_RBAC = REPO_ROOT / "operator" / "elastiserve_operator" / "rbac"


def triples(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a list of rules allows."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def one(objects: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_settings(objects: Sequence[Mapping[str, Any]]) -> Mapping[str, str]:
    for cm in find(objects, "ConfigMap"):
        if cm["metadata"]["name"].endswith("-operator"):
            data: Mapping[str, str] = cm["data"]
            return data
    raise AssertionError("no operator ConfigMap")


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render(DEFAULT)


@pytest.fixture(scope="module")
def jetson_objects() -> list[dict[str, Any]]:
    return render(JETSON)


@pytest.fixture(scope="module")
def namespaced_objects() -> list[dict[str, Any]]:
    return render(NAMESPACED)


class TestLint:
    @pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
    @pytest.mark.parametrize("values", PROFILES, ids=PROFILE_IDS)
    def test_lint_passes(self, values: ChartValues, strict: bool) -> None:
        args = ["lint", str(CHART_DIR), KUBE_VERSION_ARG, *values.args()]
        if strict:
            args.append("--strict")
        out = run_helm(*args).stdout
        assert "0 chart(s) failed" in out, out


class TestSchemaRefuses:
    """values.schema.json (and validate.yaml for cross-field rules) fail the render, by name."""

    @pytest.mark.parametrize(
        ("values", "says"),
        [
            (ChartValues(set_values={"policy.objectiveP95Ms": -5}), "objectiveP95Ms"),
            (ChartValues(set_values={"policy.headroom": -0.1}), "headroom"),
            (ChartValues(set_values={"policy.tolerance": 0.9}), "tolerance"),
            (ChartValues(set_values={"policy.mode": "Random"}), "mode"),
            (ChartValues(set_values={"policy.stableWindowSeconds": 3}), "stableWindowSeconds"),
            (ChartValues(set_values={"nodePressure.cpuFraction": 1.5}), "cpuFraction"),
            (ChartValues(set_values={"prometheus.url": "prometheus:9090"}), "url"),
            (ChartValues(set_values={"prometheus.timeoutSeconds": 0}), "timeoutSeconds"),
            (ChartValues(set_values={"prometheus.latencyQuery": ""}), "latencyQuery"),
            (ChartValues(set_values={"operator.replicas": -1}), "replicas"),
            (ChartValues(set_values={"operator.image.tag": "latest"}), "tag"),
            (ChartValues(set_values={"operator.image.digest": "sha256:abc"}), "digest"),
            (ChartValues(set_values={"operator.metricsPort": 80}), "metricsPort"),
            (ChartValues(set_values={"operatr.replicas": 1}), "operatr"),
            (ChartValues(set_values={"policy.objective": 5}), "objective"),
            (ChartValues(set_json={"watchNamespaces": ["Not_A_Namespace"]}), "watchNamespaces"),
            (ChartValues(set_values={"monitoring.serviceMonitor.interval": "often"}), "interval"),
            (ChartValues(set_values={"serving.workers": 0}), "workers"),
            (ChartValues(set_values={"serving.batchSize": 300}), "batchSize"),
            (ChartValues(set_values={"serving.image.pullPolicy": "Sometimes"}), "pullPolicy"),
        ],
        ids=[
            "negative-objective",
            "negative-headroom",
            "tolerance-too-big",
            "unknown-mode",
            "stable-window-too-short",
            "cpu-fraction-above-1",
            "url-without-scheme",
            "zero-timeout",
            "empty-query",
            "negative-replicas",
            "latest-tag",
            "short-digest",
            "privileged-port",
            "unknown-top-level-key",
            "unknown-policy-key",
            "bad-namespace",
            "bad-interval",
            "zero-workers",
            "huge-batch",
            "bad-pull-policy",
        ],
    )
    def test_bad_value_fails_naming_the_key(self, values: ChartValues, says: str) -> None:
        with pytest.raises(HelmError) as caught:
            template(values)
        message = caught.value.stderr
        assert "values don't meet the specifications of the schema" in message, message
        assert says in message, message

    @pytest.mark.parametrize(
        ("values", "says"),
        [
            (
                ChartValues(
                    set_values={"operator.replicas": 2, "operator.peering.enabled": False}
                ),
                "needs operator.peering.enabled=true",
            ),
            (
                ChartValues(set_values={"policy.panicWindowSeconds": 120}),
                "panicWindowSeconds must be <= policy.stableWindowSeconds",
            ),
            (
                ChartValues(set_values={"policy.evaluationIntervalSeconds": 10}),
                "evaluationIntervalSeconds must be <= policy.panicWindowSeconds",
            ),
            (
                ChartValues(set_values={"policy.panicThreshold": 1.05}),
                "panicThreshold must be > 1 + policy.tolerance",
            ),
            (
                ChartValues(set_values={"policy.settleSeconds": 400}),
                "settleSeconds must be <= policy.widenStabilizationSeconds",
            ),
            (
                ChartValues(set_values={"operator.metricsPort": 8080}),
                "must differ",
            ),
            (
                ChartValues(set_values={"serving.maxBatchDelayMs": 100}),
                "serving.maxBatchDelayMs must be < policy.objectiveP95Ms",
            ),
        ],
        ids=["ha-without-peering", "panic>stable", "eval>panic", "panic<=tol", "settle>widen",
             "same-ports", "delay>=objective"],
    )
    def test_cross_field_rule_fails_with_message(self, values: ChartValues, says: str) -> None:
        with pytest.raises(HelmError) as caught:
            template(values)
        assert says in caught.value.stderr, caught.value.stderr

    def test_single_standalone_replica_is_fine(self) -> None:
        objects = render(
            ChartValues(set_values={"operator.replicas": 1, "operator.peering.enabled": False})
        )
        assert operator_settings(objects)["ELASTISERVE_PEERING"] == ""
        assert find(objects, "ClusterKopfPeering") == []
        rules = {res for _, rule in iter_rules(objects) for res in rule["resources"]}
        assert "clusterkopfpeerings" not in rules


class TestRbac:
    @pytest.mark.parametrize("values", PROFILES, ids=PROFILE_IDS)
    def test_no_wildcards(self, values: ChartValues) -> None:
        rules = list(iter_rules(render(values)))
        assert rules
        for where, rule in rules:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in json.dumps(rule.get(key, [])), f"{where}: {key} {rule}"
            assert "nonResourceURLs" not in rule, where

    @pytest.mark.parametrize("values", [DEFAULT, NAMESPACED], ids=["default", "ns"])
    def test_secrets_create_only_no_pods_exec_no_escalation(self, values: ChartValues) -> None:
        """The operator creates each model's inference key Secret and can read none."""
        for where, rule in iter_rules(render(values)):
            assert not {"pods/exec", "pods/attach"} & set(rule["resources"]), where
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create"], where
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), where

    def test_cluster_wide_binds_namespaced_rules_cluster_wide(
        self, default_objects: list[dict[str, Any]]
    ) -> None:
        assert find(default_objects, "Role") == []
        roles = {r["metadata"]["name"]: r for r in find(default_objects, "ClusterRole")}
        assert set(roles) == {"es-elastiserve-cluster", "es-elastiserve-namespaced"}
        cluster = {r["apiGroups"][0] + "/" + res for r in roles["es-elastiserve-cluster"]["rules"]
                   for res in r["resources"]}
        assert cluster == {
            "/nodes",
            "metrics.k8s.io/nodes",
            "apiextensions.k8s.io/customresourcedefinitions",
            "/namespaces",
            "kopf.dev/clusterkopfpeerings",
        }
        bindings = {b["roleRef"]["name"] for b in find(default_objects, "ClusterRoleBinding")}
        assert bindings == set(roles)

    def test_namespaced_gets_a_role_per_namespace(
        self, namespaced_objects: list[dict[str, Any]]
    ) -> None:
        roles = find(namespaced_objects, "Role")
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
        bindings = find(namespaced_objects, "RoleBinding")
        assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
        for binding in bindings:
            (subject,) = binding["subjects"]
            assert subject["namespace"] == "elastiserve-system"
        (cluster_role,) = find(namespaced_objects, "ClusterRole")
        resources = {res for r in cluster_role["rules"] for res in r["resources"]}
        # kopf restricted to namespaces still lists and watches namespace names.
        assert resources == {"nodes", "customresourcedefinitions", "namespaces"}
        peerings = find(namespaced_objects, "KopfPeering")
        assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
        assert find(namespaced_objects, "ClusterKopfPeering") == []
        assert operator_settings(namespaced_objects)["ELASTISERVE_NAMESPACES"] == "team-a,team-b"

    def test_operator_verbs(self, namespaced_objects: list[dict[str, Any]]) -> None:
        role = find(namespaced_objects, "Role")[0]
        verbs = {(r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"]
                 for res in r["resources"]}
        # Children: applied (get/create/patch) and watched for drift (list/watch).
        applied = {"get", "list", "watch", "create", "patch"}
        assert verbs == {
            ("elastiserve.io", "elasticmodels"): {"get", "list", "watch", "patch"},
            ("elastiserve.io", "elasticmodels/status"): {"get", "patch"},
            ("apps", "deployments"): applied,
            ("apps", "deployments/scale"): {"patch"},  # the joint policy's replica count
            ("", "services"): applied,
            ("", "configmaps"): applied,
            ("", "serviceaccounts"): applied,
            ("rbac.authorization.k8s.io", "roles"): applied,
            ("rbac.authorization.k8s.io", "rolebindings"): applied,
            ("networking.k8s.io", "networkpolicies"): applied,
            ("", "secrets"): {"create"},
            ("", "pods"): {"list", "watch"},
            ("", "events"): {"create", "patch"},
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        }

    def test_cluster_wide_grants_what_the_operator_declares(
        self, default_objects: list[dict[str, Any]]
    ) -> None:
        """operator/elastiserve_operator/rbac/ is the operator's own list, which its tests run
        with; the chart grants no more, and no less except namespaced peerings (a cluster-wide
        kopf uses ClusterKopfPeering only)."""
        declared: set[tuple[str, str, str]] = set()
        for path in sorted(OPERATOR_RBAC.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if doc and doc["kind"] in ("ClusterRole", "Role"):
                    declared |= triples(doc["rules"])
        assert declared, f"no rules found in {OPERATOR_RBAC}"
        granted = triples(rule for _, rule in iter_rules(default_objects))
        assert granted - declared == set()
        assert {t for t in declared - granted if t[1] != "kopfpeerings"} == set()


class TestPodSecurity:
    """The restricted profile's rules, read off the rendered pod (the API server's PodSecurity
    admission judges the same pod in test_cluster.py)."""

    @pytest.mark.parametrize("values", [DEFAULT, JETSON], ids=["default", "jetson"])
    def test_operator_pod_is_restricted(self, values: ChartValues) -> None:
        pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            for port in container["ports"]:
                assert port["containerPort"] >= 1024
        volumes = pod["volumes"]
        assert all(set(v) <= {"name", "emptyDir", "configMap", "projected"} for v in volumes)


class TestOperatorDeployment:
    def test_replicas_peering_probe_and_ports(
        self, default_objects: list[dict[str, Any]]
    ) -> None:
        deployment = one(default_objects, "Deployment")
        assert deployment["spec"]["replicas"] == 2
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "elastiserve_operator"]
        assert "args" not in container
        settings = operator_settings(default_objects)
        assert settings["ELASTISERVE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
        assert settings["ELASTISERVE_PEERING"] == "elastiserve"
        assert settings["ELASTISERVE_NAMESPACES"] == ""
        probe = container["livenessProbe"]["httpGet"]
        assert probe == {"path": "/healthz", "port": "health"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"health": 8080, "metrics": 9100}
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env == {
            "POD_ID": "metadata.name",
            "ELASTISERVE_OPERATOR_NAMESPACE": "metadata.namespace",
        }
        (peering,) = find(default_objects, "ClusterKopfPeering")
        assert peering["metadata"]["name"] == "elastiserve"

    def test_image_defaults_to_app_version_and_digest_wins(self) -> None:
        chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
        image = one(render(DEFAULT), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert image["image"] == f"ghcr.io/elastiserve/operator:{chart['appVersion']}"
        digest = "sha256:" + "a" * 64
        pinned = render(ChartValues(set_values={"operator.image.digest": digest}))
        container = one(pinned, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"ghcr.io/elastiserve/operator@{digest}"

    def test_config_change_rolls_the_operator(self) -> None:
        def checksum(values: ChartValues) -> str:
            pod = one(render(values), "Deployment")["spec"]["template"]
            return str(pod["metadata"]["annotations"]["checksum/config"])

        changed = ChartValues(set_values={"prometheus.url": "http://prom.example:9090"})
        assert checksum(DEFAULT) != checksum(changed)


# What elastiserve_operator.settings reads (its ENV table), with the default install's values.
READ_BY_OPERATOR = {
    "ELASTISERVE_NAMESPACES": "",
    "ELASTISERVE_PEERING": "elastiserve",
    "ELASTISERVE_LIVENESS_ENDPOINT": "http://0.0.0.0:8080/healthz",
    "ELASTISERVE_METRICS_PORT": "9100",
    "ELASTISERVE_PROMETHEUS_URL": "http://prometheus-operated.monitoring.svc:9090",
    "ELASTISERVE_PROMETHEUS_TIMEOUT_SECONDS": "5",
    "ELASTISERVE_NODE_PRESSURE": "true",
    "ELASTISERVE_SERVING_IMAGE": "ghcr.io/elastiserve/serving:0.1.0",
    "ELASTISERVE_SERVING_IMAGE_PULL_POLICY": "IfNotPresent",
    "ELASTISERVE_PROMETHEUS_MAX_RESPONSE_BYTES": "1048576",
    "ELASTISERVE_PROMETHEUS_MAX_SERIES": "1000",
    "ELASTISERVE_OWNERSHIP_RETRY_SECONDS": "60",
    "ELASTISERVE_SERVING_ALLOWED_FACTORIES": "[]",
}
QUERIES = ("ELASTISERVE_LATENCY_QUERY", "ELASTISERVE_RATE_QUERY")
# The defaults for what an ElasticModel leaves out (its DEFAULTS_ENV table).
POLICY_DEFAULTS = {
    "ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": "100",
    "ELASTISERVE_DEFAULT_POLICY_MODE": "Predictive",
    "ELASTISERVE_DEFAULT_EVALUATION_INTERVAL_SECONDS": "5",
    "ELASTISERVE_DEFAULT_STABLE_WINDOW_SECONDS": "60",
    "ELASTISERVE_DEFAULT_PANIC_WINDOW_SECONDS": "6",
    "ELASTISERVE_DEFAULT_PANIC_THRESHOLD": "2",
    "ELASTISERVE_DEFAULT_TOLERANCE": "0.1",
    "ELASTISERVE_DEFAULT_HEADROOM": "0.2",
    "ELASTISERVE_DEFAULT_WIDEN_STABILIZATION_SECONDS": "300",
    "ELASTISERVE_DEFAULT_SETTLE_SECONDS": "30",
    "ELASTISERVE_DEFAULT_STALE_AFTER_SECONDS": "60",
    "ELASTISERVE_DEFAULT_POD_START_SECONDS": "60",
    "ELASTISERVE_NODE_PRESSURE_CPU_FRACTION": "0.9",
    "ELASTISERVE_NODE_PRESSURE_MEMORY_FRACTION": "0.9",
    "ELASTISERVE_NODE_PRESSURE_TEMPERATURE_CELSIUS": "85",
    "ELASTISERVE_NODE_PRESSURE_GPU_LOAD_PERCENT": "95",
}
# The serving pods' defaults for what an ElasticModel's spec.serving leaves out (also in
# DEFAULTS_ENV: checked at start with the spec's own rules).
SERVING_DEFAULTS = {
    "ELASTISERVE_SERVING_WORKERS": "1",
    "ELASTISERVE_SERVING_BATCH_SIZE": "1",
    "ELASTISERVE_SERVING_MAX_BATCH_DELAY_MS": "10",
    "ELASTISERVE_SERVING_RUNTIME_CLASS": "",
    "ELASTISERVE_SERVING_NODE_SELECTOR": "{}",
    "ELASTISERVE_SERVING_TOLERATIONS": "[]",
    "ELASTISERVE_SERVING_RESOURCES": (
        '{"limits":{"memory":"2Gi"},"requests":{"cpu":"500m","memory":"1Gi"}}'
    ),
}
# Handed over for the node exporters.
CLUSTER_DEFAULTS = {
    "ELASTISERVE_NODE_CPU_FRACTION_METRIC": "instance:node_cpu_utilisation:rate5m",
    "ELASTISERVE_NODE_MEMORY_FRACTION_METRIC": "instance:node_memory_utilisation:ratio",
    "ELASTISERVE_NODE_TEMPERATURE_METRIC": "jetson_temperatures",
    "ELASTISERVE_NODE_GPU_LOAD_METRIC": "jetson_usage_gpu",
    "ELASTISERVE_NODE_METRICS_NODE_LABEL": "node",
    "ELASTISERVE_NODE_METRICS_MAX_AGE_SECONDS": "60",
}


# What an ElasticModel may ask for (TENANCY_ENV) and its NetworkPolicy (NETWORK_ENV): the
# safe defaults (no host path, no extra image or placement, queries confined).
TENANCY_DEFAULTS = {
    "ELASTISERVE_HOST_PATH_ENABLED": "false",
    "ELASTISERVE_ALLOWED_HOST_PATHS": "[]",
    "ELASTISERVE_ALLOWED_IMAGES": "[]",
    "ELASTISERVE_ALLOWED_TOLERATIONS": "[]",
    "ELASTISERVE_ALLOWED_NODE_SELECTORS": "{}",
    "ELASTISERVE_ALLOWED_RUNTIME_CLASSES": "[]",
    "ELASTISERVE_MODEL_QUERIES": "Confined",
    "ELASTISERVE_PROMETHEUS_NAMESPACE_LABEL": "namespace",
    "ELASTISERVE_MODEL_QUERY_MAX_RANGE_SECONDS": "3600",
}
NETWORK_DEFAULTS = {
    "ELASTISERVE_NETWORK_POLICY": "true",
    "ELASTISERVE_INFERENCE_NAMESPACES": "[]",
    "ELASTISERVE_METRICS_NAMESPACE_SELECTOR": '{"kubernetes.io/metadata.name":"monitoring"}',
    "ELASTISERVE_METRICS_POD_SELECTOR": '{"app.kubernetes.io/name":"prometheus"}',
}


class TestSettingsReachTheOperator:
    def test_every_setting_is_an_env_var_from_the_configmap(
        self, default_objects: list[dict[str, Any]]
    ) -> None:
        settings = dict(operator_settings(default_objects))
        queries = {k: settings.pop(k) for k in QUERIES}
        assert settings == {**READ_BY_OPERATOR, **POLICY_DEFAULTS, **SERVING_DEFAULTS,
                            **CLUSTER_DEFAULTS, **TENANCY_DEFAULTS, **NETWORK_DEFAULTS}
        container = one(default_objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        (source,) = container["envFrom"]
        assert source["configMapRef"]["name"] == "es-elastiserve-operator"
        assert all(v.strip() for v in queries.values())

    def test_names_match_the_operators_settings_table(self) -> None:
        settings = importlib.import_module("elastiserve_operator.settings")
        assert set(settings.ENV.values()) == set(READ_BY_OPERATOR) | set(QUERIES)
        assert set(settings.DEFAULTS_ENV) == set(POLICY_DEFAULTS) | set(SERVING_DEFAULTS)
        assert set(settings.TENANCY_ENV.values()) == set(TENANCY_DEFAULTS)
        assert set(settings.NETWORK_ENV.values()) == set(NETWORK_DEFAULTS)

    def test_operator_parses_the_rendered_settings(
        self, default_objects: list[dict[str, Any]], jetson_objects: list[dict[str, Any]]
    ) -> None:
        module = importlib.import_module("elastiserve_operator.settings")
        parsed = module.settings_from_env(operator_settings(default_objects))
        assert parsed.peering == "elastiserve"
        assert parsed.namespaces == ()
        assert parsed.metrics_port == 9100
        assert parsed.liveness_endpoint == "http://0.0.0.0:8080/healthz"
        jetson = module.settings_from_env(operator_settings(jetson_objects))
        assert jetson.peering == ""
        assert jetson.serving_image.endswith("-l4t-r36")
        # The profile's own allow-lists: the edge pool, the NVIDIA runtime, its images.
        assert jetson.tenancy.runtime_classes == ("nvidia",)
        assert jetson.tenancy.node_selectors["elastiserve.io/pool"] == ("edge",)
        assert [t["key"] for t in jetson.tenancy.tolerations] == ["elastiserve.io/pool"]
        assert jetson.tenancy.images == ("ghcr.io/elastiserve/serving",)
        assert parsed.tenancy == module.TenancyPolicy()  # the default chart: the safe defaults

    def test_default_queries_are_the_operators(
        self, default_objects: list[dict[str, Any]]
    ) -> None:
        prometheus = importlib.import_module("elastiserve_operator.signals.prometheus")
        settings = operator_settings(default_objects)
        assert settings["ELASTISERVE_LATENCY_QUERY"] == prometheus.DEFAULT_LATENCY_QUERY
        assert settings["ELASTISERVE_RATE_QUERY"] == prometheus.DEFAULT_RATE_QUERY

    def test_policy_defaults_equal_the_operators_builtin_ones(
        self, default_objects: list[dict[str, Any]]
    ) -> None:
        # An operator started without the chart (or the cluster-less mode) then behaves
        # like a default install.
        module = importlib.import_module("elastiserve_operator.settings")
        spec = importlib.import_module("elastiserve_operator.spec")
        parsed = module.defaults_from_env(operator_settings(default_objects))
        # Except the pods' resources: an operator without the chart imposes none.
        assert parsed.serving.resources == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                            "limits": {"memory": "2Gi"}}
        without = dataclasses.replace(parsed, serving=dataclasses.replace(parsed.serving,
                                                                          resources={}))
        assert without == spec.SpecDefaults()

    def test_serving_values_reach_the_pods_the_operator_builds(
        self, jetson_objects: list[dict[str, Any]]
    ) -> None:
        """values.yaml -> ConfigMap -> ELASTISERVE_SERVING_* -> the serving Deployment."""
        module = importlib.import_module("elastiserve_operator.settings")
        children = importlib.import_module("elastiserve_operator.children")
        spec_module = importlib.import_module("elastiserve_operator.spec")
        objects = render(ChartValues(files=(JETSON_VALUES,), set_values={
            "serving.workers": 2, "serving.batchSize": 8, "serving.maxBatchDelayMs": 4,
            "serving.image.pullPolicy": "Always"}))
        settings = module.settings_from_env(operator_settings(objects))
        model = spec_module.parse_spec(
            {"model": {"levelCount": 2, "source": {"localPath": "/m/m.mar"}}},
            settings.spec_defaults)
        deployment = children.build_deployment(children.Owner("m", "ns", "u"), model, settings)
        pod = deployment["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        for flag, value in (("--workers", "2"), ("--batch-size", "8"),
                            ("--max-batch-delay-ms", "4")):
            assert args[args.index(flag) + 1] == value
        assert pod["runtimeClassName"] == "nvidia"
        assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64", "elastiserve.io/pool": "edge"}
        assert pod["tolerations"][0]["key"] == "elastiserve.io/pool"
        assert pod["containers"][0]["resources"]["limits"]["memory"] == "1536Mi"
        assert {c["imagePullPolicy"] for c in pod["containers"]} == {"Always"}
        assert pod["containers"][0]["image"].endswith("-l4t-r36")

    def test_an_auto_batch_size_value_reaches_the_pods_as_a_plan(self) -> None:
        """``serving.batchSize: Auto`` passes the values schema and makes each pod plan its
        batch size and threads against the model's objective."""
        module = importlib.import_module("elastiserve_operator.settings")
        children = importlib.import_module("elastiserve_operator.children")
        spec_module = importlib.import_module("elastiserve_operator.spec")
        objects = render(ChartValues(set_values={"serving.batchSize": "Auto"}))
        settings = module.settings_from_env(operator_settings(objects))
        model = spec_module.parse_spec(
            {"model": {"levelCount": 2, "source": {"localPath": "/m/m.mar"}},
             "objective": {"p95Ms": 120}}, settings.spec_defaults)
        args = children.build_deployment(children.Owner("m", "ns", "u"), model, settings)[
            "spec"]["template"]["spec"]["containers"][0]["args"]
        for flag, value in (("--batch-size", "auto"), ("--threads", "auto"),
                            ("--objective-ms", "120")):
            assert args[args.index(flag) + 1] == value

    def test_changed_policy_values_reach_the_operators_defaults(self) -> None:
        module = importlib.import_module("elastiserve_operator.settings")
        objects = render(ChartValues(set_values={
            "policy.objectiveP95Ms": 123, "policy.mode": "Step", "policy.tolerance": 0.2,
            "nodePressure.temperatureCelsius": 70}))
        parsed = module.defaults_from_env(operator_settings(objects))
        assert parsed.objective_p95_ms == 123 and parsed.policy.mode.value == "Step"
        assert parsed.policy.tolerance == 0.2
        assert parsed.node_pressure.temperature_c == 70.0

    def test_the_crd_leaves_the_chart_defaulted_fields_unset(self) -> None:
        spec_module = importlib.import_module("elastiserve_operator.spec")
        crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for path in spec_module.CHART_DEFAULTED:
            section, key = path.split(".")
            assert "default" not in spec["properties"][section]["properties"][key], path

    def test_node_exporter_names_equal_the_operators(self) -> None:
        nodes = importlib.import_module("elastiserve_operator.signals.nodes")
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
        names = nodes.ExporterNames()
        assert values["nodePressure"]["metrics"] == {
            "cpuFraction": names.cpu_fraction,
            "memoryFraction": names.memory_fraction,
            "temperatureCelsius": names.temperature_c,
            "gpuLoadPercent": names.gpu_load_percent,
            "nodeLabel": names.node_label,
            "maxAgeSeconds": names.max_age_s,
        }

    def test_watch_namespaces_reach_the_operator(
        self, namespaced_objects: list[dict[str, Any]]
    ) -> None:
        settings = operator_settings(namespaced_objects)
        assert settings["ELASTISERVE_NAMESPACES"] == "team-a,team-b"


class TestJetsonProfile:
    def test_operator_lands_on_jetson_arm64(self, jetson_objects: list[dict[str, Any]]) -> None:
        deployment = one(jetson_objects, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert deployment["spec"]["replicas"] == 1
        assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        assert term["matchExpressions"] == [
            {"key": "nvidia.com/jetson.model", "operator": "Exists"}
        ]
        assert {"key": "elastiserve.io/pool", "operator": "Equal", "value": "edge",
                "effect": "NoSchedule"} in pod["tolerations"]
        # One multi-arch operator image; only the serving image differs on Jetson.
        assert pod["containers"][0]["image"] == "ghcr.io/elastiserve/operator:0.1.0"

    def test_serving_defaults_target_jetsons_with_nvidia_runtime(
        self, jetson_objects: list[dict[str, Any]]
    ) -> None:
        settings = operator_settings(jetson_objects)
        assert settings["ELASTISERVE_SERVING_RUNTIME_CLASS"] == "nvidia"
        assert json.loads(settings["ELASTISERVE_SERVING_NODE_SELECTOR"]) == {
            "kubernetes.io/arch": "arm64",
            "elastiserve.io/pool": "edge",
        }
        assert json.loads(settings["ELASTISERVE_SERVING_TOLERATIONS"])[0]["key"] == (
            "elastiserve.io/pool"
        )
        resources = json.loads(settings["ELASTISERVE_SERVING_RESOURCES"])
        assert resources["limits"]["memory"] == "1536Mi"
        assert "l4t" in settings["ELASTISERVE_SERVING_IMAGE"]


class TestMonitoring:
    def test_monitors_are_off_by_default(self, default_objects: list[dict[str, Any]]) -> None:
        assert find(default_objects, "ServiceMonitor") == []
        assert find(default_objects, "PodMonitor") == []

    def test_monitors_render_when_enabled(self) -> None:
        objects = render(
            ChartValues(
                set_values={
                    "monitoring.serviceMonitor.enabled": True,
                    "monitoring.podMonitor.enabled": True,
                },
                set_json={"monitoring.serviceMonitor.labels": {"release": "kps"}},
            )
        )
        sm = one(objects, "ServiceMonitor")
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "kps"
        assert sm["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "30s"}
        ]
        service = one(objects, "Service")
        assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(
            service["metadata"]["labels"].items()
        )
        pm = one(objects, "PodMonitor")
        assert pm["spec"]["namespaceSelector"] == {"any": True}
        children = importlib.import_module("elastiserve_operator.children")
        assert pm["spec"]["selector"]["matchLabels"] == children.MANAGED_BY
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"

    def test_pod_monitor_follows_watch_namespaces(self) -> None:
        objects = render(
            ChartValues(
                set_values={"monitoring.podMonitor.enabled": True},
                set_json={"watchNamespaces": ["team-a"]},
            )
        )
        assert one(objects, "PodMonitor")["spec"]["namespaceSelector"] == {
            "matchNames": ["team-a"]
        }

    def test_dashboard_has_the_four_views(self, default_objects: list[dict[str, Any]]) -> None:
        (cm,) = [c for c in find(default_objects, "ConfigMap")
                 if c["metadata"]["name"].endswith("-dashboard")]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        dashboard = json.loads(cm["data"]["elastiserve.json"])
        titles = [p["title"] for p in dashboard["panels"]]
        assert titles == [
            "Active level",
            "p95 latency vs objective",
            "Request rate per level",
            "Level switches",
        ]
        for panel in dashboard["panels"]:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]

    def test_dashboard_can_be_turned_off(self) -> None:
        objects = render(ChartValues(set_values={"grafana.dashboard.enabled": False}))
        assert [c["metadata"]["name"] for c in find(objects, "ConfigMap")] == [
            "es-elastiserve-operator"
        ]

