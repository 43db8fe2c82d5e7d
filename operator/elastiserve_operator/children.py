"""Pure builders of the objects one ``ElasticModel`` owns (kubebuilder's "children").

Every builder takes the CR's identity (``Owner``), its parsed spec and the operator
settings, and returns the full object to server-side-apply: deterministic names, the
owner reference (so deleting the CR garbage-collects everything), and the labels the
operator selects on. No I/O, so the shape is table-tested without a cluster.

What each child is for:

* ``Deployment``: the serving pods. Container ``torchserve`` runs ``elastiserve serve``: an
  authenticating gateway on the ``http`` port (health routes without a key, predictions with
  the model's inference key) in front of TorchServe, which listens on the pod's loopback only;
  container ``level-agent`` watches this one ``ElasticModel`` and copies
  ``status.activeLevel`` (an index; the runtime resolves it against the bundle's levels),
  lowered to its node's cap in ``status.nodeCaps`` (the node name comes from the downward
  API), into the control file on a shared in-memory ``emptyDir``. The
  pod does not automount a token; the agent alone gets a short-lived projected token of
  the per-model ServiceAccount, so TorchServe's container holds no credentials. The pod
  template never contains the level: a switch must not roll the pods.
* ``Service``: inference (8080, the gateway) and metrics (8082) on ports of their own, so
  that the NetworkPolicy can open them to different peers.
* ``NetworkPolicy`` (unless the chart's ``networkPolicy.enabled`` is off): ingress to the
  serving pods only on the inference port from the model's own namespace and the allowed
  ones, and on the metrics port only from Prometheus (a namespace and pod selector).
  Egress is left open: the URL source's init container and the level agent need it.
* ``Secret`` ``<name>-inference-key`` (key ``key``): the one inference key every replica
  accepts, so clients call the Service rather than a pod (TorchServe can only generate a key
  per server). Unlike the other children it is created once, never applied: a server-side
  apply would send the key again and a new one would replace it on every reconcile
  (``build_key_secret`` takes the key from the caller; ``reconcile`` creates it only when
  absent). Mounted read-only into the ``torchserve`` container only; rotating it is editing
  the Secret (the gateway re-reads the file when the kubelet swaps it, no restart).
* ``ConfigMap``: the serving configuration (model name, batching, pinning) as JSON,
  mounted read-only; the container arguments repeat what the launcher needs.
* ``ServiceAccount`` + ``Role`` + ``RoleBinding``: get/watch on this one ``ElasticModel``
  (``resourceNames``), nothing else.

Security: pods satisfy Pod Security Standard ``restricted`` (non-root, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp) and run as the image's user
(65532, a dedicated non-login uid) with read-only root filesystems: TorchServe, its JVM and
torch write only under ``/tmp`` (an ``emptyDir``, also ``HOME``).

Ownership: every applied child carries this CR as its controller (``ownerReferences``), and
the operator applies only children that carry it (``reconcile``); everything it applies is
what it must own, with one exception by design: ``spec.replicas`` of the Deployment, which
the caller sets or leaves out (``replicas``/``autoscaled``) as ``replica_owner`` decides,
so that a forced apply never takes the replica count back from an HPA/KEDA. The Deployment
records the model's ``spec.replicas`` it was applied against (``SPEC_REPLICAS_ANNOTATION``):
a change of it is what takes the count back from an autoscaler.

Defaults: the CR's ``spec.serving`` fields it leaves out (batching, workers, resources,
placement) arrive already filled from the operator's settings (``spec.ServingDefaults``, the
chart's ``serving.*``); the image pull policy is an operator setting only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .settings import NetworkPolicySettings, OperatorSettings
from .spec import AUTO_BATCH, ElasticModelSpec, LocalPathSource, PvcSource, UrlSource

__all__ = [
    "API_VERSION",
    "AUTOSCALER_ANNOTATION",
    "CONTROL_DIR",
    "CONTROL_FILE",
    "INFERENCE_PORT",
    "KIND",
    "METRICS_PORT",
    "MODEL_LABEL",
    "SPEC_REPLICAS_ANNOTATION",
    "Names",
    "Owner",
    "build_children",
    "build_configmap",
    "build_deployment",
    "build_key_secret",
    "build_network_policy",
    "build_rbac",
    "build_service",
    "level_names",
    "model_name",
    "names_for",
]

API_VERSION = "elastiserve.io/v1alpha1"
KIND = "ElasticModel"
MODEL_LABEL = "elastiserve.io/model"
MANAGED_BY = {"app.kubernetes.io/managed-by": "elastiserve-operator"}
INFERENCE_PORT = 8080
METRICS_PORT = 8082
# The serving handler's default control file lives here too, so that an archive built with
# default settings follows the agent's writes in a pod (an emptyDir, medium Memory, mounted here).
CONTROL_DIR = "/dev/shm/elastiserve"
CONTROL_FILE = f"{CONTROL_DIR}/level.json"
TOKEN_DIR = "/var/run/secrets/elastiserve"
MODEL_DIR = "/models"
CONFIG_DIR = "/etc/elastiserve"
TOKEN_EXPIRATION_S = 3600
RUN_AS = 65532
"""The serving image's user: a dedicated uid with no login and no home in the image."""
INFERENCE_KEY_DIR = "/var/run/secrets/elastiserve/inference"
INFERENCE_KEY_ITEM = "key"
"""The Secret's data key, and the file name under ``INFERENCE_KEY_DIR``."""
INFERENCE_KEY_FILE = f"{INFERENCE_KEY_DIR}/{INFERENCE_KEY_ITEM}"
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
WRITABLE_HOME = "/tmp"
AUTOSCALER_ANNOTATION = "elastiserve.io/replicas-managed-by"
"""On the ElasticModel: who owns the Deployment's replica count (an HPA, KEDA). Non-empty:
the operator applies the Deployment without ``spec.replicas`` (see the module docstring)."""
SPEC_REPLICAS_ANNOTATION = "elastiserve.io/spec-replicas"
"""On the Deployment: the model's ``spec.replicas`` it was last applied against."""
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label every namespace carries with its own name (set by the API server)."""


@dataclass(frozen=True)
class Owner:
    """What a child needs to know about its ``ElasticModel``."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Names:
    """Deterministic child names: the same CR always yields the same names."""

    deployment: str
    service: str
    configmap: str
    account: str
    key_secret: str
    network_policy: str


