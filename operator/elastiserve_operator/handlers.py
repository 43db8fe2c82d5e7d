"""kopf registrations: which event calls which part of ``reconcile``.

Kept thin on purpose: each handler fetches the per-process ``Runtime`` from kopf's memo
and calls one coroutine of ``reconcile``. Importing this module registers the handlers in
kopf's default registry (what ``kopf.operator()`` and ``kopf run`` use).

* create/update/resume of an ``ElasticModel`` -> ensure its children and status;
* an event on a Deployment the operator manages -> refresh its owner's ``Ready``, or
  re-create the children if it was deleted while its owner still exists;
* one daemon per ``ElasticModel`` -> evaluate the policy every
  ``spec.policy.evaluationIntervalSeconds`` (a daemon rather than a kopf timer because the
  interval is per object and may change with the spec).

kopf keeps its own bookkeeping in annotations (``elastiserve.io/*``), not in the status:
the status schema is structural and would prune kopf's fields, and the status belongs to
the two field managers described in ``status.py``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import kopf

from .kube import ApiError, KubeApi, connection_info, resource_path
from .metrics import OperatorMetrics
from .reconcile import Runtime, evaluate, reconcile, refresh_ready
from .settings import OperatorSettings, settings_from_env
from .signals.prometheus import PrometheusClient

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "elastiserve.io", "v1alpha1", "elasticmodels"
MANAGED = {"app.kubernetes.io/managed-by": "elastiserve-operator"}
PREFIX = "elastiserve.io"


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Configure kopf's storage and create the per-process clients."""
    op: OperatorSettings = getattr(memo, "operator_settings", None) or settings_from_env(
        os.environ
    )
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/operator"
    # kopf posts an Event per handler log line at INFO and above; level switches have their
    # own Events, so only problems are worth one here.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 600
    metrics = getattr(memo, "metrics", None) or OperatorMetrics()
    if op.metrics_port and not getattr(memo, "metrics_served", False):
        metrics.serve(op.metrics_port)
        memo.metrics_served = True
    memo.runtime = Runtime(
        api=KubeApi(connection_info(settings)),
        prometheus=PrometheusClient(op.prometheus_url, timeout_s=op.prometheus_timeout_s),
        settings=op,
        metrics=metrics,
    )


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's own minimal logins only: the ``kubernetes`` package is not a dependency."""
    return connection_info(settings)


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.api.close()
        close = getattr(runtime.prometheus, "close", None)
        if close is not None:
            await close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def ensure(body: kopf.Body, memo: Any, **_: Any) -> None:
    await reconcile(_runtime(memo), body)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """Children go with the garbage collector (owner references); only metrics remain."""
    _runtime(memo).metrics.forget(namespace or "", name)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def child_deployment(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    body = event["object"]
    try:
        if event.get("type") == "DELETED":
            await _reensure_owner(runtime, body)
        elif event.get("type") is not None:  # None: the initial listing, resume covers it
            await refresh_ready(runtime, body)
    except (ApiError, kopf.TemporaryError) as error:
        runtime.metrics.errors.labels("deployment").inc()
        log.warning("deployment event not handled: %s", error)


async def _reensure_owner(runtime: Runtime, deployment: Mapping[str, Any]) -> None:
    meta = deployment.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") != "ElasticModel":
            continue
        path = resource_path(f"{GROUP}/{VERSION}", "ElasticModel", meta.get("namespace"),
                             ref["name"])
        owner = await runtime.api.get(path)
        alive = owner is not None and not owner["metadata"].get("deletionTimestamp")
        if alive and owner is not None and owner["metadata"].get("uid") == ref.get("uid"):
            await reconcile(runtime, owner)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def policy_loop(body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Evaluate, then sleep the CR's interval (read live: a spec change applies next round)."""
    runtime = _runtime(memo)
    first = True
    while not stopped:
        try:
            await evaluate(runtime, body)
        except kopf.TemporaryError as error:
            log.warning("evaluation of %s failed: %s", body["metadata"]["name"], error)
        except ApiError as error:
            runtime.metrics.errors.labels("evaluate").inc()
            log.warning("evaluation of %s failed: %s", body["metadata"]["name"], error)
        policy = (body.get("spec") or {}).get("policy") or {}
        interval = float(policy.get("evaluationIntervalSeconds") or 5)
        if first:
            # Models created together (or resumed at start) would otherwise evaluate in
            # lockstep: a burst of queries and status writes every interval. A random phase
            # after the first evaluation spreads them evenly.
            interval *= 1.0 + random.random()
            first = False
        await stopped.wait(interval)
