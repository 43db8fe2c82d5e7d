"""A minimal async Kubernetes API client for the operator's own requests.

kopf watches and patches the ``ElasticModel`` itself; the reconcile loop also needs to
server-side-apply children, read Deployments/Pods/Nodes and post Events. The ``kubernetes``
package is not an operator dependency (the operator image stays small: RSS target 150 MB on
edge boards), so this is a few aiohttp calls authenticated with the same ``ConnectionInfo``
that kopf's own login helpers produce (``kopf.login_with_service_account`` in a pod,
``kopf.login_with_kubeconfig`` elsewhere). Only what the operator uses is here.

Errors: 404 is ``NotFound``; 409/429/5xx and connection failures are ``ApiTransient``
(the caller turns them into ``kopf.TemporaryError``); other 4xx are ``ApiError`` (a bug or
missing RBAC: retrying will not fix it quickly).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import os
import re
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf

__all__ = [
    "ApiError",
    "ApiTransient",
    "KubeApi",
    "NotFound",
    "conflicting_managers",
    "connection_info",
    "resource_path",
]

FIELD_MANAGER = "elastiserve-operator"
CREATE_ONLY = "1"
"""A ``resourceVersion`` precondition no existing child can meet (etcd's first revision
belongs to the cluster's bootstrap): an apply that carries it creates the object when the
name is free and answers 409 Conflict when anything holds it, in one request with no race
between a check and the create."""

_PLURALS = {
    ("", "ConfigMap"): "configmaps",
    ("", "Service"): "services",
    ("", "ServiceAccount"): "serviceaccounts",
    ("", "Secret"): "secrets",
    ("", "Event"): "events",
    ("", "Pod"): "pods",
    ("", "Node"): "nodes",
    ("apps", "Deployment"): "deployments",
    ("networking.k8s.io", "NetworkPolicy"): "networkpolicies",
    ("rbac.authorization.k8s.io", "Role"): "roles",
    ("rbac.authorization.k8s.io", "RoleBinding"): "rolebindings",
    ("elastiserve.io", "ElasticModel"): "elasticmodels",
}


class ApiError(Exception):
    """The API server refused the request for a reason retrying will not fix soon."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class NotFound(ApiError):
    """404: the object (or the whole API, e.g. metrics.k8s.io) does not exist."""


class ApiTransient(ApiError):
    """Conflict, throttling, server error or no connection: worth a retry."""


WATCH_READ_MARGIN_S = 30
"""How much longer than its ``timeoutSeconds`` a watch may go without a byte (bookmarks
arrive about once a minute) before the connection counts as dead."""


def refusal(status: int, text: str) -> ApiError:
    """The typed error for a non-2xx answer (the Status object's message when it has one)."""
    message = text[:500]
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(text).get("message", message)
    if status == 404:
        return NotFound(status, message)
    if status in (409, 429) or status >= 500:
        return ApiTransient(status, message)
    return ApiError(status, message)


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None
) -> str:
    """URL path of a collection or an object (``/api/v1/...`` or ``/apis/g/v/...``)."""
    group = api_version.split("/")[0] if "/" in api_version else ""
    plural = _PLURALS[(group, kind)]
    root = f"/apis/{api_version}" if group else f"/api/{api_version}"
    ns = f"/namespaces/{quote(namespace)}" if namespace else ""
    tail = f"/{quote(name)}" if name else ""
    return f"{root}{ns}/{plural}{tail}"


_CONFLICT = re.compile(r'conflict with "([^"]+)"')


