"""An authenticating gateway in front of one TorchServe: the pod's inference port.

Why: TorchServe 0.12 can only generate a random bearer key per server, so the replicas of one
``ElasticModel`` behind one Service could never be called with one key, and its key check also
guards ``/ping``, so a kubelet's unauthenticated readiness probe could never pass. The gateway
checks one shared key (:mod:`.gateway_keys`, a mounted Secret) and forwards to TorchServe, whose
own key check is off and whose inference API listens on ``127.0.0.1`` only: the loopback of a
pod is shared by its containers alone, so nothing outside the pod reaches TorchServe except
through here.

Routes (the health ones carry no credential, as KServe's do, because probes carry none):

* ``GET /ping`` (TorchServe's shape), ``GET /v2/health/live``, ``GET /v2/health/ready`` (the
  Open Inference Protocol's): ready means the level control file, when one is configured,
  exists and names a level of the served bundle (so a replica that starts while the model is
  narrowed serves the current level from its first request: the level agent writes the file
  after it read the model's status), and TorchServe reports a ``READY`` worker for every
  served model on its management API (loopback), asked at most once per
  :attr:`GatewayConfig.ready_cache_s` so that probes stay cheap; 503 with a reason otherwise;
* ``POST /predictions/{model}[/{version}]``: ``Authorization: Bearer <key>`` or 401; a body
  larger than TorchServe's ``max_request_size`` gets 413 before anything is forwarded. Only the
  body, its ``Content-Type`` and the level pin header go to TorchServe (never the client's
  credential: the handler sees request headers); the answer's status, body, content type and
  level header come back, with ``X-Elastiserve-Replica`` naming the pod. TorchServe
  unreachable: 503;
* the Open Inference Protocol v2 (``GET /v2``, ``GET /v2/models/{model}[/versions/{v}]``,
  ``.../ready``, ``POST .../infer``): :mod:`.oip_routes`, on this same port, key and limits;
  its model metadata comes from the served archives (:attr:`GatewayConfig.model_archives`).

Hostile requests: the model and version path segments, the pin header and the content type
must be short printable ASCII (a model name's characters), else 400 before anything is
forwarded; whatever else raises while a request is read or checked is that request's 400 (never
a 500, never another request's failure). What goes back (the level header, the content type)
is printable ASCII and bounded.

Connections to TorchServe come from one pooled ``aiohttp.ClientSession`` per gateway.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .gateway_keys import KeyFile, check_bearer
from .oip_routes import OipRoutes, Upstreamed, UpstreamUnreachable, load_models
from .runtime.control import (
    ARRIVAL_HEADER,
    PIN_HEADER,
    ControlFileError,
    level_index,
    read_control_file,
)
from .runtime.text import MAX_HEADER_VALUE, plain

__all__ = ["Gateway", "GatewayConfig", "Readiness", "json_error"]

log = logging.getLogger(__name__)

LEVEL_HEADER = PIN_HEADER
"""The same name pins a request (client -> handler) and names the level that answered
(handler -> client)."""
REPLICA_HEADER = "X-Elastiserve-Replica"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A model name or version as TorchServe registers them; anything else is refused."""
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,256}")
"""A forwarded header value: printable ASCII, bounded (no CR/LF, no control characters)."""


class BadGatewayRequest(ValueError):
    """A request the gateway refuses before forwarding (400)."""


@dataclass(frozen=True)
class GatewayConfig:
    """Where TorchServe is (loopback URLs) and what the gateway enforces."""

    inference_url: str
    management_url: str
    models: Sequence[str]
    max_request_size: int
    ready_cache_s: float = 1.0
    upstream_timeout_s: float = 300.0
    """Longest wait for TorchServe's answer (its own per-model response timeout is shorter)."""
    replica: str = ""
    """This server's name (the pod's), sent back in ``X-Elastiserve-Replica`` so that a client
    behind a Service can tell which replica answered; empty sends nothing."""
    control_file: Path | None = None
    """The level control file; when set, ready also needs it to exist and be valid."""
    level_names: Sequence[str] = ()
    """The served bundle's levels (narrowest first): the control file's level must be one."""
    model_archives: Mapping[str, Path] = field(default_factory=dict)
    """Model name -> the ``.mar`` TorchServe serves it from: where the v2 model metadata
    (input shape, classes, levels, version) is read; a model left out is described by its
    name and :attr:`level_names` alone."""


