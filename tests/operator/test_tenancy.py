"""The allow-lists, as tables: what a tenant's spec may ask for (``tenancy.check``), and the
settings that bound it, checked at start (``settings.tenancy_from_env``)."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.children import RUN_AS, Owner, build_deployment
from elastiserve_operator.settings import (
    OperatorSettings,
    network_from_env,
    settings_from_env,
    tenancy_from_env,
)
from elastiserve_operator.spec import ServingDefaults, parse_spec
from elastiserve_operator.tenancy import (
    QueryMode,
    TenancyPolicy,
    check,
    image_allowed,
    normalize_image,
)

DEFAULT_IMAGE = "ghcr.io/elastiserve/serving:0.1.0"
HOST = TenancyPolicy(host_path=True, host_path_prefixes=("/srv/models/$namespace", "/data/ml"))


def spec(source: dict[str, Any] | None = None, **serving: Any) -> Any:
    raw: dict[str, Any] = {
        "model": {"levelCount": 2,
                  "source": source or {"pvc": {"claimName": "m", "path": "m.mar"}}},
        "objective": {"p95Ms": 100},
    }
    if serving:
        raw["serving"] = serving
    return parse_spec(raw)


def problems(s: Any, policy: TenancyPolicy | None = None, namespace: str = "team-a",
             defaults: ServingDefaults | None = None) -> list[str]:
    return [str(v) for v in check(s, namespace=namespace, name="m", model="m",
                                  policy=policy or TenancyPolicy(), default_image=DEFAULT_IMAGE,
                                  defaults=defaults or ServingDefaults())]


# ------------------------------------------------------------------------------ host paths

HOST_PATHS = [
    # (policy, path, allowed)
    (TenancyPolicy(), "/srv/models/team-a/m.mar", False),  # off by default
    (HOST, "/srv/models/team-a/m.mar", True),
    (HOST, "/srv/models/team-a/sub/m.mar", True),
    (HOST, "/data/ml/m.mar", True),
    (HOST, "/srv/models/team-b/m.mar", False),  # another tenant's tree
    (HOST, "/srv/models/team-a/../team-b/m.mar", False),  # '..' climbs out
    (HOST, "/srv/models/team-a/./m.mar", False),
    (HOST, "/srv/models/team-a//m.mar", False),
    (HOST, "/srv/models/team-ab/m.mar", False),  # a prefix of the name is not the tree
    (HOST, "/x.mar", False),  # would mount /
    (HOST, "/etc/shadow", False),
    (HOST, "/var/lib/kubelet/pods/x/volumes/secret/token", False),
    (HOST, "/proc/1/environ", False),
    (HOST, "/srv/models/team-a", False),  # the tree itself: its parent /srv/models is not in it
    (HOST, "/data/ml/m.mar\n", False),  # a control character
    (HOST, "/data/ml/", False),  # no file
]


@pytest.mark.parametrize(("policy", "path", "allowed"), HOST_PATHS)
def test_host_paths(policy: TenancyPolicy, path: str, allowed: bool) -> None:
    found = problems(spec({"localPath": path}), policy)
    assert (found == []) is allowed, found
    if not allowed:
        assert all(p.startswith("spec.model.source.localPath") for p in found)


@pytest.mark.parametrize("prefix", ["/", "/etc", "/etc/elastiserve", "/var/lib/kubelet",
                                    "/var/lib", "/srv", "/tmp", "/proc", "/usr/share/models",
                                    "/root/models", "/var/run", "/run/x", "relative/dir",
                                    "/srv/../etc", "/srv/models/", "/srv/$name"])
def test_an_allow_listed_system_directory_stops_the_operator(prefix: str) -> None:
    with pytest.raises(ValueError, match="ELASTISERVE_ALLOWED_HOST_PATHS"):
        tenancy_from_env({"ELASTISERVE_ALLOWED_HOST_PATHS": f'["{prefix}"]'})


def test_a_plain_tree_per_tenant_is_accepted() -> None:
    policy = tenancy_from_env({"ELASTISERVE_HOST_PATH_ENABLED": "true",
                               "ELASTISERVE_ALLOWED_HOST_PATHS": '["/srv/models/$namespace"]'})
    assert policy.host_path and policy.host_path_prefixes == ("/srv/models/$namespace",)


def test_the_pod_mounts_the_one_file_read_only() -> None:
    deployment = build_deployment(Owner("m", "ns", "u"), spec({"localPath": "/data/ml/m.mar"}),
                                  OperatorSettings())
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert volume["hostPath"] == {"path": "/data/ml/m.mar", "type": "File"}
    (serving,) = [c for c in pod["containers"] if c["name"] == "torchserve"]
    (mount,) = [m for m in serving["volumeMounts"] if m["name"] == "model"]
    assert mount == {"name": "model", "mountPath": "/models/m.mar", "readOnly": True}


def test_pods_run_as_a_dedicated_non_login_uid() -> None:
    deployment = build_deployment(Owner("m", "ns", "u"), spec(), OperatorSettings())
    pod = deployment["spec"]["template"]["spec"]
    assert RUN_AS == 65532 and RUN_AS != 1000  # not the first login user of a distribution
    context = pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (
        65532, 65532, True)
    for container in [*pod["containers"], *pod["initContainers"]]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert "runAsUser" not in security  # nothing overrides the pod's uid


# ---------------------------------------------------------------------------------- images

IMAGES = [
    # (entries, image, allowed)
    ((), DEFAULT_IMAGE, True),
    ((), "ghcr.io/elastiserve/serving:0.2.0", True),  # the default's repository, any tag
    ((), "ghcr.io/elastiserve/serving@sha256:" + "a" * 64, True),
    ((), "GHCR.IO/elastiserve/serving:1", True),  # registries are case-insensitive
    ((), "ghcr.io/elastiserve/serving-evil:1", False),  # a longer name is another repo
    ((), "ghcr.io/elastiserve/serving/sub:1", False),
    ((), "ghcr.io.evil.example/elastiserve/serving:1", False),
    ((), "evil.example/ghcr.io/elastiserve/serving:1", False),
    ((), "docker.io/library/busybox:1", False),
    ((), "busybox", False),
    ((), "ghcr.io/elastiserve/serving:0.1.0 ", False),  # whitespace
    ((), "ghcr.io/elastiserve/Serving:1", False),  # not a valid repository
    (("docker.io/library/busybox",), "busybox:1.36", True),  # Hub short names normalised
    (("busybox",), "index.docker.io/library/busybox:1", True),
    (("ghcr.io/acme/",), "ghcr.io/acme/team/app:3", True),
    (("ghcr.io/acme/",), "ghcr.io/acmeevil/app:3", False),
    (("ghcr.io/",), "ghcr.io/anyone/app:3", True),
    (("ghcr.io/",), "ghcr.io.evil/app:3", False),
    (("localhost:5000/ml/",), "localhost:5000/ml/a:1", True),
    (("localhost:5000/ml/",), "localhost:5001/ml/a:1", False),
]


@pytest.mark.parametrize(("entries", "image", "allowed"), IMAGES)
def test_images(entries: tuple[str, ...], image: str, allowed: bool) -> None:
    found = problems(spec(image=image), TenancyPolicy(images=entries))
    assert (found == []) is allowed, found


def test_normalisation_matches_the_runtimes() -> None:
    assert normalize_image("nginx") == "docker.io/library/nginx"
    assert normalize_image("team/app:1") == "docker.io/team/app"
    assert normalize_image("localhost/elastiserve/serving:abc") == "localhost/elastiserve/serving"
    assert not image_allowed("localhost/x", ["docker.io/localhost/x"])


def test_the_realnode_quick_start_image_is_allowed_by_the_chart_defaults() -> None:
    """The quick start points serving.image at a local build: still allowed, no list set."""
    settings = settings_from_env({"ELASTISERVE_SERVING_IMAGE":
                                  "localhost/elastiserve/serving:0123456789ab",
                                  "ELASTISERVE_ALLOWED_IMAGES": "[]"})
    s = spec(image="localhost/elastiserve/serving:0123456789ab")
    assert check(s, namespace="ml", name="m", model="m", policy=settings.tenancy,
                 default_image=settings.serving_image, defaults=settings.defaults.serving) == ()


# ---------------------------------------------------------------------- placement

EDGE = {"key": "elastiserve.io/pool", "operator": "Equal", "value": "edge",
        "effect": "NoSchedule"}
PLACEMENT_POLICY = TenancyPolicy(
    tolerations=(EDGE, {"key": "gpu", "operator": "Exists"}),
    node_selectors={"kubernetes.io/arch": ("arm64",), "zone": ("*",)},
    runtime_classes=("nvidia",),
)
PLACEMENT = [
    ({"tolerations": [EDGE]}, True),
    ({"tolerations": [{**EDGE, "tolerationSeconds": 30}]}, True),
    ({"tolerations": [{**EDGE, "value": "core"}]}, False),
    ({"tolerations": [{**EDGE, "operator": "Exists", "value": ""}]}, False),  # any value
    ({"tolerations": [{**EDGE, "effect": "NoExecute"}]}, False),
    ({"tolerations": [{k: v for k, v in EDGE.items() if k != "effect"}]}, False),  # all effects
    ({"tolerations": [{"operator": "Exists"}]}, False),  # every taint
    ({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}, True),
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane",
                       "operator": "Exists"}]}, False),
    ({"nodeSelector": {"kubernetes.io/arch": "arm64"}}, True),
    ({"nodeSelector": {"kubernetes.io/arch": "amd64"}}, False),
    ({"nodeSelector": {"zone": "anything"}}, True),
    ({"nodeSelector": {"kubernetes.io/hostname": "control-plane-1"}}, False),
    ({"runtimeClassName": "nvidia"}, True),
    ({"runtimeClassName": "runc-privileged"}, False),
]


@pytest.mark.parametrize(("serving", "allowed"), PLACEMENT)
def test_placement(serving: dict[str, Any], allowed: bool) -> None:
    found = problems(spec(**serving), PLACEMENT_POLICY)
    assert (found == []) is allowed, found


def test_the_operators_own_defaults_are_always_allowed() -> None:
    defaults = ServingDefaults(tolerations=(EDGE,), node_selector={"pool": "edge"},
                               runtime_class_name="nvidia")
    repeated = spec(tolerations=[EDGE], nodeSelector={"pool": "edge"}, runtimeClassName="nvidia")
    assert problems(repeated, TenancyPolicy(), defaults=defaults) == []
    assert problems(spec(nodeSelector={"pool": "core"}), TenancyPolicy(), defaults=defaults)


def test_every_violation_is_reported_at_once() -> None:
    found = problems(spec({"localPath": "/x.mar"}, image="evil/x:1", runtimeClassName="x"))
    assert [p.split(":")[0] for p in found] == [
        "spec.model.source.localPath", "spec.serving.image", "spec.serving.runtimeClassName"]


# -------------------------------------------------------------------------------- queries

def test_model_queries_follow_the_mode() -> None:
    raw = {"model": {"levelCount": 2, "source": {"pvc": {"claimName": "m", "path": "m.mar"}}},
           "objective": {"p95Ms": 100, "latencyQuery": "max(x)"}}
    s = parse_spec(raw)
    assert problems(s, TenancyPolicy(queries=QueryMode.CONFINED)) == []
    assert problems(s, TenancyPolicy(queries=QueryMode.AS_WRITTEN)) == []
    (refused,) = problems(s, TenancyPolicy(queries=QueryMode.DISABLED))
    assert refused.startswith("spec.objective.latencyQuery: queries from an ElasticModel are off")


# ------------------------------------------------------------------------------- settings

@pytest.mark.parametrize(("env", "message"), [
    ({"ELASTISERVE_ALLOWED_IMAGES": '["a b"]'}, "ELASTISERVE_ALLOWED_IMAGES"),
    ({"ELASTISERVE_ALLOWED_IMAGES": '"ghcr.io/x"'}, "JSON list"),
    ({"ELASTISERVE_ALLOWED_TOLERATIONS": '[{"operator": "Exists"}]'}, "needs a key"),
    ({"ELASTISERVE_ALLOWED_TOLERATIONS": '[{"key": "a", "oops": "b"}]'}, "unknown field"),
    ({"ELASTISERVE_ALLOWED_NODE_SELECTORS": '{"a": "b"}'}, "list of values"),
    ({"ELASTISERVE_ALLOWED_RUNTIME_CLASSES": '["Bad_Name"]'}, "not a name"),
    ({"ELASTISERVE_MODEL_QUERIES": "Sometimes"}, "Confined, Disabled, AsWritten"),
    ({"ELASTISERVE_PROMETHEUS_NAMESPACE_LABEL": "name-space"}, "not a label name"),
    ({"ELASTISERVE_MODEL_QUERY_MAX_RANGE_SECONDS": "5"}, "60..86400"),
    ({"ELASTISERVE_HOST_PATH_ENABLED": "maybe"}, "not a boolean"),
    ({"ELASTISERVE_PROMETHEUS_MAX_RESPONSE_BYTES": "10"}, "1024"),
    ({"ELASTISERVE_PROMETHEUS_MAX_SERIES": "0"}, "1..1000000"),
    ({"ELASTISERVE_INFERENCE_NAMESPACES": '["Bad"]'}, "namespace name"),
    ({"ELASTISERVE_METRICS_POD_SELECTOR": '["x"]'}, "matchLabels"),
])
def test_a_bad_setting_stops_the_operator_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_env(env)


def test_the_defaults_are_the_safe_ones() -> None:
    settings = settings_from_env({})
    assert settings.tenancy == TenancyPolicy()
    assert settings.tenancy.host_path is False and settings.tenancy.queries is QueryMode.CONFINED
    assert (settings.prometheus_max_bytes, settings.prometheus_max_series) == (1 << 20, 1000)
    assert network_from_env({}).enabled is True
