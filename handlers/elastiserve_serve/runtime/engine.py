"""The elastic runtime: pick a level per request, run each level once per batch, answer top-k.

One :class:`ElasticRuntime` lives in each serving process. It holds every level already built
(switching must never load anything), asks the control reader for the active level once per
batch (a ``stat``), lets a request pin a level through a header where that is allowed, groups the
batch by level so that each level runs one forward pass, and reports per-level latency through
the metrics seam. Decoding and pinning errors become per-request failures; the rest of the batch
is still served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .control import ControlFileReader, ControlState
from .decode import BadRequest, decode
from .graph import trace_levels
from .heap import trim_heap
from .levels import LevelSet
from .metrics import MetricsSink, NullMetrics
from .settings import PIN_HEADER, RuntimeSettings

log = logging.getLogger(__name__)

Prediction = list[dict[str, object]]


@dataclass(frozen=True)
class RawRequest:
    """One request as the host runtime received it: the body and its HTTP headers."""

    body: bytes | bytearray | str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Success:
    level: str
    predictions: list[Prediction]

    def to_json(self) -> dict[str, object]:
        return {"level": self.level, "predictions": self.predictions}


@dataclass(frozen=True)
class Failure:
    status: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"code": self.status, "error": self.reason}


Outcome = Success | Failure


class ElasticRuntime:
    """Serves a :class:`LevelSet`; construct once per process, call :meth:`handle` per batch."""

    def __init__(
        self,
        levels: LevelSet,
        settings: RuntimeSettings,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings
        self.metrics: MetricsSink = metrics or NullMetrics()
        self._clock = clock
        if settings.threads:
            torch.set_num_threads(settings.threads)
        # Traced graphs replace eager levels where that is safe (see runtime.graph).
        self.levels = (
            trace_levels(levels) if settings.trace_levels else levels
        )
        try:
            default = levels.resolve(settings.default_level or levels.names[-1])
        except KeyError:
            raise ValueError(
                f"default level {settings.default_level!r} is not one of {levels.names}"
            ) from None
        self._active = default
        self._control = (
            ControlFileReader(settings.control_file) if settings.control_file else None
        )
        self._control_state: ControlState | None = None
        self._refresh_active()

    @property
    def active(self) -> str:
        """The level served to requests that do not pin one (as of the last batch)."""
        return self._active

    def warm_up(self) -> None:
        """Run every level once so that the first real request pays no lazy-init cost."""
        if self.settings.warmup_batch == 0:
            return
        sample = torch.zeros((self.settings.warmup_batch, *self.levels.input_spec.shape))
        with torch.inference_mode():
            for module in self.levels.modules:
                module(sample)
        del sample
        trim_heap()  # the levels' warm-up activations are freed; give the pages back

    def handle(self, requests: Sequence[RawRequest]) -> list[Outcome]:
        """Serve one batch; the result has one outcome per request, in order."""
        start = self._clock()
        self._refresh_active()
        outcomes: list[Outcome | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for idx, request in enumerate(requests):
            try:
                level = self._choose_level(request.headers)
                tensor = decode(
                    request.body,
                    self.levels.input_spec,
                    self.levels.normalisation,
                    self.settings.limits,
                )
            except BadRequest as err:
                outcomes[idx] = Failure(err.status, err.reason)
                self.metrics.request_rejected(err.status)
                continue
            groups.setdefault(level, []).append((idx, tensor))
        for level, members in groups.items():
            self._run_group(level, members, outcomes)
            elapsed = self._clock() - start
            for idx, _ in members:
                if isinstance(outcomes[idx], Success):
                    self.metrics.request_served(level, elapsed)
        return [o if o is not None else Failure(500, "internal error") for o in outcomes]

    def _run_group(
        self,
        level: str,
        members: list[tuple[int, torch.Tensor]],
        outcomes: list[Outcome | None],
    ) -> None:
        batch = torch.cat([tensor for _, tensor in members])
        try:
            with torch.inference_mode():
                probabilities = torch.softmax(self.levels.module(level)(batch).float(), dim=1)
        except Exception:  # a model failure is ours, not the client's: 500, keep serving
            log.exception("level %s failed on a batch of %d", level, batch.shape[0])
            for idx, _ in members:
                outcomes[idx] = Failure(500, f"level {level} failed")
            return
        k = min(self.settings.top_k, probabilities.shape[1])
        values, indices = probabilities.topk(k, dim=1)
        names = self.levels.class_names
        rows = [
            [
                {"label": names[i] if i < len(names) else str(i), "probability": round(p, 6)}
                for p, i in zip(vrow, irow, strict=True)
            ]
            for vrow, irow in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        offset = 0
        for idx, tensor in members:
            count = tensor.shape[0]
            outcomes[idx] = Success(level, rows[offset : offset + count])
            offset += count

    def _refresh_active(self) -> None:
        if self._control is None:
            self.metrics.active_level(self._active, self.levels.index(self._active))
            return
        state = self._control.current()
        if state is not None and state is not self._control_state:
            self._control_state = state
            try:
                wanted = self.levels.resolve(state.level)
            except KeyError:
                log.warning("control file names unknown level %r; keeping %s",
                            state.level, self._active)
            else:
                if wanted != self._active:
                    log.info("active level %s -> %s (generation %d)",
                             self._active, wanted, state.generation)
                self._active = wanted
        self.metrics.active_level(self._active, self.levels.index(self._active))

    def _pin_allowed(self) -> bool:
        state = self._control_state
        if state is not None and state.allow_pin is not None:
            return state.allow_pin
        return self.settings.allow_pin

    def _choose_level(self, headers: Mapping[str, str]) -> str:
        pinned = _header(headers, PIN_HEADER)
        if pinned is None or pinned == "":
            return self._active
        if not self._pin_allowed():
            raise BadRequest(403, "pinning a level is not allowed for this model")
        try:
            return self.levels.resolve(pinned)
        except KeyError:
            raise BadRequest(
                400, f"unknown level {pinned!r}; levels are {', '.join(self.levels.names)}"
            ) from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value.strip() if isinstance(value, str) else None
    return None
