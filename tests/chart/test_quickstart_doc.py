"""``docs/quickstart.md`` cannot rot: what it shows is checked against the real tools.

- Every YAML block is accepted by the real API server (``--dry-run=server``, in a namespace that
  enforces Pod Security ``restricted``), and the example ``ElasticModel`` is created for real.
- The ``kubectl get em`` header the page prints is the one kubectl prints.
- Every ``helm install`` line renders with the real helm (the schema refuses unknown keys),
  and the Deployment the page waits for exists under that name.
- Every ``.venv/bin/elastiserve`` line parses with the CLI's own parser.
- The knob table names CR fields that exist in the CRD and chart values that exist in
  ``values.yaml``, with the default the chart (or, for CR-only fields, the CRD) holds.
- The HPA the page shows targets the example ``ElasticModel``, and that model's ``scale``
  subresource (what an HPA reads and writes) answers with its count.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.helm import (
    CHART_DIR,
    KUBE_VERSION_ARG,
    REPO_ROOT,
    ensure_crds,
    find,
    parse_manifests,
    run_helm,
)
from elastiserve.testing.processes import wait_until

DOC = REPO_ROOT / "docs" / "quickstart.md"
CRD = REPO_ROOT / "operator" / "elastiserve_operator" / "crd" / "elasticmodels.yaml"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


# ----------------------------------------------------------------------- reading the page


def blocks(lang: str) -> list[str]:
    """The bodies of the page's fenced blocks in one language, in page order."""
    text = DOC.read_text(encoding="utf-8")
    return [body for found, body in FENCE.findall(text) if found == lang]


def yaml_documents() -> list[dict[str, Any]]:
    return [doc for body in blocks("yaml") for doc in yaml.safe_load_all(body) if doc]


