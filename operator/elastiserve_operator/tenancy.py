"""What a tenant's ``ElasticModel`` may ask for: the operator's allow-lists, checked purely.

Whoever may create an ``ElasticModel`` is not a cluster admin, yet the operator creates pods
for them with its own rights. Left unchecked, a model could mount any host directory (``/``
included) into its pods, run any image, tolerate any taint (control-plane nodes), pin itself
to any node or runtime class, and run PromQL over every tenant's series. The chart's values
(read at start, ``settings``) bound each of these; a spec that asks for more is refused as a
whole: ``Degraded`` with reason ``PolicyViolation``, a Warning event, and no child object.

cert-manager's ``policies/`` shape: ``check(spec, namespace, policy, ...)`` gathers nothing
and decides everything, returning every violation at once (a tenant fixes them in one go),
and the tests are tables.

What is always allowed, whatever the lists say: the values the operator's own defaults
supply (the chart's serving image, tolerations, node selector, runtime class): a CR that
leaves them out gets them, and one that repeats them asks for nothing more.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from string import Template
from typing import Any

from .promql_guard import QueryRefused, confine
from .spec import ElasticModelSpec, LocalPathSource, ServingDefaults

__all__ = [
    "SYSTEM_TREES",
    "QueryMode",
    "TenancyPolicy",
    "Violation",
    "check",
    "check_host_prefix",
    "image_allowed",
    "model_query",
    "normalize_image",
    "valid_image_entry",
]


class QueryMode(str, Enum):
    """What the operator does with PromQL an ``ElasticModel`` supplies itself.

    ``Confined`` (the default): rewritten so that every selector carries the model's own
    namespace (``promql_guard``). ``Disabled``: a model may not bring queries at all (the
    chart's run for everyone). ``AsWritten``: run unchanged, for a cluster with one tenant.
    """

    CONFINED = "Confined"
    DISABLED = "Disabled"
    AS_WRITTEN = "AsWritten"


SYSTEM_TREES: tuple[str, ...] = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root",
    "/run", "/sbin", "/sys", "/usr", "/var/run", "/var/lib/kubelet", "/var/lib/containerd",
    "/var/lib/docker", "/var/lib/etcd", "/var/lib/rancher", "/var/lib/cni", "/var/log",
    "/var/lib/dpkg", "/var/lib/apt", "/var/lib/elastiserve-operator",
)
"""Host trees no model may mount anything of, allow-listed or not: the OS, the kubelet's and
container runtimes' state (other pods' volumes and secrets), credentials and devices."""

SYSTEM_DIRS: tuple[str, ...] = ("/", "/home", "/mnt", "/media", "/opt", "/srv", "/tmp",
                                "/var", "/var/lib", "/data")
"""Directories that may *contain* an allowed tree but are never one themselves (mounting
``/srv`` would hand a model every service's data)."""


@dataclass(frozen=True)
class TenancyPolicy:
    """The allow-lists (operator settings; ``settings.tenancy_from_env`` parses them).

    Defaults are the safe ones: no host paths, only the operator's serving image, no
    toleration, node selector or runtime class beyond the operator's own defaults, and
    model queries confined to the model's namespace.
    """

    host_path: bool = False
    host_path_prefixes: tuple[str, ...] = ()
    """Host directories under which a ``localPath`` may lie (``$namespace`` is replaced by
    the model's namespace: one tree per tenant). Each one is checked at start."""
    images: tuple[str, ...] = ()
    """Image repositories (``registry/path``: any tag or digest of it) or, ending in ``/``,
    every repository under a path. The operator's serving image is always allowed."""
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Tolerations a model may carry: ``key`` (required), optional ``operator: Exists`` (any
    value), ``value`` and ``effect`` (none = any effect)."""
    node_selectors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Node label -> the values a model may select (``*``: any value)."""
    runtime_classes: tuple[str, ...] = ()
    queries: QueryMode = QueryMode.CONFINED
    namespace_label: str = "namespace"
    """The series label that holds the namespace (what the scrape configuration writes)."""
    max_query_range_s: int = 3600
    """Longest range, subquery or offset a model's query may use."""


@dataclass(frozen=True)
class Violation:
    """One thing the spec asks for that the policy does not allow."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# ------------------------------------------------------------------------------ host paths


def _plain_absolute(path: str) -> str | None:
    """Why ``path`` is not a plain absolute path (``.``/``..``/empty parts), or None."""
    if not path.startswith("/"):
        return "must be an absolute path"
    if any(c < " " or c == "\x7f" for c in path):
        return "contains a control character"
    parts = path.split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        return "must be normalised (no '.', '..', '//' or trailing '/')"
    return None


def _within(path: str, tree: str) -> bool:
    return tree == "/" or path == tree or path.startswith(tree + "/")


def system_reason(directory: str) -> str | None:
    """Why ``directory`` may never be mounted from the host, or None."""
    if directory in SYSTEM_DIRS:
        return f"{directory} is a system directory"
    for tree in SYSTEM_TREES:
        if _within(directory, tree):
            return f"{directory} is under the system tree {tree}"
    return None


def check_host_prefix(prefix: str) -> str | None:
    """Why an allow-list entry is unacceptable (checked at start), or None."""
    problem = _plain_absolute(prefix.replace("$namespace", "ns"))
    if problem is not None:
        return problem
    if "$" in prefix.replace("$namespace", ""):
        return "the only placeholder is $namespace"
    return system_reason(prefix.replace("$namespace", "ns"))


def _host_path(source: LocalPathSource, namespace: str, policy: TenancyPolicy) -> list[str]:
    if not policy.host_path:
        return ["host paths are off (the chart's tenancy.hostPath.enabled)"]
    problem = _plain_absolute(source.path)
    if problem is not None:
        return [problem]
    directory = posixpath.dirname(source.path)
    problems = []
    reason = system_reason(directory)
    if reason is not None:
        problems.append(f"would mount {directory}: {reason}")
    allowed = [Template(p).safe_substitute(namespace=namespace)
               for p in policy.host_path_prefixes]
    if not any(_within(directory, prefix) and directory != "/" for prefix in allowed):
        shown = ", ".join(allowed) or "none"
        problems.append(f"{directory} is not under an allowed host directory ({shown})")
    return problems


# ---------------------------------------------------------------------------------- images

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_REGISTRY = re.compile(r"^(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+|[a-z0-9-]+)(?::[0-9]{1,5})?$")
"""A registry host (lowercased first): a name with a dot, ``localhost``, or any name with a
port; Docker's rule for telling a registry from a Docker Hub namespace."""
_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def normalize_image(reference: str) -> str | None:
    """The repository of ``reference`` as a container runtime resolves it, or None.

    ``nginx`` -> ``docker.io/library/nginx``; ``team/app:1`` -> ``docker.io/team/app``;
    ``Registry.example:5000/a/b@sha256:..`` -> ``registry.example:5000/a/b``. The first
    component is a registry when it has a dot or a port or is ``localhost`` (Docker's rule),
    so ``docker.io/x`` and ``x`` are the same repository and cannot be told apart to slip
    past a list. None when the reference is malformed (a list cannot judge it).
    """
    rest = reference.strip()
    if not rest or rest != reference or any(c.isspace() for c in rest):
        return None
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            return None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            return None
    first, _, remainder = rest.partition("/")
    if remainder and (first == "localhost" or "." in first or ":" in first):
        registry, path = first.lower(), remainder
        if not _REGISTRY.match(registry):
            return None
    else:
        registry, path = "docker.io", rest
    if registry in _HUB:
        registry = "docker.io"
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if not _REPOSITORY.match(path):
        return None
    return f"{registry}/{path}"


def _allowed_entry(entry: str) -> tuple[str, bool] | None:
    """(normalised repository or prefix, whether everything under it is allowed), or None
    for an entry that names nothing (refused at start by ``settings``)."""
    if not entry.endswith("/"):
        found = normalize_image(entry)
        return (found, False) if found is not None else None
    core = entry[:-1]
    first, _, remainder = core.partition("/")
    host = first.lower()
    if host == "localhost" or "." in host or ":" in host:  # a registry, maybe with a path
        host = "docker.io" if host in _HUB else host
        if not _REGISTRY.match(host) or (remainder and not _REPOSITORY.match(remainder)):
            return None
        return (f"{host}/{remainder}" if remainder else host), True
    return (f"docker.io/{core}", True) if _REPOSITORY.match(core) else None  # Hub namespace


def valid_image_entry(entry: str) -> bool:
    """Whether ``entry`` is a repository or a prefix ending in ``/`` (checked at start)."""
    return _allowed_entry(entry) is not None


def image_allowed(image: str, entries: Iterable[str]) -> bool:
    """Whether ``image`` names a repository an entry allows (see ``TenancyPolicy.images``)."""
    repository = normalize_image(image)
    if repository is None:
        return False
    for entry in entries:
        allowed = _allowed_entry(entry)
        if allowed is None:
            continue
        base, under = allowed
        if repository == base or (under and repository.startswith(base + "/")):
            return True
    return False


# ---------------------------------------------------------------------- placement

def _toleration_allowed(toleration: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    key = toleration.get("key") or ""
    if not key or key != entry.get("key"):
        return False  # an empty key with Exists tolerates every taint: never by a list
    operator = toleration.get("operator") or "Equal"
    same_value = (toleration.get("value") or "") == (entry.get("value") or "")
    if entry.get("operator") != "Exists" and (operator != "Equal" or not same_value):
        return False  # an entry for one value does not allow any value (Exists)
    entry_effect = entry.get("effect") or ""
    return not entry_effect or (toleration.get("effect") or "") == entry_effect


def _same_toleration(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    fields = ("key", "operator", "value", "effect", "tolerationSeconds")
    return all((a.get(f) or None) == (b.get(f) or None) for f in fields)


def _placement(spec: ElasticModelSpec, policy: TenancyPolicy,
               defaults: ServingDefaults) -> list[Violation]:
    found: list[Violation] = []
    serving = spec.serving
    for index, toleration in enumerate(serving.tolerations):
        if any(_same_toleration(toleration, d) for d in defaults.tolerations):
            continue
        if not any(_toleration_allowed(toleration, entry) for entry in policy.tolerations):
            found.append(Violation(f"spec.serving.tolerations[{index}]",
                                   f"toleration {dict(toleration)} is not allowed"))
    for key, value in sorted(serving.node_selector.items()):
        if defaults.node_selector.get(key) == value:
            continue
        values = policy.node_selectors.get(key, ())
        if "*" not in values and value not in values:
            found.append(Violation(f"spec.serving.nodeSelector[{key}]",
                                   f"{key}={value} is not an allowed node selector"))
    runtime = serving.runtime_class_name
    if runtime and runtime != defaults.runtime_class_name and runtime not in policy.runtime_classes:
        found.append(Violation("spec.serving.runtimeClassName",
                               f"runtime class {runtime!r} is not allowed"))
    return found


# --------------------------------------------------------------------------------- queries


def model_query(template: str, *, namespace: str, name: str, model: str,
                policy: TenancyPolicy) -> str:
    """A query the model supplied, rendered and made safe to run; ``QueryRefused`` if not.

    Placeholders are filled first (``$namespace``, ``$name``, ``$model``: Kubernetes names,
    so nothing a tenant controls beyond the DNS-label characters).
    """
    if policy.queries is QueryMode.DISABLED:
        raise QueryRefused("queries from an ElasticModel are off (the chart's "
                           "prometheus.modelQueries); the operator's own are used")
    rendered = Template(template).safe_substitute(namespace=namespace, name=name, model=model)
    if policy.queries is QueryMode.AS_WRITTEN:
        return rendered
    return confine(rendered, namespace, label=policy.namespace_label,
                   max_range_s=float(policy.max_query_range_s))


def _queries(spec: ElasticModelSpec, namespace: str, name: str, model: str,
             policy: TenancyPolicy) -> list[Violation]:
    found = []
    for path, template in (("objective.latencyQuery", spec.objective.latency_query),
                           ("objective.requestRateQuery", spec.objective.request_rate_query)):
        if template is None or path in spec.defaulted:
            continue  # the operator's own query: the admin's, trusted
        try:
            model_query(template, namespace=namespace, name=name, model=model, policy=policy)
        except QueryRefused as error:
            found.append(Violation(f"spec.{path}", str(error)))
    return found


# ----------------------------------------------------------------------------------- check


def check(
    spec: ElasticModelSpec,
    *,
    namespace: str,
    name: str,
    model: str,
    policy: TenancyPolicy,
    default_image: str,
    defaults: ServingDefaults,
) -> tuple[Violation, ...]:
    """Every way ``spec`` asks for more than ``policy`` allows (empty: nothing)."""
    found: list[Violation] = []
    source = spec.model.source
    if isinstance(source, LocalPathSource):
        found += [Violation("spec.model.source.localPath", message)
                  for message in _host_path(source, namespace, policy)]
    image = spec.serving.image
    if image is not None and image != default_image:
        if normalize_image(image) is None:
            found.append(Violation("spec.serving.image", f"{image!r} is not an image reference"))
        elif not image_allowed(image, (*policy.images, default_image)):
            found.append(Violation("spec.serving.image",
                                   f"{image} is not from an allowed registry or repository"))
    found += _placement(spec, policy, defaults)
    found += _queries(spec, namespace, name, model, policy)
    return tuple(found)
