"""The operator's level policy, run locally: Prometheus in, control file out.

In a cluster the kopf timer gathers an ``Observation`` from Prometheus, calls
:func:`elastiserve_operator.policy.decide`, writes the decision into the ``ElasticModel`` status,
and the in-pod level agent copies it into the control file the handler reads. With no cluster
the status and the agent have nothing to add, so this loop writes the control file itself; the
gathering (:func:`~elastiserve_operator.signals.prometheus.gather_observation`), the PromQL
shapes and the policy are the operator's own, so what the demo shows is what the operator does.

Latency signal: the operator's default query is the handler's histogram, which misses the time
a request waits in TorchServe's frontend queue, and that wait is where overload shows first. The
loop acts on the operator's end-to-end estimate instead
(:func:`~elastiserve_operator.signals.prometheus.end_to_end_latency_query`: handler p95 plus the
mean queue wait), an estimate rather than a quantile, so the demo prints it next to the p95 its
own load generator observes, every second.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elastiserve_operator.observation import Observation
from elastiserve_operator.policy import Decision, decide
from elastiserve_operator.policy_state import PolicyState
from elastiserve_operator.profile import LevelProfile
from elastiserve_operator.signals.prometheus import (
    DEFAULT_RATE_QUERY,
    HANDLER_LATENCY_QUERY,
    MetricsSource,
    end_to_end_latency_query,
    gather_observation,
    render_query,
)
from elastiserve_operator.spec import ElasticModelSpec
from elastiserve_operator.status import worker_bounds
from elastiserve_serve.runtime.control import (
    ControlState,
    read_control_file,
    write_control_file,
)

_NAMESPACE_MATCHER = 'namespace="$namespace",'
_OPERATOR_WINDOW = "[1m]"


def _local(template: str, model: str) -> str:
    """The operator's query without its namespace matcher (nothing adds that label locally).

    Raises when the operator's template no longer has the expected shape, so a change there
    fails the demo's test instead of silently querying something else.
    """
    if _NAMESPACE_MATCHER not in template:
        raise ValueError(f"unexpected operator query shape: {template}")
    local = template.replace(_NAMESPACE_MATCHER, "")
    return str(render_query(local, namespace="", name=model, model=model))


def _windowed(template: str, window_s: int) -> str:
    if _OPERATOR_WINDOW not in template:
        raise ValueError(f"unexpected operator query window: {template}")
    return template.replace(_OPERATOR_WINDOW, f"[{window_s}s]")


def handler_p95_query(model: str, window_s: int) -> str:
    """p95 of the handler's own latency histogram (windowed), shown beside the end-to-end one."""
    return _local(_windowed(HANDLER_LATENCY_QUERY, window_s), model)


def rate_query(model: str, window_s: int) -> str:
    """Arriving requests/s as the frontend counts them (the operator's default, windowed)."""
    return _local(_windowed(DEFAULT_RATE_QUERY, window_s), model)


def end_to_end_p95_query(model: str, window_s: int) -> str:
    """Handler p95 plus the mean frontend queue wait: the operator's end-to-end estimate."""
    return _local(end_to_end_latency_query(f"{window_s}s"), model)


@dataclass(frozen=True)
class LoopEvent:
    """One evaluation: what was observed, what the policy decided and why."""

    at: float  # epoch seconds (the policy's clock)
    level: int
    previous_level: int
    level_name: str
    cause: str
    reason: str
    p95_s: float | None
    rate_rps: float | None
    generation: int | None = None  # control-file generation written (switches only)
    errors: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.level != self.previous_level