def conflicting_managers(error: ApiError) -> tuple[str, ...]:
    """The field managers a refused (409) non-forced apply names, in order, once each:
    ``Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" ...``."""
    if error.status != 409:
        return ()
    return tuple(dict.fromkeys(_CONFLICT.findall(str(error))))


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's address as the kubelet gives it to every pod, or ``None`` outside one.

    kopf's minimal service-account login names ``https://kubernetes.default.svc``, which only
    resolves where cluster DNS runs; client-go's in-cluster config reads
    ``KUBERNETES_SERVICE_HOST``/``_PORT`` instead, which the kubelet always sets. A cluster
    without DNS (or with DNS not yet up) is real: the first real-node run of the quick start
    had the operator retry name resolution until its liveness probe restarted it.
    """
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    if not host:
        return None
    port = environ.get("KUBERNETES_SERVICE_PORT", "443").strip() or "443"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"https://{host}:{port}"


def connection_info(
    settings: kopf.OperatorSettings, environ: Mapping[str, str] | None = None
) -> kopf.ConnectionInfo:
    """The credentials kopf's own minimal login helpers find (service account first), aimed
    at the address the kubelet gives the pod (:func:`in_cluster_server`)."""
    account = kopf.login_with_service_account(settings=settings)
    if account is not None:
        server = in_cluster_server(os.environ if environ is None else environ)
        return dataclasses.replace(account, server=server) if server else account
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig")
    return info


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=str(Path(str(info.ca_path))))
    elif info.ca_data:
        import base64

        context.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data or info.private_key_data:
        import base64

        # ssl wants files; write them to a private temp dir that lives as long as the process.
        folder = Path(tempfile.mkdtemp(prefix="elastiserve-op-"))
        if info.certificate_data:
            cert = folder / "client.crt"
            cert.write_bytes(base64.b64decode(info.certificate_data))
        if info.private_key_data:
            key = folder / "client.key"
            key.write_bytes(base64.b64decode(info.private_key_data))
            key.chmod(0o600)
    if cert:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


class KubeApi:
    """One aiohttp session to the API server; create once per operator process."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        timeout_s: float = 10.0,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``observe(method, seconds)`` is called after every request, answered or not
        (the operator feeds a histogram: is a slow reconcile the API server or us?).
        ``timeout_s`` bounds connecting and each wait for the server's bytes."""
        self._observe = observe
        self._server = info.server.rstrip("/")
        self._headers = info.as_http_headers()
        self._ssl = _ssl_context(info)
        # Per socket operation, not per request: a request waiting for one of the pool's
        # connections is not the API server being slow. With a total timeout, a burst (100
        # models created at once: 600 requests through 32 connections) timed out requests
        # that were still queued here, and their retries made the burst longer.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._watch_session is not None:
            await self._watch_session.close()
            self._watch_session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; the decoded JSON body on 2xx, a typed error otherwise."""
        session = self._open()
        url = self._server + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        started = time.perf_counter()
        try:
            async with session.request(
                method, url, data=data, headers=headers, timeout=self._timeout
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise ApiTransient(0, f"{method} {path}: {error!r}") from error
        finally:
            if self._observe is not None:
                self._observe(method, time.perf_counter() - started)
        if status // 100 == 2:
            decoded = json.loads(text) if text else {}
            return decoded if isinstance(decoded, dict) else {}
        raise refusal(status, text)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            )
        return self._session

    def _open_watches(self) -> aiohttp.ClientSession:
        """Watches on a pool of their own, unbounded: a watch holds its connection for
        minutes, one per watched namespace, and in the requests' pool 32 namespaces would
        leave no connection for an apply or a status write."""
        if self._watch_session is None:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0)
            )
        return self._watch_session

    async def watch(
        self, path: str, *, timeout_s: int, **params: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one WATCH of the collection at ``path`` (``{"type", "object"}``,
        bookmarks included), until the server ends it after ``timeout_s`` or fails.

        A watch sends only what changes, where a LIST every few seconds sends every object
        again (1,000 pods: ~10 MB of JSON to decode each time). Events arrive one JSON
        object per line; lines are split here rather than with the stream's ``readline``,
        whose 64 KiB line limit one large object could pass. A refused request is the
        same typed error as ``request``'s (410 Gone: the version is too old, list again);
        a broken connection is ``ApiTransient``.
        """
        session = self._open_watches()
        query = {**params, "watch": "1", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_s)}
        url = f"{self._server}{path}?{urlencode(query)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.sock_connect,
                                        sock_read=timeout_s + WATCH_READ_MARGIN_S)
        try:
            async with session.get(url, headers=self._headers, timeout=timeout) as response:
                if response.status // 100 != 2:
                    raise refusal(response.status, await response.text())
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = json.loads(line)
                            if isinstance(event, dict):
                                yield event
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            raise ApiTransient(0, f"WATCH {path}: {error!r}") from error

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or ``None`` when it does not exist."""
        try:
            return await self.request("GET", path)
        except NotFound:
            return None

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        result = await self.request("GET", path, params=params or None)
        items = result.get("items") or []
        return [item for item in items if isinstance(item, dict)]

    async def list_pages(
        self, path: str, *, page_size: int, **params: str
    ) -> AsyncIterator[builtins.list[dict[str, Any]]]:
        """The items of a LIST, ``page_size`` at a time (the server's ``limit`` and
        ``continue``): a caller that keeps only part of each object holds one page of
        whole objects at a time, not the whole list (1,000 pods: ~10 MB of JSON, ~55 MB
        decoded)."""
        async for items, _ in self.list_versioned(path, page_size=page_size, **params):
            yield items

    async def list_versioned(
        self, path: str, *, page_size: int, **params: str
    ) -> AsyncIterator[tuple[builtins.list[dict[str, Any]], str]]:
        """``list_pages``, each page with the list's ``resourceVersion`` (a watch started
        from the last page's version misses nothing that changed after the listing)."""
        token = ""
        while True:
            query = {**params, "limit": str(page_size)}
            if token:
                query["continue"] = token
            result = await self.request("GET", path, params=query)
            meta = result.get("metadata") or {}
            items = [item for item in result.get("items") or [] if isinstance(item, dict)]
            yield items, str(meta.get("resourceVersion") or "")
            token = str(meta.get("continue") or "")
            if not token:
                return

    async def apply(
        self, obj: Mapping[str, Any], *, manager: str = FIELD_MANAGER, subresource: str = "",
        force: bool = True,
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` as the operator's field manager (idempotent).

        Apply rather than create-or-replace: the API server merges, records ownership per
        field (an HPA or a human editing another field is not fought), and an unchanged
        object is not written at all, so re-applying every reconcile costs a round trip only.

        Forced unless ``force=False``: the caller sends only fields the operator must own
        (``children`` leaves out what it cedes, such as a replica count an autoscaler owns),
        and applies only to objects it controls (``reconcile``), so a conflict is drift to
        repair, not a field of someone else's. Preconditions ride in ``obj``'s metadata:
        ``uid`` (apply to exactly that object: 409 when it is gone, 422 when it was replaced)
        or ``resourceVersion`` (``CREATE_ONLY``: create, or 409 when the name is taken).
        """
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        if subresource:
            path += f"/{subresource}"
        return await self.request(
            "PATCH",
            path,
            body=obj,
            params={"fieldManager": manager, "force": "true" if force else "false"},
            content_type="application/apply-patch+yaml",
        )

    async def apply_scale(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int, *,
        manager: str, force: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply ``spec.replicas`` through the object's ``scale`` subresource.

        Not forced by default: a replica count that another field manager owns (an HPA, a
        person's ``kubectl scale``) answers 409 naming it (``conflicting_managers``) instead
        of being taken. The answer is the ``autoscaling/v1`` Scale.
        """
        scale = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        return await self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name) + "/scale",
            body=scale,
            params={"fieldManager": manager, "force": "true" if force else "false"},
            content_type="application/apply-patch+yaml",
        )

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return await self.request("POST", path, body=obj)
