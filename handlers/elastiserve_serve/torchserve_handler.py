"""The TorchServe adapter: translate TorchServe's batch and context to the runtime and back.

Everything of substance is in :mod:`elastiserve_serve.runtime`; this class only reads the model
directory and ``model-config.yaml`` from the context, turns TorchServe's per-request dicts into
:class:`RawRequest`, and writes each outcome with its own HTTP status
(``context.set_response_status(code, phrase, idx)``), so one bad request in a batch gets its 4xx
while the others get their 200.

TorchServe's loader wants exactly one class in the handler module of the ``.mar``; ``elastiserve
archive`` writes a two-line module that subclasses :class:`ElastiserveHandler`.

Hostile input: translating one request (its row, its headers) can fail on anything TorchServe
hands over; such a failure is that request's 400, never the batch's. Reasons and header values
given back to TorchServe are printable ASCII and bounded (:func:`.runtime.text.plain`): the
reason becomes the HTTP status line. :meth:`ElastiserveHandler.handle` does not raise: if the
runtime ever did, every request of the batch gets a 500 and the worker keeps running.

Before it loads anything, :meth:`ElastiserveHandler.initialize` checks that the model
directory holds exactly what ``elastiserve archive`` writes (:mod:`.archive_check`): TorchServe
puts that directory on ``sys.path``, so an extra ``.py`` there could stand in for a module
imported later.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from .archive_check import check_model_dir
from .bundle_levels import load_levels
from .runtime.cpu_threads import auto_threads
from .runtime.engine import ElasticRuntime, Failure, Outcome, RawRequest, Success
from .runtime.settings import settings_from_mapping
from .runtime.text import MAX_HEADER_VALUE, plain
from .ts_metrics import TorchServeMetrics

log = logging.getLogger(__name__)

LEVEL_RESPONSE_HEADER = "x-elastiserve-level"
DEVICE_ENV = "ELASTISERVE_DEVICE"
"""The serving container's device (the operator sets it from ``spec.serving.device``); it
overrides the archived ``handler: device`` setting."""


class ElastiserveHandler:
    """TorchServe custom service: ``initialize(context)`` once, ``handle(data, context)``."""

    def __init__(self) -> None:
        self.runtime: ElasticRuntime | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        check_model_dir(Path(model_dir), getattr(context, "manifest", None))
        config = dict(getattr(context, "model_yaml_config", None) or {})
        raw = dict(config.get("handler") or {})
        share_storage = bool(raw.pop("share_storage", True))
        if os.environ.get(DEVICE_ENV):
            raw["device"] = os.environ[DEVICE_ENV]
        settings = settings_from_mapping(raw)
        threads, why = auto_threads(settings.threads, os.environ)
        settings = dataclasses.replace(settings, threads=threads)
        log.info("elastiserve: torch threads per worker: %s", why)
        levels = load_levels(model_dir, share_storage=share_storage)
        metrics = TorchServeMetrics(context.metrics, context.model_name)
        self.runtime = ElasticRuntime(levels, settings, metrics)
        self.runtime.warm_up(_batch_size(context))
        self.initialized = True
        log.info("elastiserve: levels %s, active %s", levels.names, self.runtime.active)

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[str]:
        if self.runtime is None:
            raise RuntimeError("handler used before initialize()")
        rows = data if isinstance(data, list) else []
        requests: list[RawRequest | Failure] = [_request(row, context, idx)
                                                for idx, row in enumerate(rows)]
        readable = [r for r in requests if isinstance(r, RawRequest)]
        try:
            served = iter(self.runtime.handle(readable))
            outcomes: list[Outcome] = [
                next(served) if isinstance(r, RawRequest) else r for r in requests
            ]
        except Exception:  # a bug of ours: the batch fails, the worker stays
            log.exception("elastiserve: the runtime failed on a batch of %d", len(requests))
            outcomes = [Failure(500, "internal error") for _ in requests]
        return [_respond(outcome, context, idx) for idx, outcome in enumerate(outcomes)]


def _batch_size(context: Any) -> int:
    """TorchServe's ``batchSize`` for this model (the most requests a batch can hold), which
    bounds the batch sizes worth profiling; 1 when TorchServe does not say."""
    value = (getattr(context, "system_properties", None) or {}).get("batch_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _request(row: Any, context: Any, idx: int) -> RawRequest | Failure:
    """One TorchServe row as a :class:`RawRequest`, or the 400 it earns if it cannot be read."""
    try:
        return RawRequest(_body(row), _headers(context, idx))
    except Exception as error:
        log.warning("request %d unreadable: %s", idx, plain(type(error).__name__))
        return Failure(400, f"cannot read the request ({type(error).__name__})")


def _respond(outcome: Outcome, context: Any, idx: int) -> str:
    if isinstance(outcome, Failure):
        context.set_response_status(outcome.status, plain(outcome.reason), idx)
    elif isinstance(outcome, Success):
        context.set_response_header(idx, LEVEL_RESPONSE_HEADER,
                                    plain(outcome.level, MAX_HEADER_VALUE))
    context.set_response_content_type(idx, "application/json")
    return json.dumps(outcome.to_json())


def _body(row: Any) -> bytes | str:
    """The request payload: TorchServe names it ``body`` (raw POST) or by its form field."""
    if not isinstance(row, dict):
        return b""
    value = row.get("data", row.get("body"))
    if value is None and len(row) == 1:
        value = next(iter(row.values()))
    if isinstance(value, (bytes, bytearray, str)):
        return bytes(value) if isinstance(value, bytearray) else value
    if value is None:
        return b""
    # Only reached if decode_input_request is on and TorchServe parsed JSON for us.
    return json.dumps(value)


def _headers(context: Any, idx: int) -> dict[str, str]:
    try:
        headers = context.get_all_request_header(idx)
    except (AttributeError, IndexError, TypeError, KeyError):
        return {}
    if not isinstance(headers, dict):
        return {}
    return {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