def _fit(name: str, suffix: str, limit: int = 63) -> str:
    """``name-suffix`` within ``limit`` characters (hash-shortened when too long).

    63 because Service names and label values are DNS labels, and a CR name may be longer.
    """
    full = f"{name}-{suffix}" if suffix else name
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - (2 if suffix else 1)
    return f"{name[:keep].rstrip('-')}-{digest}" + (f"-{suffix}" if suffix else "")


def names_for(name: str) -> Names:
    return Names(
        deployment=_fit(name, "serving"),
        service=_fit(name, ""),
        configmap=_fit(name, "config"),
        account=_fit(name, "level-agent"),
        key_secret=_fit(name, "inference-key"),
        network_policy=_fit(name, "serving"),
    )


def model_name(owner: Owner, spec: ElasticModelSpec) -> str:
    """Name registered in TorchServe (``/predictions/<name>``) and used in PromQL."""
    return spec.model.name or _fit(owner.name, "")


def level_names(spec: ElasticModelSpec) -> tuple[str, ...]:
    """Level names for people (the ConfigMap), narrowest first.

    Only informative: the agent writes the CR's index into the control file and the runtime
    resolves it against the bundle, so these names never select a level. Named profile
    entries give them; otherwise ``L<k>``.
    """
    profile = spec.model.profile
    if profile and all(not entry.name.startswith("level-") for entry in profile):
        return tuple(entry.name for entry in profile)
    return tuple(f"L{k}" for k in range(spec.model.level_count))


def _labels(owner: Owner) -> dict[str, str]:
    return {MODEL_LABEL: _fit(owner.name, ""), **MANAGED_BY}


def _meta(owner: Owner, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": _labels(owner),
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        **extra,
    }


