"""RBAC is really enforced, so the chart's roles can be tested for least privilege later.

The harness's own identity is in system:masters; these checks use a ServiceAccount token
issued by the API server (TokenRequest), exactly what an in-cluster operator would hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.processes import wait_until

pytestmark = pytest.mark.controlplane


def test_service_account_token_is_denied_until_a_role_allows_it(
    control_plane: ControlPlane, kube_client: Any, kube_namespace: str
) -> None:
    account = f"system:serviceaccount:{kube_namespace}:default"
    token = control_plane.kubectl(
        "create", "token", "default", "-n", kube_namespace, "--duration=10m"
    ).stdout.strip()
    as_account = ("--token", token, "--kubeconfig", "/dev/null", "--server", control_plane.api_url)
    ca = ("--certificate-authority", str(control_plane.layout.pki.ca_cert))

    denied = control_plane.kubectl(
        "get", "pods", "-n", kube_namespace, *as_account, *ca, check=False
    )
    assert denied.returncode != 0
    assert f'User "{account}" cannot list resource "pods"' in denied.stderr

    rbac = k8s.RbacAuthorizationV1Api(kube_client)
    rbac.create_namespaced_role(
        kube_namespace,
        k8s.V1Role(
            metadata=k8s.V1ObjectMeta(name="pod-reader"),
            rules=[k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="pod-reader"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[
                k8s.RbacV1Subject(kind="ServiceAccount", name="default", namespace=kube_namespace)
            ],
        ),
    )

    def allowed() -> bool:
        done = control_plane.kubectl(
            "get", "pods", "-n", kube_namespace, *as_account, *ca, check=False
        )
        return done.returncode == 0

    # The authorizer reads roles from an informer cache: allow it a moment to see the binding.
    wait_until(allowed, what="the RoleBinding to take effect", timeout_s=15, interval_s=0.2)
