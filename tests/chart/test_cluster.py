"""The chart against the real local control plane.

* ``kubectl apply --dry-run=server`` of the rendered chart: the API server validates every
  object against its own OpenAPI schemas and runs admission, without storing anything.
* PodSecurity admission at ``restricted`` judges the operator's pod (and refuses a pod that
  breaks the profile, so the check is not vacuous).
* ``helm install`` for real: the release's objects exist, the operator's pods are scheduled
  and Running on kwok nodes (the default profile on the x86 server, the Jetson profile on an
  arm64 board), and a token of the chart's ServiceAccount can do what the operator needs and
  nothing it does not.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.helm import (
    OPERATOR_COMPONENT,
    ChartValues,
    Release,
    can_i,
    ensure_crds,
    install,
    template,
    uninstall,
    write_service_account_kubeconfig,
)
from elastiserve.testing.kwok_nodes import default_nodes
from elastiserve.testing.processes import wait_until

pytestmark = pytest.mark.controlplane

NODES = {node.name: node for node in default_nodes()}
ARM64 = {name for name, node in NODES.items() if node.arch == "arm64"}
JETSON_VALUES = ChartValues(files=(Path(__file__).resolve().parents[2]
                                   / "charts" / "elastiserve" / "values-jetson-k3s.yaml",))
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
WAIT_S = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_namespace(plane: ControlPlane, name: str, labels: Mapping[str, str] = {}) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels)},
    }
    plane.kubectl("create", "-f", "-", input=json.dumps(manifest))
    wait_until(
        lambda: bool(
            plane.kubectl(
                "get", "serviceaccount", "default", "-n", name, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
        ),
        what=f"ServiceAccount {name}/default",
        timeout_s=30.0,
    )


def delete_namespaces(plane: ControlPlane, *names: str) -> None:
    plane.kubectl("delete", "namespace", "--wait=false", "--ignore-not-found", *names)


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    ensure_crds(control_plane)
    return control_plane


def dry_run(plane: ControlPlane, manifests: str) -> str:
    done = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


class TestServerSideValidation:
    @pytest.mark.parametrize(
        "profile", ["default", "namespaced", "jetson", "standalone"], ids=str
    )
    def test_rendered_chart_is_accepted_by_the_api_server(
        self, plane: ControlPlane, profile: str
    ) -> None:
        release_ns, team = unique("es-dry"), unique("team")
        namespaces = [release_ns, team]
        values = {
            "default": ChartValues(),
            "namespaced": ChartValues(set_json={"watchNamespaces": [team]}),
            "jetson": JETSON_VALUES,
            "standalone": ChartValues(
                set_values={"operator.replicas": 1, "operator.peering.enabled": False}
            ),
        }[profile]
        for name in namespaces:
            create_namespace(plane, name, RESTRICTED)
        try:
            rendered = template(values, release="dry", namespace=release_ns)
            objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
            out = dry_run(plane, rendered)
            assert out.count("(server dry run)") == len(objects), out
            # No PodSecurity warning either: the namespaces warn at restricted too.
            assert "violate PodSecurity" not in out, out
        finally:
            delete_namespaces(plane, *namespaces)

    def test_monitors_parse_as_prometheus_operator_objects(self) -> None:
        # The ServiceMonitor/PodMonitor CRDs are not in the test cluster, so these two are
        # only checked for shape; everything else in the render went through the API server.
        rendered = template(
            ChartValues(
                set_values={
                    "monitoring.serviceMonitor.enabled": True,
                    "monitoring.podMonitor.enabled": True,
                }
            )
        )
        monitors = [
            doc for doc in yaml.safe_load_all(rendered)
            if doc and doc["kind"] in ("ServiceMonitor", "PodMonitor")
        ]
        assert sorted(m["kind"] for m in monitors) == ["PodMonitor", "ServiceMonitor"]
        for monitor in monitors:
            assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
            assert monitor["spec"]["selector"]["matchLabels"]


def operator_pod(values: ChartValues, namespace: str) -> dict[str, Any]:
    """The chart's operator pod template as a Pod in ``namespace``."""
    rendered = yaml.safe_load_all(template(values, release="pss", namespace=namespace))
    (deployment,) = [d for d in rendered if d and d["kind"] == "Deployment"]
    pod_template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-pss", "namespace": namespace,
                     "labels": pod_template["metadata"]["labels"]},
        "spec": pod_template["spec"],
    }


