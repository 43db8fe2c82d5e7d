"""The gateway's Open Inference Protocol v2 routes, beside TorchServe's own ``/predictions``.

Same port, same key, same limits as the rest of the gateway (:mod:`.gateway`); what is v2 here
is the URL scheme, the JSON bodies (:mod:`.oip_types`) and the translation to the handler
(:mod:`.oip_codec`). Routes:

* ``GET /v2`` (server metadata), ``GET /v2/models/{m}[/versions/{v}]`` (model metadata: the
  input and outputs with datatypes and shapes, the levels, the active one), ``POST /v2/models/
  {m}[/versions/{v}]/infer``: ``Authorization: Bearer <key>`` or 401, as ``/predictions``;
* ``GET /v2/models/{m}[/versions/{v}]/ready``: no key, like ``/v2/health/*`` (it is one of the
  protocol's health APIs, made for probes): 200 when the gateway's readiness holds (a worker
  per model, a valid control file), 503 otherwise, 404 for a model not served here.

Every error under ``/v2`` is ``{"error": <reason>}`` with its status (a middleware turns the
router's own 404/405 into that shape too). An answer names the level that served in
``parameters.level``, in the ``level`` output (per sample) and in the ``X-Elastiserve-Level``
header; ``X-Elastiserve-Replica`` names the replica, as on ``/predictions``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from .gateway_keys import KeyFile, check_bearer
from .oip_codec import (
    INFERENCE_HEADER,
    InferPlan,
    OipError,
    Upstream,
    UpstreamAnswer,
    build_response,
    parse_infer,
)
from .oip_model import OipModel, OipModelError, oip_model_of_mar, oip_model_of_names
from .oip_types import ModelReadyResponse, ServerMetadataResponse
from .runtime.control import PIN_HEADER, ControlFileError, level_index, read_control_file
from .runtime.text import MAX_HEADER_VALUE, plain

__all__ = ["OipRoutes", "Upstreamed", "load_models", "v2_errors"]

log = logging.getLogger(__name__)

SERVER_NAME = "elastiserve"
EXTENSIONS = ("binary_tensor_data", "elastiserve_levels")
"""``binary_tensor_data``: Triton's name for the binary tensor data extension (KServe's python
server speaks it too); ``elastiserve_levels``: level pinning and the level in each answer."""
REPLICA_HEADER = "X-Elastiserve-Replica"
MAX_REASON = 400
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,256}")
OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are parsed on a worker thread, so the gateway's loop keeps
answering probes while a large tensor is walked."""


@dataclass(frozen=True)
class Upstreamed:
    """TorchServe's answer to one forwarded call."""

    status: int
    body: bytes
    content_type: str | None
    level: str | None


class Forward(Protocol):
    def __call__(self, path: str, body: bytes,
                 headers: Mapping[str, str]) -> Awaitable[Upstreamed]: ...


class UpstreamUnreachable(Exception):
    """TorchServe did not answer (the gateway answers 503)."""


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """A v2 error body, ``{"error": ...}``, printable and bounded."""
    return web.json_response({"error": plain(message, MAX_REASON)}, status=status,
                             headers=headers)


@web.middleware
async def v2_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The router's own refusals under ``/v2`` (unknown path 404, wrong method 405) in the
    protocol's error shape; every other path keeps aiohttp's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v2") or exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, f"{exc.reason}: {request.method} {request.path}", allow)


def load_models(names: Sequence[str], archives: Mapping[str, Path],
                level_names: Sequence[str]) -> dict[str, OipModel]:
    """Each served model's v2 description: from its archive when the gateway was given one,
    else what the level names say (a broken archive is logged, never fatal: TorchServe's own
    API must keep serving)."""
    models = {}
    for name in names:
        archive = archives.get(name)
        if archive is not None:
            try:
                models[name] = oip_model_of_mar(archive, name)
                continue
            except OipModelError as problem:
                log.warning("v2 metadata of %s falls back to its level names: %s", name,
                            plain(problem))
        models[name] = oip_model_of_names(name, level_names)
    return models


def server_version() -> str:
    try:
        return package_metadata.version("elastiserve")
    except package_metadata.PackageNotFoundError:
        return "unknown"


