"""In a pod the operator reaches the API server where the kubelet says it is (no DNS needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest

import elastiserve_operator.kube as kube


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
         "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
         "https://[fd00::1]:6443"),
        ({}, None),
        ({"KUBERNETES_SERVICE_HOST": "  "}, None),
    ],
)
def test_in_cluster_server_follows_the_kubelets_variables(
    environ: dict[str, str], server: str | None
) -> None:
    assert kube.in_cluster_server(environ) == server


def test_a_service_account_login_is_aimed_at_that_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    account = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t",
                                  ca_path=str(tmp_path / "ca.crt"))

    def from_account(**_: Any) -> kopf.ConnectionInfo:
        return account

    monkeypatch.setattr(kopf, "login_with_service_account", from_account)
    info = kube.connection_info(kopf.OperatorSettings(),
                                {"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                 "KUBERNETES_SERVICE_PORT": "443"})
    assert info.server == "https://10.96.0.1:443"
    assert (info.token, info.ca_path) == ("t", account.ca_path)
    assert kube.connection_info(kopf.OperatorSettings(), {}).server == account.server