class TestPodSecurityAdmission:
    @pytest.mark.parametrize("profile", ["default", "jetson"])
    def test_operator_pod_is_admitted_at_restricted(
        self, plane: ControlPlane, profile: str
    ) -> None:
        namespace = unique("pss")
        create_namespace(plane, namespace, RESTRICTED)
        try:
            values = JETSON_VALUES if profile == "jetson" else ChartValues()
            pod = operator_pod(values, namespace)
            # The ServiceAccount must exist for the pod to be admitted at all.
            plane.kubectl(
                "create", "serviceaccount", pod["spec"]["serviceAccountName"], "-n", namespace
            )
            out = dry_run(plane, json.dumps(pod))
            assert "violate PodSecurity" not in out, out
        finally:
            delete_namespaces(plane, namespace)

    def test_restricted_namespace_refuses_a_weaker_pod(self, plane: ControlPlane) -> None:
        namespace = unique("pss")
        create_namespace(plane, namespace, RESTRICTED)
        try:
            pod = operator_pod(ChartValues(), namespace)
            plane.kubectl(
                "create", "serviceaccount", pod["spec"]["serviceAccountName"], "-n", namespace
            )
            weaker = copy.deepcopy(pod)
            container = weaker["spec"]["containers"][0]
            container["securityContext"]["allowPrivilegeEscalation"] = True
            del container["securityContext"]["capabilities"]
            done = plane.kubectl(
                "apply", "--dry-run=server", "-f", "-", input=json.dumps(weaker), check=False
            )
            assert done.returncode != 0
            assert "violates PodSecurity" in done.stderr, done.stderr
            assert "allowPrivilegeEscalation" in done.stderr, done.stderr
        finally:
            delete_namespaces(plane, namespace)