def shell_commands() -> list[list[str]]:
    """Each command of the ``sh`` blocks as argv (continuations joined, comments dropped)."""
    commands = []
    for body in blocks("sh"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[-1] == "&":
                words.pop()  # started in the background
            if words:
                commands.append(words)
    return commands


def knob_rows() -> list[list[str]]:
    """The knob table's rows as cells (knob, CR field, chart value, default, meaning)."""
    section = DOC.read_text(encoding="utf-8").split("## 5. Policy knobs", 1)[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]
    assert rows[0][:4] == ["knob", "CR field", "chart value", "default"]
    return rows[1:]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ----------------------------------------------------------------------- the page's shape


def test_page_has_the_promised_examples() -> None:
    kinds = [doc["kind"] for doc in yaml_documents()]
    assert kinds.count("ElasticModel") == 1
    assert {"PersistentVolumeClaim", "Pod", "HorizontalPodAutoscaler"} <= set(kinds)
    programs = {words[0] for words in shell_commands()}
    assert {"helm", "kubectl", "curl", ".venv/bin/elastiserve", "docker"} <= programs
    assert len(knob_rows()) >= 20


def test_the_hpa_targets_the_example_model_through_its_scale_subresource() -> None:
    (model,) = [doc for doc in yaml_documents() if doc["kind"] == "ElasticModel"]
    (hpa,) = [doc for doc in yaml_documents() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": model["apiVersion"],
                                             "kind": "ElasticModel",
                                             "name": model["metadata"]["name"]}
    scale = yaml.safe_load(CRD.read_text(encoding="utf-8"))["spec"]["versions"][0][
        "subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["labelSelectorPath"] == ".status.selector"


# ----------------------------------------------------------------------- the CLI lines


@pytest.mark.parametrize(
    "argv",
    [words[1:] for words in shell_commands() if words[0] == ".venv/bin/elastiserve"],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_elastiserve_lines_parse(argv: list[str]) -> None:
    from elastiserve.cli import parser_for

    args = parser_for(argv).parse_args(argv)
    assert callable(getattr(args, "func", None))


BODY_FLAGS = ("-d", "--data", "--data-binary", "--data-raw", "-T", "--upload-file")


def test_curl_lines_send_the_token_and_a_content_type() -> None:
    """The gateway refuses a request without the key (401), and TorchServe reads a body sent
    as curl's default form content type as an empty form (the handler answers 400 empty body):
    every curl line sends the key, every one with a body names its content type."""
    curls = [words for words in shell_commands() if words[0] == "curl"]
    assert curls
    with_body = [words for words in curls if any(w in BODY_FLAGS for w in words)]
    assert len(with_body) >= 3  # two TorchServe-API requests and the v2 infer
    for words in curls:
        assert any(w.startswith("Authorization: Bearer ") for w in words), words
    for words in with_body:
        assert any(w.lower().startswith("content-type:") for w in words), words


# ----------------------------------------------------------------------- helm


def helm_install_lines() -> list[list[str]]:
    return [words for words in shell_commands() if words[:2] == ["helm", "install"]]


@pytest.mark.parametrize("words", helm_install_lines(), ids=lambda w: f"{len(w)} words")
def test_helm_install_lines_render(words: list[str]) -> None:
    """``helm install X`` becomes ``helm template X``: same chart, values and flags."""
    args = ["template"]
    for word in words[2:]:
        if word == "--create-namespace":
            continue  # an install-time action, nothing to render
        path = REPO_ROOT / word
        args.append(str(path) if word.startswith("charts/") and path.exists() else word)
    objects = parse_manifests(run_helm(*args, KUBE_VERSION_ARG).stdout)
    deployments = {d["metadata"]["name"] for d in find(objects, "Deployment")}
    waited = [w for line in shell_commands() for w in line if w.startswith("deployment/")]
    assert waited and {w.split("/", 1)[1] for w in waited} <= deployments
    sets = dict(w.split("=", 1) for i, w in enumerate(words) if words[i - 1] == "--set")
    images = {c["image"] for d in find(objects, "Deployment")
              for c in d["spec"]["template"]["spec"]["containers"]}
    if "operator.image.repository" in sets:
        assert f"{sets['operator.image.repository']}:{sets['operator.image.tag']}" in images


def test_jetson_profile_line_uses_the_profile_file() -> None:
    files = [w for words in helm_install_lines() for w in words if w.endswith(".yaml")]
    assert "charts/elastiserve/values-jetson-k3s.yaml" in files
    assert (CHART_DIR / "values-jetson-k3s.yaml").is_file()


# ----------------------------------------------------------------------- the knob table


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def schema_at(dotted: str) -> dict[str, Any]:
    node = crd_schema()
    for key in dotted.split("."):
        assert key in node.get("properties", {}), f"CRD has no field {dotted}"
        node = node["properties"][key]
    return node


def value_at(dotted: str) -> Any:
    node: Any = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"values.yaml has no {dotted}"
        node = node[key]
    return node


def cr_fields(cell: str) -> list[str]:
    """`spec.a.b` / `c` -> spec.a.b, spec.a.c (later names are siblings of the first)."""
    names = ticked(cell)
    parent = names[0].rsplit(".", 1)[0]
    return [names[0], *(f"{parent}.{name}" for name in names[1:])]


@pytest.mark.parametrize("row", knob_rows(), ids=lambda row: row[0])
def test_knob_row_matches_crd_and_values(row: list[str]) -> None:
    _knob, cr_cell, chart_cell, default_cell = row[:4]
    fields = cr_fields(cr_cell)
    for field in fields:
        assert field.startswith("spec.")
        schema_at(field)
    chart = ticked(chart_cell)
    for name in chart:
        value_at(name)
    literal = ticked(default_cell)
    if len(fields) == 1 and len(literal) == 1 and default_cell == f"`{literal[0]}`":
        stated = yaml.safe_load(literal[0])
        if "default" in schema_at(fields[0]):
            assert schema_at(fields[0])["default"] == stated
        if chart:
            assert value_at(chart[0]) == stated


def test_table_covers_every_policy_field() -> None:
    documented = {field for row in knob_rows() for field in cr_fields(row[1])}
    policy = {f"spec.policy.{name}" for name in schema_at("spec.policy")["properties"]}
    pressure = {f"spec.nodePressure.{n}" for n in schema_at("spec.nodePressure")["properties"]}
    assert policy | pressure <= documented


# ----------------------------------------------------------------------- the API server


@pytest.fixture
def restricted_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace enforcing Pod Security ``restricted``, with the CRDs installed."""
    ensure_crds(control_plane)
    name = f"qs-{uuid.uuid4().hex[:8]}"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    control_plane.kubectl("create", "-f", "-", input=json.dumps(manifest))
    wait_until(lambda: bool(control_plane.kubectl(
        "get", "serviceaccount", "default", "-n", name, "--ignore-not-found", "-o", "name"
    ).stdout.strip()), what=f"ServiceAccount {name}/default", timeout_s=30.0)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false")


def test_yaml_blocks_are_accepted_and_the_example_is_created(
    control_plane: ControlPlane, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    stream = yaml.safe_dump_all(yaml_documents())
    dry = control_plane.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-",
                                input=stream, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "Warning" not in dry.stderr, dry.stderr  # e.g. a Pod Security warning

    (model,) = [doc for doc in yaml_documents() if doc["kind"] == "ElasticModel"]
    control_plane.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(model))
    stored = json.loads(control_plane.kubectl(
        "get", "em", model["metadata"]["name"], "-n", ns, "-o", "json").stdout)
    assert stored["spec"]["objective"]["p95Ms"] == model["spec"]["objective"]["p95Ms"]
    # The CRD fills its own defaults (levels.minLevel, policy.loops); the rest of the policy's
    # come from the chart (the operator), not here.
    assert stored["spec"]["levels"]["minLevel"] == 0
    assert stored["spec"]["policy"] == {"loops": "Both", **model["spec"]["policy"]}

    # What an HPA aimed at the model reads (and writes) through its scale subresource.
    scale = json.loads(control_plane.kubectl(
        "get", "--raw", f"/apis/elastiserve.io/v1alpha1/namespaces/{ns}/elasticmodels/"
                        f"{model['metadata']['name']}/scale").stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == model["spec"]["replicas"]

    printed = control_plane.kubectl("get", "em", "-n", ns).stdout.splitlines()[0]
    (documented,) = [body.strip() for body in blocks("text") if body.startswith("NAME")]
    assert re.split(r"\s{2,}", printed.strip()) == re.split(r"\s{2,}", documented)


def test_readme_points_here() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/quickstart.md" in readme
    assert Path(DOC).is_file()
