"""The TorchServe adapter: translate TorchServe's batch and context to the runtime and back.

Everything of substance is in :mod:`elastiserve_serve.runtime`; this class only reads the model
directory and ``model-config.yaml`` from the context, turns TorchServe's per-request dicts into
:class:`RawRequest`, and writes each outcome with its own HTTP status
(``context.set_response_status(code, phrase, idx)``), so one bad request in a batch gets its 4xx
while the others get their 200.

TorchServe's loader wants exactly one class in the handler module of the ``.mar``; ``elastiserve
archive`` writes a two-line module that subclasses :class:`ElastiserveHandler`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .bundle_levels import load_levels
from .runtime.engine import ElasticRuntime, Failure, RawRequest, Success
from .runtime.settings import settings_from_mapping
from .ts_metrics import TorchServeMetrics

log = logging.getLogger(__name__)

LEVEL_RESPONSE_HEADER = "x-elastiserve-level"


class ElastiserveHandler:
    """TorchServe custom service: ``initialize(context)`` once, ``handle(data, context)``."""

    def __init__(self) -> None:
        self.runtime: ElasticRuntime | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        config = dict(getattr(context, "model_yaml_config", None) or {})
        raw = dict(config.get("handler") or {})
        share_storage = bool(raw.pop("share_storage", True))
        settings = settings_from_mapping(raw)
        levels = load_levels(model_dir, share_storage=share_storage)
        metrics = TorchServeMetrics(context.metrics, context.model_name)
        self.runtime = ElasticRuntime(levels, settings, metrics)
        self.runtime.warm_up()
        self.initialized = True
        log.info("elastiserve: levels %s, active %s", levels.names, self.runtime.active)

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[str]:
        if self.runtime is None:
            raise RuntimeError("handler used before initialize()")
        rows = data or []
        requests = [
            RawRequest(_body(row), _headers(context, idx)) for idx, row in enumerate(rows)
        ]
        responses: list[str] = []
        for idx, outcome in enumerate(self.runtime.handle(requests)):
            if isinstance(outcome, Failure):
                context.set_response_status(outcome.status, outcome.reason, idx)
            elif isinstance(outcome, Success):
                context.set_response_header(idx, LEVEL_RESPONSE_HEADER, outcome.level)
            context.set_response_content_type(idx, "application/json")
            responses.append(json.dumps(outcome.to_json()))
        return responses


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
    except (AttributeError, IndexError, TypeError):
        return {}
    return {str(k): v for k, v in (headers or {}).items() if isinstance(v, str)}