def pods_of(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    out = plane.kubectl("get", "pods", "-n", namespace, "-l", OPERATOR_COMPONENT, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def wait_running(plane: ControlPlane, namespace: str, count: int) -> list[dict[str, Any]]:
    def running() -> bool:
        pods = pods_of(plane, namespace)
        return len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods)

    wait_until(running, what=f"{count} Running operator pods in {namespace}",
               timeout_s=WAIT_S, interval_s=0.5)
    return pods_of(plane, namespace)


def assert_objects_exist(plane: ControlPlane, release: Release) -> None:
    for obj in release.manifest:
        meta = obj["metadata"]
        args = ["get", f"{obj['kind']}.{obj['apiVersion'].split('/')[0]}"
                if "/" in obj["apiVersion"] else obj["kind"], meta["name"], "-o", "name"]
        if "namespace" in meta:
            args += ["-n", meta["namespace"]]
        plane.kubectl(*args)


@pytest.fixture(scope="module")
def cluster_wide_release(plane: ControlPlane) -> Iterator[Release]:
    namespace = unique("es")
    create_namespace(plane, namespace, RESTRICTED)
    name = unique("cw")
    values = ChartValues(set_values={"operator.peering.name": name})
    try:
        yield install(plane, values, release=name, namespace=namespace)
    finally:
        uninstall(plane, name, namespace)
        delete_namespaces(plane, namespace)


class TestInstallClusterWide:
    def test_objects_exist(self, plane: ControlPlane, cluster_wide_release: Release) -> None:
        kinds = sorted(obj["kind"] for obj in cluster_wide_release.manifest)
        assert kinds == sorted([
            "ServiceAccount", "ConfigMap", "ConfigMap", "ClusterRole", "ClusterRole",
            "ClusterRoleBinding", "ClusterRoleBinding", "Service", "Deployment",
            "ClusterKopfPeering",
        ])
        assert_objects_exist(plane, cluster_wide_release)

    def test_notes_tell_how_to_start(
        self, plane: ControlPlane, cluster_wide_release: Release
    ) -> None:
        notes = plane.helm(
            "get", "notes", cluster_wide_release.name, "-n", cluster_wide_release.namespace
        ).stdout
        assert "kind: ElasticModel" in notes
        assert "objective 100 ms" in notes  # the release's default, which the example uses
        assert "kubectl get elasticmodels" in notes
        assert "monitoring.podMonitor.enabled=true" in notes

    def test_operator_pods_run_on_kwok_server_node_under_restricted(
        self, plane: ControlPlane, cluster_wide_release: Release
    ) -> None:
        # The namespace enforces PodSecurity "restricted": Running pods were admitted.
        pods = wait_running(plane, cluster_wide_release.namespace, 2)
        for pod in pods:
            node = pod["spec"]["nodeName"]
            assert node in NODES
            # The Jetsons are tainted for the edge pool; the default profile stays off them.
            assert NODES[node].arch == "amd64"

    def test_service_account_token_has_exactly_the_operator_permissions(
        self, plane: ControlPlane, cluster_wide_release: Release, tmp_path: Path
    ) -> None:
        (sa,) = cluster_wide_release.objects("ServiceAccount")
        kubeconfig = write_service_account_kubeconfig(
            plane, tmp_path / "kubeconfig", cluster_wide_release.namespace, sa["metadata"]["name"]
        )
        anywhere = ("--all-namespaces",)
        allowed = [
            ("list", "elasticmodels.elastiserve.io", *anywhere),
            ("watch", "elasticmodels.elastiserve.io", *anywhere),
            ("patch", "elasticmodels.elastiserve.io", "--subresource=status", "-n", "x"),
            ("create", "deployments.apps", "-n", "x"),
            ("patch", "services", "-n", "x"),
            ("create", "rolebindings.rbac.authorization.k8s.io", "-n", "x"),
            ("create", "events", "-n", "x"),
            ("create", "events.events.k8s.io", "-n", "x"),
            ("list", "pods", *anywhere),
            ("watch", "pods", *anywhere),
            ("get", "nodes"),
            ("get", "nodes.metrics.k8s.io"),
            ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
            ("watch", "namespaces"),
            ("patch", "clusterkopfpeerings.kopf.dev"),
        ]
        refused = [
            ("get", "secrets", "-n", "x"),
            ("get", "pods", "-n", "x"),
            ("create", "elasticmodels.elastiserve.io", "-n", "x"),
            ("delete", "elasticmodels.elastiserve.io", "-n", "x"),
            ("delete", "deployments.apps", "-n", "x"),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("patch", "nodes"),
            ("create", "namespaces"),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "pods/exec", "-n", "x"),
        ]
        wrong = [a for a in allowed if not can_i(plane, kubeconfig, *a)]
        wrong += [("NOT refused", *r) for r in refused if can_i(plane, kubeconfig, *r)]
        assert wrong == []


class TestInstallNamespaced:
    def test_permissions_stop_at_the_listed_namespaces(
        self, plane: ControlPlane, tmp_path: Path
    ) -> None:
        namespace, team, other = unique("es"), unique("team"), unique("other")
        for name in (namespace, team, other):
            create_namespace(plane, name, RESTRICTED)
        release = unique("ns")
        values = ChartValues(
            set_values={"operator.replicas": 1, "operator.peering.name": release},
            set_json={"watchNamespaces": [team]},
        )
        try:
            installed = install(plane, values, release=release, namespace=namespace)
            assert_objects_exist(plane, installed)
            (peering,) = installed.objects("KopfPeering")
            assert peering["metadata"]["namespace"] == team
            wait_running(plane, namespace, 1)
            (sa,) = installed.objects("ServiceAccount")
            kubeconfig = write_service_account_kubeconfig(
                plane, tmp_path / "kubeconfig", namespace, sa["metadata"]["name"]
            )
            assert can_i(plane, kubeconfig, "watch", "elasticmodels.elastiserve.io", "-n", team)
            assert can_i(plane, kubeconfig, "patch", "kopfpeerings.kopf.dev", "-n", team)
            assert can_i(plane, kubeconfig, "create", "deployments.apps", "-n", team)
            assert not can_i(plane, kubeconfig, "watch", "elasticmodels.elastiserve.io", "-n",
                             other)
            assert not can_i(plane, kubeconfig, "create", "deployments.apps", "-n", other)
            assert not can_i(plane, kubeconfig, "list", "elasticmodels.elastiserve.io",
                             "--all-namespaces")
            assert can_i(plane, kubeconfig, "watch", "namespaces")
            assert not can_i(plane, kubeconfig, "patch", "kopfpeerings.kopf.dev", "-n", other)
            assert not can_i(plane, kubeconfig, "patch", "clusterkopfpeerings.kopf.dev")
            assert can_i(plane, kubeconfig, "get", "nodes")
        finally:
            uninstall(plane, release, namespace)
            delete_namespaces(plane, namespace, team, other)