def build_configmap(owner: Owner, spec: ElasticModelSpec) -> dict[str, Any]:
    config = {
        "model": model_name(owner, spec),
        "levels": list(level_names(spec)),
        "workers": spec.serving.workers,
        "batchSize": spec.serving.batch_size,
        "maxBatchDelayMs": spec.serving.max_batch_delay_ms,
        "allowRequestPinning": spec.allow_request_pinning,
        "controlFile": CONTROL_FILE,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, names_for(owner.name).configmap),
        "data": {"serving.json": json.dumps(config, indent=2, sort_keys=True) + "\n"},
    }


def build_service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, names_for(owner.name).service),
        "spec": {
            "type": "ClusterIP",
            "selector": {MODEL_LABEL: _fit(owner.name, "")},
            "ports": [
                {"name": "http", "port": INFERENCE_PORT, "targetPort": "http"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def build_key_secret(owner: Owner, key: str) -> dict[str, Any]:
    """The model's inference key Secret holding ``key`` (the caller draws it: pure here).

    Created, never applied (see the module docstring). Owned by the CR, so it goes with it.
    Not immutable: rotating the key is editing this Secret.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(owner, names_for(owner.name).key_secret),
        "type": "Opaque",
        "data": {INFERENCE_KEY_ITEM: base64.b64encode(key.encode()).decode()},
    }


def build_rbac(owner: Owner) -> list[dict[str, Any]]:
    """ServiceAccount, Role (get/list/watch this one CR by name) and RoleBinding.

    ``list``/``watch`` with ``resourceNames`` are allowed only together with a
    ``metadata.name`` field selector, which is exactly what the agent sends.
    """
    names = names_for(owner.name)
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, names.account),
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, names.account),
        "rules": [
            {
                "apiGroups": ["elastiserve.io"],
                "resources": ["elasticmodels"],
                "resourceNames": [owner.name],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, names.account),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": names.account,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": names.account, "namespace": owner.namespace}
        ],
    }
    return [account, role, binding]


_CONTAINER_SECURITY: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _cpu_request_env(resources: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """``ELASTISERVE_CPU_REQUEST_MILLI`` from the downward API, where the container has a CPU
    request (or a limit, which Kubernetes copies into the request). Without either the API
    would report 0, and the handler keeps torch's default: there is no grant to size against.
    """
    if "cpu" not in resources.get("requests", {}) and "cpu" not in resources.get("limits", {}):
        return []
    return [{"name": "ELASTISERVE_CPU_REQUEST_MILLI", "valueFrom": {"resourceFieldRef": {
        "containerName": "torchserve", "resource": "requests.cpu", "divisor": "1m"}}}]


def _model_volume(
    spec: ElasticModelSpec,
) -> tuple[dict[str, Any], str, str, list[dict[str, Any]]]:
    """(volume, its mount path, path of the .mar inside the container, init containers)."""
    source = spec.model.source
    if isinstance(source, PvcSource):
        volume = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": source.claim_name, "readOnly": True},
        }
        return volume, MODEL_DIR, f"{MODEL_DIR}/{source.path}", []
    if isinstance(source, LocalPathSource):
        # The one file, not its directory: a model sees nothing else of the host (the
        # operator's allow-list decides which files may be named at all: ``tenancy``).
        filename = source.path.rpartition("/")[2]
        volume = {"name": "model", "hostPath": {"path": source.path, "type": "File"}}
        return volume, f"{MODEL_DIR}/{filename}", f"{MODEL_DIR}/{filename}", []
    assert isinstance(source, UrlSource)
    # Downloaded by an init container into an emptyDir, refused unless the digest matches.
    fetch = (
        "import hashlib,sys,urllib.request\n"
        "url,digest,dest=sys.argv[1:4]\n"
        "data=urllib.request.urlopen(url,timeout=300).read()\n"
        "got=hashlib.sha256(data).hexdigest()\n"
        "sys.exit(f'sha256 mismatch: {got}') if got!=digest else open(dest,'wb').write(data)\n"
    )
    init = {
        "name": "fetch-model",
        "command": ["python", "-c", fetch, source.url, source.sha256, f"{MODEL_DIR}/model.mar"],
        "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}],
        "securityContext": {**_CONTAINER_SECURITY, "readOnlyRootFilesystem": True},
    }
    return {"name": "model", "emptyDir": {}}, MODEL_DIR, f"{MODEL_DIR}/model.mar", [init]


def _batching_args(spec: ElasticModelSpec) -> list[str]:
    """A fixed batch size, or ``Auto``: the pod measures its node for the batch size and the
    threads (within its CPU request) that serve most within the objective before TorchServe
    registers the model (``elastiserve serve --batch-size auto``)."""
    if spec.serving.batch_size == AUTO_BATCH:
        return ["--batch-size", "auto", "--threads", "auto",
                "--objective-ms", str(spec.objective.p95_ms)]
    return ["--batch-size", str(spec.serving.batch_size)]


def build_deployment(
    owner: Owner, spec: ElasticModelSpec, settings: OperatorSettings, *,
    autoscaled: bool = False, replicas: int | None = None,
) -> dict[str, Any]:
    """The serving Deployment; ``autoscaled`` leaves ``spec.replicas`` out (an autoscaler or
    the joint policy's scale writes own it), ``replicas`` replaces the spec's count."""
    names = names_for(owner.name)
    image = spec.serving.image or settings.serving_image
    pull = settings.serving_pull_policy
    volume, model_mount, mar_path, init = _model_volume(spec)
    for container in init:
        container["image"] = image
        container["imagePullPolicy"] = pull
    serving = spec.serving
    args = [
        "serve",
        "--mar", mar_path,
        "--name", model_name(owner, spec),
        "--bind", "0.0.0.0",
        "--port", str(INFERENCE_PORT),
        "--metrics-bind", "0.0.0.0",  # Prometheus scrapes the pod IP; management stays loopback
        "--metrics-port", str(METRICS_PORT),
        "--run-dir", "/tmp/elastiserve",
        "--control-file", CONTROL_FILE,
        "--workers", str(serving.workers),
        *_batching_args(spec),
        "--max-batch-delay-ms", str(serving.max_batch_delay_ms),
        # Explicit either way: the archive's own setting must not outlive the CR's.
        "--allow-pin" if spec.allow_request_pinning else "--no-allow-pin",
    ]
    mounts = [
        {"name": "model", "mountPath": model_mount, "readOnly": True},
        {"name": "control", "mountPath": CONTROL_DIR, "readOnly": True},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if serving.token_authorization:
        args += ["--key-file", INFERENCE_KEY_FILE]
        mounts.append({"name": "inference-key", "mountPath": INFERENCE_KEY_DIR, "readOnly": True})
    else:
        args.append("--gateway")  # probes and one port still; clients are checked in front
    torchserve: dict[str, Any] = {
        "name": "torchserve",
        "image": image,
        "imagePullPolicy": pull,
        "command": ["elastiserve"],
        "args": args,
        # TorchServe, its JVM (user.home, preferences) and torch write under HOME and /tmp
        # only; both are the tmp emptyDir, so the root filesystem can stay read-only.
        "env": [
            {"name": "HOME", "value": WRITABLE_HOME},
            # The handler's device (spec.serving.device); TorchServe passes it to its workers.
            {"name": "ELASTISERVE_DEVICE", "value": serving.device},
            # Torch threads per worker from what the pod was granted (runtime.cpu_threads):
            # the worker count here, the CPU request through the downward API (below).
            {"name": "ELASTISERVE_WORKERS", "value": str(serving.workers)},
            *_cpu_request_env(serving.resources),
            # User model factories a bundle may name (the chart's serving.allowedFactories);
            # the loader refuses any other before importing it.
            *([{"name": "ELASTISERVE_ALLOWED_FACTORIES",
                "value": ",".join(settings.serving_allowed_factories)}]
              if settings.serving_allowed_factories else []),
        ],
        "ports": [
            {"name": "http", "containerPort": INFERENCE_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        # The gateway's routes, which need no key (a probe carries none): ready once
        # TorchServe has a READY worker; live while the gateway answers at all.
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH, "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "volumeMounts": mounts,
        "securityContext": {**_CONTAINER_SECURITY, "readOnlyRootFilesystem": True},
    }
    if serving.resources:
        torchserve["resources"] = {k: dict(v) for k, v in serving.resources.items()}
    agent = {
        "name": "level-agent",
        "image": image,
        "imagePullPolicy": pull,
        "command": ["python", "-m", "elastiserve_serve.level_source_k8s"],
        "args": [
            "--namespace", owner.namespace,
            "--name", owner.name,
            "--control-file", CONTROL_FILE,
            "--token-file", f"{TOKEN_DIR}/token",
            "--ca-file", f"{TOKEN_DIR}/ca.crt",
        ],
        # The node's name (downward API): the agent serves min(level, status.nodeCaps[node]).
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        # The kubernetes client's imports alone peak near 45 MB, and the liveness probe runs
        # a second interpreter in the same cgroup.
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"memory": "160Mi"},
        },
        # Fails when the agent has not synced with the API server for too long (its heartbeat
        # file beside the control file), so a wedged watch restarts the agent, not the pod.
        "livenessProbe": {
            "exec": {"command": [
                "python", "-m", "elastiserve_serve.level_source_k8s", "--check-alive",
                "--control-file", CONTROL_FILE,
            ]},
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "control", "mountPath": CONTROL_DIR},
            {"name": "agent-token", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
        "securityContext": {**_CONTAINER_SECURITY, "readOnlyRootFilesystem": True},
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": init,
        "containers": [torchserve, agent],
        "volumes": [
            volume,
            {"name": "control", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "config", "configMap": {"name": names.configmap}},
            *([{
                "name": "inference-key",
                "secret": {
                    "secretName": names.key_secret,
                    # Group-readable for fsGroup (the kubelet chowns to it), nobody else.
                    "defaultMode": 0o440,
                    "items": [{"key": INFERENCE_KEY_ITEM, "path": INFERENCE_KEY_ITEM}],
                },
            }] if serving.token_authorization else []),
            {
                "name": "agent-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "expirationSeconds": TOKEN_EXPIRATION_S,
                            }
                        },
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                    ]
                },
            },
        ],
    }
    if serving.node_selector:
        pod_spec["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in serving.tolerations]
    if serving.runtime_class_name:
        pod_spec["runtimeClassName"] = serving.runtime_class_name
    selector = {MODEL_LABEL: _fit(owner.name, "")}
    count = {} if autoscaled else {
        "replicas": spec.replicas if replicas is None else replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, names.deployment,
                          annotations={SPEC_REPLICAS_ANNOTATION: str(spec.replicas)}),
        "spec": {
            **count,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": _labels(owner),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def build_network_policy(owner: Owner, network: NetworkPolicySettings) -> dict[str, Any]:
    """Ingress to the serving pods: inference from the model's namespace and the allowed
    ones, metrics from Prometheus only, nothing else (a peer must match a rule's port).

    The kubelet's probes come from the node, which NetworkPolicy implementations let through.
    """
    if "*" in network.inference_namespaces:
        clients: list[dict[str, Any]] = [{"namespaceSelector": {}}]
    else:
        clients = [{"podSelector": {}}]  # the model's own namespace
        clients += [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}
                    for name in network.inference_namespaces if name != owner.namespace]
    prometheus = {
        "namespaceSelector": {"matchLabels": dict(network.metrics_namespace_selector)},
        "podSelector": {"matchLabels": dict(network.metrics_pod_selector)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, names_for(owner.name).network_policy),
        "spec": {
            "podSelector": {"matchLabels": {MODEL_LABEL: _fit(owner.name, "")}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": clients, "ports": [{"protocol": "TCP", "port": INFERENCE_PORT}]},
                {"from": [prometheus], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }


def build_children(
    owner: Owner, spec: ElasticModelSpec, settings: OperatorSettings, *,
    autoscaled: bool = False, replicas: int | None = None,
) -> list[dict[str, Any]]:
    """Every applied child, in the order to apply them (the pods' dependencies first).

    The inference key Secret is not among them: it is created once (``build_key_secret``).
    """
    network = ([build_network_policy(owner, settings.network)]
               if settings.network.enabled else [])
    return [
        *build_rbac(owner),
        build_configmap(owner, spec),
        build_service(owner),
        *network,
        build_deployment(owner, spec, settings, autoscaled=autoscaled, replicas=replicas),
    ]
