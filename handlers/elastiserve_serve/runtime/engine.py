"""The elastic runtime: pick a level per request, run each level once per batch, answer top-k.

One :class:`ElasticRuntime` lives in each serving process. It holds every level already built
(switching must never load anything), asks the control reader for the active level once per
batch (a ``stat``), lets a request pin a level through a header where that is allowed, groups the
batch by level so that each level runs one forward pass, and reports per-level latency through
the metrics seam.

Failure isolation: anything that goes wrong while one request is read, validated or routed
(its body, its headers, its pin value), whatever exception it is, becomes that request's 4xx
with a plain, bounded reason; only a model failure is a 5xx, and only for the requests of that
level's group. Nothing a request holds can make :meth:`ElasticRuntime.handle` raise.

Pinned requests do not feed the latency signal the operator acts on: they are reported apart
(``pinned=True``) and their level's forward pass runs after the active level's, so a pin to a
slow level never lengthens what the unpinned requests of the batch are measured at.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .control import ControlFileReader, ControlState
from .decode import BadRequest, decode, limits_for
from .graph import trace_levels
from .heap import trim_heap
from .levels import LevelSet
from .metrics import MetricsSink, NullMetrics
from .settings import PIN_HEADER, RuntimeSettings
from .text import plain

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
    """A refused or failed request; the reason is made plain and bounded on construction
    (:func:`.text.plain`), because it ends up in an HTTP status line."""

    status: int
    reason: str

    def __post_init__(self) -> None:
        status = self.status if 400 <= self.status <= 599 else 500
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", plain(self.reason))

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
        self.limits = limits_for(settings.limits, levels.input_spec)
        self._control = (
            ControlFileReader(settings.control_file, self._control_problem)
            if settings.control_file else None
        )
        self._control_state: ControlState | None = None
        self._control_ok: bool | None = None
        self._level_known = True
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
        groups: dict[str, list[tuple[int, torch.Tensor, bool]]] = {}
        for idx, request in enumerate(requests):
            try:
                level, tensor, pinned = self._route(request)
            except BadRequest as err:
                outcomes[idx] = self._reject(err.status, err.reason)
                continue
            groups.setdefault(level, []).append((idx, tensor, pinned))
        # The active level first: a pinned group's forward pass must not lengthen the
        # latency the unpinned requests are measured at.
        order = sorted(groups, key=lambda name: name != self._active)
        for level in order:
            members = groups[level]
            self._run_group(level, [(idx, tensor) for idx, tensor, _ in members], outcomes)
            elapsed = self._clock() - start
            for idx, _, was_pinned in members:
                if isinstance(outcomes[idx], Success):
                    self.metrics.request_served(level, elapsed, pinned=was_pinned)
        return [o if o is not None else Failure(500, "internal error") for o in outcomes]

    def _route(self, request: RawRequest) -> tuple[str, torch.Tensor, bool]:
        """Level and decoded input of one request; every failure is a :class:`BadRequest`.

        The decoder raises :class:`BadRequest` for what it recognises; anything else it or the
        header handling raises on hostile input (a conversion Python refuses, memory for a
        body that passed the size checks) is still this request's fault, so it is a 4xx too.
        """
        try:
            level, pinned = self._choose_level(request.headers)
            tensor = decode(
                request.body, self.levels.input_spec, self.levels.normalisation, self.limits
            )
        except BadRequest:
            raise
        except MemoryError:
            raise BadRequest(413, "request too large to decode") from None
        except Exception as err:
            log.warning("request refused: %s", plain(f"{type(err).__name__}: {err}"))
            raise BadRequest(400, f"cannot read the request ({type(err).__name__})") from None
        return level, tensor, pinned

    def _reject(self, status: int, reason: str) -> Failure:
        failure = Failure(status, reason)
        self.metrics.request_rejected(failure.status)
        return failure

    def _run_group(
        self,
        level: str,
        members: list[tuple[int, torch.Tensor]],
        outcomes: list[Outcome | None],
    ) -> None:
        try:
            batch = torch.cat([tensor for _, tensor in members])
            with torch.inference_mode():
                probabilities = torch.softmax(self.levels.module(level)(batch).float(), dim=1)
        except Exception:  # a model failure is ours, not the client's: 500, keep serving
            log.exception("level %s failed on a batch of %d requests", level, len(members))
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
                self._level_known = False
                self._control_problem(
                    "unknown_level", f"names level {plain(repr(state.level), 60)}, not one of "
                                     f"{len(self.levels.names)} levels")
            else:
                self._level_known = True
                if wanted != self._active:
                    log.info("active level %s -> %s (generation %d)",
                             self._active, wanted, state.generation)
                self._active = wanted
        healthy = self._control.healthy and self._level_known
        if healthy != self._control_ok:
            self._control_ok = healthy
            self.metrics.control_file_ok(healthy)
        self.metrics.active_level(self._active, self.levels.index(self._active))

    def _control_problem(self, kind: str, message: str) -> None:
        """The control file cannot be followed: keep the level, say so once per new problem."""
        if kind != "missing":
            log.warning("control file %s: %s; keeping level %s",
                        self.settings.control_file, plain(message), self._active)
        else:
            log.info("control file %s does not exist; serving %s",
                     self.settings.control_file, self._active)
        self.metrics.control_problem(kind)

    def _pin_allowed(self) -> bool:
        state = self._control_state
        if state is not None and state.allow_pin is not None:
            return state.allow_pin
        return self.settings.allow_pin

    def _choose_level(self, headers: Mapping[str, str]) -> tuple[str, bool]:
        """The level for one request and whether it was pinned (a pin naming the active level
        is still a pin: the client chose it, the controller did not)."""
        pinned = _header(headers, PIN_HEADER)
        if pinned is None or pinned == "":
            return self._active, False
        if not self._pin_allowed():
            raise BadRequest(403, "pinning a level is not allowed for this model")
        try:
            return self.levels.resolve(pinned), True
        except KeyError:
            raise BadRequest(
                400, f"unknown level {plain(repr(pinned), 40)}; levels are "
                     f"{', '.join(self.levels.names)}"
            ) from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value.strip() if isinstance(value, str) else None
    return None