class TestInstallJetson:
    def test_operator_and_serving_pods_land_on_jetson_boards(self, plane: ControlPlane) -> None:
        namespace = unique("es-jetson")
        create_namespace(plane, namespace, RESTRICTED)
        release = unique("jet")
        created_runtime_class = False
        try:
            installed = install(plane, JETSON_VALUES, release=release, namespace=namespace)
            (pod,) = wait_running(plane, namespace, 1)
            assert pod["spec"]["nodeName"] in ARM64

            # Serving pods are the operator's to create; the chart's part is the defaults it
            # hands over. A pod built from them, as the operator would, must land on a board.
            (settings,) = [c for c in installed.objects("ConfigMap")
                           if c["metadata"]["name"].endswith("-operator")]
            data = settings["data"]
            # k3s creates RuntimeClass "nvidia" when it finds the NVIDIA runtime; do as k3s.
            runtime_class = data["ELASTISERVE_SERVING_RUNTIME_CLASS"]
            exists = plane.kubectl("get", "runtimeclass", runtime_class, "--ignore-not-found",
                                   "-o", "name").stdout.strip()
            if not exists:
                plane.kubectl("create", "-f", "-", input=json.dumps({
                    "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                    "metadata": {"name": runtime_class}, "handler": runtime_class,
                }))
                created_runtime_class = True
            serving = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "serving-probe", "namespace": namespace},
                "spec": {
                    "runtimeClassName": runtime_class,
                    "nodeSelector": json.loads(data["ELASTISERVE_SERVING_NODE_SELECTOR"]),
                    "tolerations": json.loads(data["ELASTISERVE_SERVING_TOLERATIONS"]),
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "torchserve",
                        "image": data["ELASTISERVE_SERVING_IMAGE"],
                        "resources": json.loads(data["ELASTISERVE_SERVING_RESOURCES"]),
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            }
            plane.kubectl("create", "-f", "-", input=json.dumps(serving))

            def placed() -> str:
                out = plane.kubectl("get", "pod", "serving-probe", "-n", namespace, "-o", "json")
                body = json.loads(out.stdout)
                if body["status"].get("phase") != "Running":
                    return ""
                return str(body["spec"]["nodeName"])

            wait_until(lambda: bool(placed()), what="serving probe Running",
                       timeout_s=WAIT_S, interval_s=0.5)
            assert placed() in ARM64
        finally:
            uninstall(plane, release, namespace)
            delete_namespaces(plane, namespace)
            if created_runtime_class:
                plane.kubectl("delete", "runtimeclass", "nvidia", "--ignore-not-found")


def test_uninstall_removes_cluster_scoped_objects(plane: ControlPlane) -> None:
    namespace, release = unique("es"), unique("gone")
    create_namespace(plane, namespace)
    try:
        installed = install(plane, ChartValues(set_values={"operator.peering.name": release}),
                            release=release, namespace=namespace)
        cluster_scoped = [o for o in installed.manifest if "namespace" not in o["metadata"]]
        assert {o["kind"] for o in cluster_scoped} == {
            "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"
        }
        uninstall(plane, release, namespace)
        for obj in cluster_scoped:
            kind = obj["kind"].lower() + (".kopf.dev" if obj["kind"] == "ClusterKopfPeering"
                                          else "")
            left = plane.kubectl("get", kind, obj["metadata"]["name"], "--ignore-not-found",
                                 "-o", "name").stdout.strip()
            assert not left, left
        # CRDs stay (helm never deletes crds/): ElasticModels outlive the operator.
        assert plane.kubectl("get", "crd", "elasticmodels.elastiserve.io", "-o", "name").stdout
    finally:
        delete_namespaces(plane, namespace)
