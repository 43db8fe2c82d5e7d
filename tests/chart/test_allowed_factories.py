"""``serving.allowedFactories``: the serving side's allow-list of user model factories.

A bundle built from a user's own ``nn.Module`` names its factory (``package.module:factory``);
the serving pods build it only when their ``ELASTISERVE_ALLOWED_FACTORIES`` lists it
(``elastiserve_store.constructors``). The list is the chart's, carried by the operator (an
operator setting, never a CR field: naming code to run is not a model author's call). Checked
here with the real helm and the operator's own settings parser and Deployment builder.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from elastiserve.testing.helm import ChartValues, HelmError, render, template

FACTORIES = ["mycompany.vision:build_net", "models:tiny"]


def settings_of(objects: Sequence[Mapping[str, Any]]) -> Mapping[str, str]:
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].endswith("-operator")]
    return dict(configmap["data"])


def serving_env(settings: Any) -> dict[str, str]:
    """The torchserve container's env of the Deployment the operator builds for a model."""
    children = importlib.import_module("elastiserve_operator.children")
    spec_module = importlib.import_module("elastiserve_operator.spec")
    model = spec_module.parse_spec(
        {"model": {"levelCount": 2, "source": {"localPath": "/m/m.mar"}}},
        settings.spec_defaults)
    deployment = children.build_deployment(children.Owner("m", "ns", "u"), model, settings)
    (torchserve,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "torchserve"]
    return {e["name"]: e["value"] for e in torchserve["env"] if "value" in e}


def test_the_chart_value_reaches_the_serving_pods_env() -> None:
    """values.yaml -> ConfigMap -> ELASTISERVE_SERVING_ALLOWED_FACTORIES -> the pods'
    ELASTISERVE_ALLOWED_FACTORIES, in the comma-separated form the loader reads."""
    module = importlib.import_module("elastiserve_operator.settings")
    objects = render(ChartValues(set_json={"serving.allowedFactories": FACTORIES}))
    settings = module.settings_from_env(settings_of(objects))
    assert settings.serving_allowed_factories == tuple(FACTORIES)
    env = serving_env(settings)
    assert env["ELASTISERVE_ALLOWED_FACTORIES"] == ",".join(FACTORIES)
    # The loader's own parser reads back exactly the list.
    constructors = importlib.import_module("elastiserve_store.constructors")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(constructors.ALLOW_ENV, env["ELASTISERVE_ALLOWED_FACTORIES"])
        assert constructors.allowed_factories() >= frozenset(FACTORIES)


def test_by_default_the_pods_allow_no_user_factory() -> None:
    module = importlib.import_module("elastiserve_operator.settings")
    settings = module.settings_from_env(settings_of(render(ChartValues())))
    assert settings.serving_allowed_factories == ()
    assert "ELASTISERVE_ALLOWED_FACTORIES" not in serving_env(settings)


@pytest.mark.parametrize(
    "entries",
    [["not a factory"], ["pkg.mod"], ["torchvision:resnet18"], ["pkg:f", "pkg:f"], [3]],
    ids=["spaces", "no-colon", "torchvision-needs-none", "duplicate", "not-a-string"],
)
def test_the_schema_refuses_bad_entries_naming_the_key(entries: list[Any]) -> None:
    with pytest.raises(HelmError) as caught:
        template(ChartValues(set_json={"serving.allowedFactories": entries}))
    message = caught.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    assert "allowedFactories" in message, message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('["os:system x"]', "is not 'package.module:factory'"),
        ('["torchvision:resnet18"]', "allowed without an entry"),
        ('"pkg:f"', "must be a JSON list of non-empty strings"),
        ("[pkg:f]", "not JSON"),
    ],
)
def test_an_operator_without_the_chart_refuses_a_bad_list_naming_the_variable(
    text: str, says: str
) -> None:
    module = importlib.import_module("elastiserve_operator.settings")
    with pytest.raises(ValueError) as caught:
        module.settings_from_env({"ELASTISERVE_SERVING_ALLOWED_FACTORIES": text})
    assert "ELASTISERVE_SERVING_ALLOWED_FACTORIES" in str(caught.value)
    assert says in str(caught.value)
