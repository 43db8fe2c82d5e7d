"""The serving container learns its CPU grant and worker count (``runtime.cpu_threads``):
the CPU request through the downward API, only where the spec gives one."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.children import Owner, build_deployment
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import parse_spec
from elastiserve_serve.runtime.cpu_threads import CPU_REQUEST_ENV, WORKERS_ENV

OWNER = Owner(name="resnet", namespace="ml", uid="u-1")


def _env(**serving: Any) -> dict[str, dict[str, Any]]:
    spec = {
        "model": {"levelCount": 3, "source": {"pvc": {"claimName": "models", "path": "r.mar"}}},
        "objective": {"p95Ms": 100},
        "serving": serving,
    }
    pod = build_deployment(OWNER, parse_spec(spec), OperatorSettings())
    container = pod["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "torchserve"
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("resources", [
    {"requests": {"cpu": "500m", "memory": "1Gi"}},
    {"limits": {"cpu": "2"}},  # Kubernetes copies a limit into a missing request
])
def test_a_cpu_grant_reaches_the_container_through_the_downward_api(
    resources: dict[str, dict[str, str]],
) -> None:
    env = _env(resources=resources, workers=2)
    assert env[CPU_REQUEST_ENV]["valueFrom"] == {"resourceFieldRef": {
        "containerName": "torchserve", "resource": "requests.cpu", "divisor": "1m"}}
    assert env[WORKERS_ENV]["value"] == "2"


@pytest.mark.parametrize("resources", [{}, {"requests": {"memory": "1Gi"}}])
def test_without_a_cpu_grant_there_is_nothing_to_size_against(
    resources: dict[str, dict[str, str]],
) -> None:
    env = _env(resources=resources)
    assert CPU_REQUEST_ENV not in env
    assert env[WORKERS_ENV]["value"] == "1"
