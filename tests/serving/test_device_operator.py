"""``spec.serving.device`` -> the serving container's ``ELASTISERVE_DEVICE`` -> the handler's
``device`` setting (which the environment overrides)."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.children import Owner, build_deployment
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import SpecError, parse_spec

OWNER = Owner(name="resnet", namespace="ml", uid="u-1")


def _spec(**serving: Any) -> dict[str, Any]:
    return {
        "model": {"levelCount": 3, "source": {"pvc": {"claimName": "models", "path": "r.mar"}}},
        "objective": {"p95Ms": 100},
        "serving": serving,
    }


def _env(spec: dict[str, Any]) -> dict[str, str]:
    pod = build_deployment(OWNER, parse_spec(spec), OperatorSettings())
    container = pod["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.mark.parametrize(("given", "expected"), [({}, "auto"), ({"device": "Auto"}, "auto"),
                                                 ({"device": "CPU"}, "cpu"),
                                                 ({"device": "CUDA"}, "cuda")])
def test_device_reaches_the_serving_container(given: dict[str, str], expected: str) -> None:
    assert _env(_spec(**given))["ELASTISERVE_DEVICE"] == expected


@pytest.mark.parametrize("bad", ["cuda", "GPU", "", 1])
def test_unknown_device_is_a_spec_error_naming_the_field(bad: object) -> None:
    with pytest.raises(SpecError, match="must be Auto, CPU or CUDA") as err:
        parse_spec(_spec(device=bad))
    assert "device" in str(err.value)