@dataclass
class PolicyLoop:
    """Evaluate the policy every ``spec.policy.evaluation_interval_s`` and actuate switches.

    ``source`` is any :class:`MetricsSource` (a ``PrometheusClient`` in the demo); ``clock``
    gives epoch seconds, the time base of Prometheus' sample timestamps. ``spec`` is already
    merged with the defaults for what it leaves out, as the operator merges a CR's:
    ``parse_spec(raw)`` uses the built-in ``SpecDefaults`` (equal to the chart's values, a
    chart test checks), ``parse_spec(raw, defaults_from_env(os.environ))`` the same
    ``ELASTISERVE_DEFAULT_*`` variables the operator reads. The queries are this loop's own.
    """

    spec: ElasticModelSpec
    profile: Sequence[LevelProfile]
    control_file: Path
    source: MetricsSource
    latency_query: str
    request_rate_query: str
    clock: Callable[[], float] = time.time
    events: list[LoopEvent] = field(default_factory=list)
    state: PolicyState | None = None

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.profile)

    def start(self) -> LoopEvent:
        """Write the initial level (workers starting later come up at it) and reset the state."""
        level = self.spec.levels.initial_level
        now = self.clock()
        self.state = PolicyState.initial(level, now)
        written = self._write(level)
        event = LoopEvent(now, level, level, self.level_names[level], "Start",
                          f"starting at level {level} ({self.level_names[level]})",
                          None, None, written.generation)
        self.events.append(event)
        return event

    def _write(self, level: int) -> ControlState:
        """The control file as the operator's level agent writes it: the level (the ceiling)
        and, where ``spec.policy.loops`` lets the workers choose, the floor and objective
        they pick each batch's level against (``status.workerBounds``)."""
        try:
            last = read_control_file(self.control_file)
        except ValueError:
            last = None
        bounds = worker_bounds(self.spec)
        state = ControlState(
            self.level_names[level], last.generation + 1 if last else 1,
            floor=self.level_names[bounds["floor"]] if bounds else None,
            objective_ms=float(bounds["objectiveMs"]) if bounds else None)
        write_control_file(self.control_file, state)
        return state

    async def evaluate(self) -> LoopEvent:
        """Gather one observation, decide, and write the control file if the level moves."""
        if self.state is None:
            self.start()
        assert self.state is not None
        gathered = await gather_observation(
            self.source, self.latency_query, self.request_rate_query, ready_replicas=1
        )
        now = self.clock()
        decision: Decision = decide(gathered.observation, self.spec, self.profile, self.state, now)
        self.state = decision.state
        generation = None
        if decision.changed:
            generation = self._write(decision.level).generation
        observation: Observation = gathered.observation
        event = LoopEvent(
            at=now,
            level=decision.level,
            previous_level=decision.previous_level,
            level_name=self.level_names[decision.level],
            cause=decision.cause.value,
            reason=decision.reason,
            p95_s=_finite(observation.p95_s),
            rate_rps=_finite(observation.request_rate_rps),
            generation=generation,
            errors=gathered.errors,
        )
        self.events.append(event)
        return event

    async def run(
        self, stop: threading.Event, on_event: Callable[[LoopEvent], None] | None = None
    ) -> None:
        """Evaluate on a fixed cadence (not drifting with query time) until ``stop`` is set."""
        interval = float(self.spec.policy.evaluation_interval_s)
        next_at = time.monotonic() + interval
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.2))
                continue
            next_at += interval * max(1, math.ceil((time.monotonic() - next_at) / interval))
            event = await self.evaluate()
            if on_event is not None:
                on_event(event)

    async def _run_and_close(
        self, stop: threading.Event, on_event: Callable[[LoopEvent], None] | None
    ) -> None:
        try:
            await self.run(stop, on_event)
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                await close()


class LoopThread:
    """:meth:`PolicyLoop.run` on its own event loop in a thread (the demo's main thread draws).

    An exception in the loop stops the demo (``stop`` is set) and is kept in :attr:`error`.
    """

    def __init__(
        self,
        loop: PolicyLoop,
        stop: threading.Event,
        on_event: Callable[[LoopEvent], None] | None = None,
    ) -> None:
        self.error: BaseException | None = None
        self._loop = loop
        self._stop = stop
        self._on_event = on_event
        self._thread = threading.Thread(target=self._target, name="policy-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _target(self) -> None:
        try:
            asyncio.run(self._loop._run_and_close(self._stop, self._on_event))
        except BaseException as err:
            self.error = err
            self._stop.set()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
