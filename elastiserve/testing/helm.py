"""The elastiserve Helm chart, rendered and installed with the real ``helm`` binary.

Tests of the chart and tests that run the operator "as the chart deploys it" share these
helpers: render the chart to objects, install it into the local control plane, and log in as
the chart's ServiceAccount (a token from the TokenRequest API in a kubeconfig of its own), so
that an operator process started by a test holds exactly the permissions the chart grants.

Rendering needs only the ``helm`` binary (found like every other test-bed binary, through
``ELASTISERVE_ASSETS``); installing needs a running :class:`ControlPlane`. Helm's cache,
config and data directories are kept out of the user's home in both cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elastiserve.testing.assets import KUBE_VERSION, Assets
from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.errors import ControlPlaneError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "elastiserve"
JETSON_VALUES = CHART_DIR / "values-jetson-k3s.yaml"
OPERATOR_COMPONENT = "app.kubernetes.io/component=operator"
# Without a cluster helm assumes the Kubernetes version it was built for; a helm built with
# plain `go build` (as hack/build-k8s-assets.sh does) claims v1.20, older than the chart's
# kubeVersion floor. Renders and lints say which version they target instead.
KUBE_VERSION_ARG = f"--kube-version={KUBE_VERSION}"


class HelmError(ControlPlaneError):
    """helm exited non-zero; the message quotes its stderr (a schema error says which key)."""

    def __init__(self, args: Sequence[str], code: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed with code {code}: {stderr.strip()}")
        self.code = code
        self.stderr = stderr


@dataclass(frozen=True)
class ChartValues:
    """What a render or install is given: values files, then ``--set`` pairs (helm's order)."""

    files: tuple[Path, ...] = ()
    set_values: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    set_json: Mapping[str, Any] = field(default_factory=dict)

    def args(self) -> list[str]:
        out: list[str] = []
        for path in self.files:
            out += ["--values", str(path)]
        for key, value in self.set_values.items():
            if isinstance(value, str):
                out += ["--set-string", f"{key}={value}"]
            else:
                # --set would turn 1.05 into a string (helm parses only integers there).
                out += ["--set-json", f"{key}={_json(value)}"]
        for key, value in self.set_json.items():
            # --set-json (helm >= 3.10) keeps lists and maps intact, e.g. watchNamespaces.
            out += ["--set-json", f"{key}={_json(value)}"]
        return out


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def run_helm(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run helm without a cluster (lint, template, show); raise ``HelmError`` on failure."""
    binary = Assets.locate().binary("helm")
    with tempfile.TemporaryDirectory(prefix="elastiserve-helm-") as home:
        full_env = dict(os.environ if env is None else env)
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            full_env[var] = str(Path(home) / sub)
        done = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout_s,
            check=False,
        )
    if done.returncode != 0:
        raise HelmError(args, done.returncode, done.stderr)
    return done


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def template(
    values: ChartValues | None = None,
    *,
    release: str = "es",
    namespace: str = "elastiserve-system",
    chart: Path = CHART_DIR,
    include_crds: bool = False,
    extra: Sequence[str] = (),
) -> str:
    """``helm template`` of the chart: the YAML stream, as helm prints it."""
    args = ["template", release, str(chart), "--namespace", namespace, KUBE_VERSION_ARG]
    if include_crds:
        args.append("--include-crds")
    args += (values or ChartValues()).args()
    args += list(extra)
    return run_helm(*args).stdout


def render(
    values: ChartValues | None = None,
    *,
    release: str = "es",
    namespace: str = "elastiserve-system",
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """``helm template`` parsed into objects."""
    return parse_manifests(
        template(values, release=release, namespace=namespace, include_crds=include_crds)
    )


def find(objects: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """The objects of one kind, in render order."""
    return [obj for obj in objects if obj.get("kind") == kind]


def crd_documents(chart: Path = CHART_DIR) -> list[dict[str, Any]]:
    """Every CRD the chart ships in ``crds/`` (helm installs them before the templates)."""
    docs: list[dict[str, Any]] = []
    for path in sorted((chart / "crds").glob("*.yaml")):
        docs += parse_manifests(path.read_text(encoding="utf-8"))
    return docs


def ensure_crds(plane: ControlPlane, chart: Path = CHART_DIR) -> None:
    """Create the chart's CRDs that the cluster lacks and wait until all are Established.

    Existing CRDs are left alone: other tests of the session may have created them, and
    helm itself never upgrades what is in ``crds/`` either.
    """
    names: list[str] = []
    for doc in crd_documents(chart):
        name = doc["metadata"]["name"]
        names.append(f"crd/{name}")
        present = plane.kubectl("get", f"crd/{name}", "--ignore-not-found", "-o", "name")
        if not present.stdout.strip():
            plane.kubectl("create", "-f", "-", input=yaml.safe_dump(doc))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", *names)


@dataclass(frozen=True)
class Release:
    """An installed release; ``manifest`` is what helm says it applied."""

    name: str
    namespace: str
    manifest: tuple[dict[str, Any], ...]

    def objects(self, kind: str) -> list[Mapping[str, Any]]:
        return find(self.manifest, kind)


def install(
    plane: ControlPlane,
    values: ChartValues | None = None,
    *,
    release: str,
    namespace: str,
    chart: Path = CHART_DIR,
    create_namespace: bool = False,
    timeout_s: float = 120.0,
) -> Release:
    """``helm install`` into the control plane (CRDs included) and return what it applied."""
    args = ["install", release, str(chart), "--namespace", namespace]
    if create_namespace:
        args.append("--create-namespace")
    args += (values or ChartValues()).args()
    done = plane.helm(*args, check=False, timeout_s=timeout_s)
    if done.returncode != 0:
        raise HelmError(args, done.returncode, done.stderr)
    shown = plane.helm("get", "manifest", release, "--namespace", namespace)
    return Release(release, namespace, tuple(parse_manifests(shown.stdout)))


def uninstall(plane: ControlPlane, release: str, namespace: str) -> None:
    """``helm uninstall``, tolerating a release that is already gone."""
    done = plane.helm("uninstall", release, "--namespace", namespace, "--wait", check=False)
    if done.returncode != 0 and "not found" not in done.stderr:
        raise HelmError(["uninstall", release], done.returncode, done.stderr)


def service_account_name(release: Release) -> str:
    """The operator's ServiceAccount, as the release's Deployment names it."""
    for deployment in release.objects("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        return str(spec["serviceAccountName"])
    raise ControlPlaneError(f"release {release.name} has no Deployment")


def mint_token(
    plane: ControlPlane, namespace: str, service_account: str, *, duration_s: int = 3600
) -> str:
    """A bound token for a ServiceAccount from the TokenRequest API (``kubectl create token``)."""
    done = plane.kubectl(
        "create",
        "token",
        service_account,
        "--namespace",
        namespace,
        f"--duration={duration_s}s",
    )
    token = done.stdout.strip()
    if not token:
        raise ControlPlaneError(f"empty token for {namespace}/{service_account}")
    return token


def write_service_account_kubeconfig(
    plane: ControlPlane,
    path: Path,
    namespace: str,
    service_account: str,
    *,
    duration_s: int = 3600,
) -> Path:
    """Write a kubeconfig that authenticates as ``namespace/service_account`` and return it.

    The token expires after ``duration_s``; a test that runs longer mints a new one. The
    context's namespace is the ServiceAccount's, as in a pod.
    """
    token = mint_token(plane, namespace, service_account, duration_s=duration_s)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "elastiserve-test",
                "cluster": {
                    "server": plane.api_url,
                    "certificate-authority": str(plane.layout.pki.ca_cert),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": user,
                "context": {"cluster": "elastiserve-test", "user": user, "namespace": namespace},
            }
        ],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


def can_i(plane: ControlPlane, kubeconfig: Path, verb: str, resource: str, *extra: str) -> bool:
    """Whether the identity of ``kubeconfig`` may do ``verb`` on ``resource``.

    Arguments read like ``kubectl auth can-i``'s (``nodes.metrics.k8s.io``, ``pods/exec``,
    ``-n NS``, ``--all-namespaces``, ``--subresource=status``), but the question goes to the
    API server as a SelfSubjectAccessReview posted with that kubeconfig, so it also works for
    resources the cluster does not serve (``kubectl auth can-i`` resolves names through
    discovery and answers "no" for an API group that is absent, like metrics.k8s.io here).
    """
    name, _, subresource = resource.partition("/")
    plural, _, group = name.partition(".")
    namespace = ""
    rest = list(extra)
    while rest:
        flag = rest.pop(0)
        if flag in ("-n", "--namespace"):
            namespace = rest.pop(0)
        elif flag.startswith("--namespace="):
            namespace = flag.split("=", 1)[1]
        elif flag == "--all-namespaces":
            namespace = ""
        elif flag.startswith("--subresource="):
            subresource = flag.split("=", 1)[1]
        else:
            raise ValueError(f"can_i: unsupported argument {flag!r}")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": plural,
                "subresource": subresource,
                "namespace": namespace,
            }
        },
    }
    binary = plane.assets.binary("kubectl")
    done = subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", "create", "-f", "-", "-o", "json"],
        input=json.dumps(review),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise ControlPlaneError(f"access review {verb} {resource}: {done.stderr.strip()}")
    status = json.loads(done.stdout).get("status") or {}
    return bool(status.get("allowed"))


def iter_rules(objects: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(``Kind/name``, rule) for every rule of every Role and ClusterRole."""
    for obj in objects:
        if obj.get("kind") in ("Role", "ClusterRole"):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            for rule in obj.get("rules") or []:
                yield where, rule