def json_error(status: int, kind: str, message: str) -> web.Response:
    """An error in TorchServe's own shape (``code``, ``type``, ``message``)."""
    body = {"code": status, "type": kind, "message": message}
    headers = {"WWW-Authenticate": 'Bearer realm="elastiserve"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


@dataclass(frozen=True)
class ReadyState:
    ready: bool
    reason: str
    at: float


class Readiness:
    """TorchServe's readiness, from its management API, cached for ``cache_s`` seconds.

    ``describe`` is the seam (a model name -> its ``/models/<name>`` answer); concurrent
    probes share one question in flight.
    """

    def __init__(
        self, describe: Callable[[str], Awaitable[Any]], models: Sequence[str], cache_s: float,
        clock: Callable[[], float], control_file: Path | None = None,
        level_names: Sequence[str] = (),
    ) -> None:
        self._describe = describe
        self._models = tuple(models)
        self._cache_s = cache_s
        self._clock = clock
        self._control_file = control_file
        self._level_names = tuple(level_names)
        self._state: ReadyState | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> ReadyState:
        async with self._lock:
            now = self._clock()
            if self._state is not None and now - self._state.at < self._cache_s:
                return self._state
            self._state = ReadyState(*await self._ask(), at=now)
            return self._state

    async def _ask(self) -> tuple[bool, str]:
        level_ok, why = control_file_ready(self._control_file, self._level_names)
        if not level_ok:
            return False, why
        for model in self._models:
            try:
                described = await self._describe(model)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                return False, f"TorchServe's management API did not answer: {error!r}"
            workers = ready_workers(described)
            if workers < 1:
                return False, f"model {model!r} has no READY worker yet"
        return True, "every model has a READY worker"


def control_file_ready(path: Path | None, names: Sequence[str]) -> tuple[bool, str]:
    """Whether the control file lets a replica serve the decided level from its first request:
    it exists, is a valid regular file, and (with ``names``) designates one of them."""
    if path is None:
        return True, "no control file configured"
    try:
        state = read_control_file(path)
    except ControlFileError as error:
        return False, plain(f"control file {path}: {error}")
    except OSError as error:
        return False, plain(f"control file {path}: {error.strerror or error}")
    if state is None:
        return False, plain(f"control file {path} does not exist yet (the level agent writes "
                            "it once it has read the model's level)")
    if names:
        try:
            level_index(names, state.level)
        except KeyError:
            return False, plain(f"control file {path} names level {state.level!r}, not one "
                                f"of the {len(names)} levels served")
    return True, "control file valid"


def ready_workers(described: Any) -> int:
    """READY workers in a management ``/models/<name>`` answer (a list of versions)."""
    if not isinstance(described, list):
        return 0
    return sum(
        1
        for version in described if isinstance(version, dict)
        for worker in version.get("workers") or [] if isinstance(worker, dict)
        and worker.get("status") == "READY"
    )


class Gateway:
    """The aiohttp application; ``keys`` ``None`` means no key check (auth done in front)."""

    def __init__(self, config: GatewayConfig, keys: KeyFile | None) -> None:
        self.config = config
        self.keys = keys
        self._session: aiohttp.ClientSession | None = None
        self.readiness = Readiness(self._describe, config.models, config.ready_cache_s,
                                   _monotonic, config.control_file, config.level_names)
        self.oip = OipRoutes(
            load_models(config.models, config.model_archives, config.level_names), keys,
            self._ready_state, self._upstream, config.max_request_size, config.replica,
            config.control_file,
        )

    def app(self) -> web.Application:
        # client_max_size bounds a body whose length was not announced (chunked); an
        # announced one is refused in _predict before a byte of it is read.
        app = web.Application(client_max_size=self.config.max_request_size)
        app.cleanup_ctx.append(self._client)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/v2/health/live", self._live)
        app.router.add_get("/v2/health/ready", self._ready)
        app.router.add_post("/predictions/{model}", self._predict)
        app.router.add_post("/predictions/{model}/{version}", self._predict)
        self.oip.register(app)
        return app

    async def _client(self, _app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0,
                                        sock_read=self.config.upstream_timeout_s)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), timeout=timeout, auto_decompress=False,
        )
        yield
        await self._session.close()
        self._session = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("gateway used outside its application")
        return self._session

    async def _describe(self, model: str) -> Any:
        url = f"{self.config.management_url}/models/{model}"
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with self._client_session().get(url, timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status} for {model!r}")
            return await response.json(content_type=None)

    async def _ready_state(self) -> tuple[bool, str]:
        state = await self.readiness.check()
        return state.ready, state.reason

    async def _upstream(self, path: str, body: bytes,
                        headers: Mapping[str, str]) -> Upstreamed:
        """POST ``body`` to TorchServe's inference API; :class:`UpstreamUnreachable` when it
        does not answer.

        Every forwarded request carries :data:`ARRIVAL_HEADER` (now, as ``time.time_ns()``):
        TorchServe tells its workers nothing of how long a request queued in its frontend, and
        the worker's per-batch level choice needs exactly that. :func:`forwarded` never passes a
        client's own stamp, so only this one reaches the worker."""
        sent = {**headers, ARRIVAL_HEADER: str(time.time_ns())}
        try:
            async with self._client_session().post(
                f"{self.config.inference_url}{path}", data=body, headers=sent,
            ) as upstream:
                return Upstreamed(status=upstream.status, body=await upstream.read(),
                                  content_type=upstream.headers.get("Content-Type"),
                                  level=upstream.headers.get(LEVEL_HEADER))
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            log.warning("TorchServe unreachable for %s: %r", path, error)
            raise UpstreamUnreachable(path) from error

    async def _ping(self, _request: web.Request) -> web.Response:
        state = await self.readiness.check()
        if state.ready:
            return web.json_response({"status": "Healthy"})
        return web.json_response({"status": "Unhealthy", "reason": state.reason}, status=503)

    async def _live(self, _request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _ready(self, _request: web.Request) -> web.Response:
        state = await self.readiness.check()
        if state.ready:
            return web.json_response({"ready": True})
        # "reason" for people and probes' logs; "error" is the v2 error object's key.
        return web.json_response({"ready": False, "reason": state.reason,
                                  "error": f"Server is not ready. {state.reason}"}, status=503)

    async def _predict(self, request: web.Request) -> web.Response:
        if self.keys is not None:
            verdict = check_bearer(request.headers.get("Authorization"), self.keys.current())
            if not verdict.allowed:
                return json_error(401, "Unauthorized", verdict.reason)
        limit = self.config.max_request_size
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, "RequestEntityTooLarge",
                              f"body of {request.content_length} bytes exceeds {limit}")
        try:
            path, headers = forwarded(request.match_info, request.headers)
        except BadGatewayRequest as error:
            return json_error(400, "BadRequest", str(error))
        except Exception as error:  # whatever a hostile request makes raise: its own 400
            log.warning("request refused: %s", plain(repr(error)))
            return json_error(400, "BadRequest", "malformed request")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "RequestEntityTooLarge", f"body exceeds {limit} bytes")
        try:
            upstream = await self._upstream(path, body, headers)
        except UpstreamUnreachable:
            return json_error(503, "ServiceUnavailable", "the model server is unreachable")
        response = web.Response(status=upstream.status, body=upstream.body)
        if upstream.content_type is not None:
            response.headers["Content-Type"] = plain(upstream.content_type, MAX_HEADER_VALUE)
        if upstream.level is not None:
            response.headers[LEVEL_HEADER] = plain(upstream.level, MAX_HEADER_VALUE)
        if self.config.replica:
            response.headers[REPLICA_HEADER] = plain(self.config.replica, MAX_HEADER_VALUE)
        return response


def forwarded(
    match: Any, headers: Any,
) -> tuple[str, dict[str, str]]:
    """The path and headers to send to TorchServe, or :class:`BadGatewayRequest`.

    Only names TorchServe could have registered reach it (no ``..``, no encoded slash, no
    control characters), and only the body's content type and the pin header travel, each
    printable ASCII and bounded.
    """
    segments = [match["model"]]
    if "version" in match:
        segments.append(match["version"])
    for segment in segments:
        if not isinstance(segment, str) or not _SEGMENT.fullmatch(segment):
            raise BadGatewayRequest("the model name or version is not a valid name")
    out: dict[str, str] = {}
    for name in ("Content-Type", LEVEL_HEADER):
        value = headers.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise BadGatewayRequest(f"header {name} must be printable ASCII, at most 256 "
                                    "characters")
        out[name] = value
    return "/predictions/" + "/".join(segments), out


def _monotonic() -> float:
    return asyncio.get_running_loop().time()