class OipRoutes:
    """The v2 routes of one gateway; the gateway passes its key file, its readiness check,
    its way to TorchServe and the served models."""

    def __init__(
        self, models: Mapping[str, OipModel], keys: KeyFile | None,
        ready: Callable[[], Awaitable[tuple[bool, str]]], forward: Forward,
        max_request_size: int, replica: str = "", control_file: Path | None = None,
    ) -> None:
        self.models = dict(models)
        self.keys = keys
        self.ready = ready
        self.forward = forward
        self.max_request_size = max_request_size
        self.replica = replica
        self.control_file = control_file
        self.version = server_version()

    def register(self, app: web.Application) -> None:
        app.middlewares.append(v2_errors)
        router = app.router
        router.add_get("/v2", self._server_metadata)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add_get(prefix, self._model_metadata)
            router.add_get(f"{prefix}/ready", self._model_ready)
            router.add_post(f"{prefix}/infer", self._infer)

    # ------------------------------------------------------------------ helpers

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.keys is None:
            return None
        verdict = check_bearer(request.headers.get("Authorization"), self.keys.current())
        if verdict.allowed:
            return None
        return error(401, verdict.reason, {"WWW-Authenticate": 'Bearer realm="elastiserve"'})

    def _model(self, request: web.Request) -> tuple[OipModel, str | None]:
        """The addressed model and version, or :class:`OipError` (400 bad name, 404 unknown)."""
        name = request.match_info["model"]
        version = request.match_info.get("version")
        for segment in (name, version):
            if segment is not None and not _SEGMENT.fullmatch(segment):
                raise OipError(400, "the model name or version is not a valid name")
        model = self.models.get(name)
        if model is None:
            raise OipError(404, f"Model with name {name} does not exist.")
        if version is not None and model.versions and version not in model.versions:
            raise OipError(404, f"Model with name {name} has no version {version} (served: "
                                f"{', '.join(model.versions)}).")
        return model, version

    def _active_level(self, model: OipModel) -> str | None:
        if self.control_file is None:
            return None
        try:
            state = read_control_file(self.control_file)
        except (ControlFileError, OSError):
            return None
        if state is None:
            return None
        names = model.level_names
        if not names:
            return str(state.level)
        try:
            return names[level_index(names, state.level)]
        except KeyError:
            return None

    def _answer_headers(self, level: str | None) -> dict[str, str]:
        headers = {}
        if level:
            headers[PIN_HEADER] = plain(level, MAX_HEADER_VALUE)
        if self.replica:
            headers[REPLICA_HEADER] = plain(self.replica, MAX_HEADER_VALUE)
        return headers

    # ------------------------------------------------------------------ routes

    async def _server_metadata(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        body = ServerMetadataResponse(name=SERVER_NAME, version=self.version,
                                      extensions=list(EXTENSIONS))
        return web.json_response(body.model_dump())

    async def _model_metadata(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        try:
            model, _ = self._model(request)
        except OipError as problem:
            return error(problem.status, problem.message)
        body = model.metadata(self._active_level(model)).model_dump(exclude_none=True)
        return web.json_response(body)

    async def _model_ready(self, request: web.Request) -> web.Response:
        try:
            model, _ = self._model(request)
        except OipError as problem:
            return error(problem.status, problem.message)
        ready, reason = await self.ready()
        if not ready:
            return error(503, f"Model with name {model.name} is not ready. {reason}")
        return web.json_response(ModelReadyResponse(name=model.name, ready=True).model_dump())

    async def _infer(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        limit = self.max_request_size
        if request.content_length is not None and request.content_length > limit:
            return error(413, f"body of {request.content_length} bytes exceeds {limit}")
        try:
            model, version = self._model(request)
            header_pin = _header_pin(request.headers.get(PIN_HEADER))
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise OipError(413, f"body exceeds {limit} bytes") from None
            json_length = request.headers.get(INFERENCE_HEADER)
            if len(body) > OFFLOAD_BYTES:
                plan = await asyncio.to_thread(parse_infer, body, json_length, model)
            else:
                plan = parse_infer(body, json_length, model)
            pin = _one_pin(header_pin, plan.pin)
            answers = await self._call(model, version, plan, pin)
            extra = {"replica": self.replica} if self.replica else None
            answer = build_response(plan, model.name, version or _first(model.versions),
                                    answers, extra)
        except OipError as problem:
            return error(problem.status, problem.message)
        except UpstreamUnreachable:
            return error(503, "the model server is unreachable")
        except Exception as problem:  # whatever a hostile request makes raise: its own 400
            log.warning("v2 request refused: %s", plain(repr(problem)))
            return error(400, "malformed request")
        headers = self._answer_headers(answer.level)
        if answer.json_length is not None:
            headers[INFERENCE_HEADER] = str(answer.json_length)
        return web.Response(status=200, body=answer.body, content_type=answer.content_type,
                            headers=headers)

    async def _call(self, model: OipModel, version: str | None, plan: InferPlan,
                    pin: str | None) -> list[UpstreamAnswer]:
        path = f"/predictions/{model.name}" + (f"/{version}" if version else "")

        async def one(call: Upstream) -> UpstreamAnswer:
            headers = {"Content-Type": call.content_type}
            if pin is not None:
                headers[PIN_HEADER] = pin
            answered = await self.forward(path, call.body, headers)
            return UpstreamAnswer(answered.status, answered.body)

        # All at once: TorchServe batches the images of one request with each other (and with
        # other clients' requests) instead of running them one after another.
        return list(await asyncio.gather(*(one(call) for call in plan.calls)))


def _first(values: Sequence[str]) -> str | None:
    return values[0] if values else None


def _header_pin(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
        raise OipError(400, f"header {PIN_HEADER} must be printable ASCII, 1 to 256 characters")
    return value


def _one_pin(header: str | None, parameter: str | None) -> str | None:
    """The pin from the header or ``parameters.level``; both must agree when both are set."""
    if parameter is not None and not _HEADER_VALUE.fullmatch(parameter):
        raise OipError(400, "parameters.level must be printable ASCII, 1 to 256 characters")
    if header is not None and parameter is not None and header != parameter:
        raise OipError(400, f"header {PIN_HEADER} ({header}) and parameters.level "
                            f"({parameter}) disagree")
    return parameter if parameter is not None else header
