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

Per-batch level (the fast loop, :mod:`.batch_level`): when the control file gives a floor and an
objective besides the level (the ceiling), the unpinned requests of each batch are served at the
widest level in ``[floor, ceiling]`` predicted to answer the batch's oldest request within the
objective, from how long it waited before reaching the worker (the gateway's arrival stamp,
:data:`.control.ARRIVAL_HEADER`) and the service times profiled at load (:mod:`.service_times`).
Pinned requests neither take part in nor feed that choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .batch_level import BatchChoice, ChoiceReason, choose_batch_level
from .control import ARRIVAL_HEADER, ControlFileReader, ControlState
from .cuda_graphs import Capture, capture_cuda, graph_levels, wants_graphs
from .decode import BadRequest, Pixels, batch_tensor, decode_pixels, limits_for
from .device import level_memory_bytes, levels_on, resolve_device
from .graph import trace_levels
from .heap import trim_heap
from .levels import LevelSet
from .metrics import MetricsSink, NullMetrics
from .service_times import ServiceTimes, profile_levels, profile_sizes
from .settings import PIN_HEADER, RuntimeSettings
from .stages import StageTimes
from .text import plain

log = logging.getLogger(__name__)

Prediction = list[dict[str, object]]

MAX_STAMP_DIGITS = 20
"""``time.time_ns()`` has 19 digits until the year 2286."""
MAX_WAIT_S = 3600.0
"""A stamp older than this is not a wait but a wrong clock: it counts as no stamp."""


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
        wall_ns: Callable[[], int] = time.time_ns,
        capture: Capture = capture_cuda,
    ) -> None:
        self.settings = settings
        self._capture = capture
        self.metrics: MetricsSink = metrics or NullMetrics()
        self._clock = clock
        self._wall_ns = wall_ns
        self.service_times: ServiceTimes | None = None
        """Per-level service times, profiled by :meth:`warm_up`; ``None``: no per-batch choice."""
        self.level_memory: dict[str, int] = {}
        """Per level: device memory measured by :meth:`warm_up` (``device.level_memory_bytes``)."""
        self.stages = StageTimes()
        """Decode/forward/postprocess seconds of every batch (:mod:`.stages`)."""
        self.last_choice: BatchChoice | None = None
        """The per-batch choice of the last batch with unpinned requests (for tests, logs)."""
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = resolve_device(settings.device)
        """Where the levels run and every batch is moved (:mod:`.device`)."""
        on_device = levels_on(levels, self.device)
        # Traced graphs replace eager levels where verified equal (see runtime.graph).
        self.levels = trace_levels(on_device) if settings.trace_levels else on_device
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
        self._floor: int | None = None  # None: no per-batch choice (floor = ceiling)
        self._objective_s: float | None = None
        self._refresh_active()

    @property
    def active(self) -> str:
        """The level served to requests that do not pin one (as of the last batch)."""
        return self._active

    def warm_up(self, max_batch_samples: int = 1) -> None:
        """Run every level once so that the first real request pays no lazy-init cost, then
        profile each level's service time up to ``max_batch_samples`` (the host's batch size;
        ``settings.profile_max_samples`` overrides it) for the per-batch choice."""
        if self.settings.warmup_batch > 0:
            sample = torch.zeros((self.settings.warmup_batch, *self.levels.input_spec.shape),
                                 device=self.device)
            with torch.inference_mode():
                for module in self.levels.modules:
                    module(sample)
            del sample
        samples = self.settings.profile_max_samples or max(1, max_batch_samples)
        # Memory before graphs: a graph's replay allocates nothing (its activations live in
        # its pool), so the allocator's peak would miss them afterwards.
        self.level_memory = level_memory_bytes(self.levels, self.device, samples)
        if wants_graphs(self.device, self.settings.cuda_graphs):
            # Graphs per profiled batch size, captured before the profile times them.
            self.levels = graph_levels(self.levels, profile_sizes(samples), self._capture)
        if self.settings.worker_choice:
            self.service_times = self._profile(samples)
        for name, nbytes in self.level_memory.items():
            self.metrics.level_memory(name, nbytes)
        log.info("levels on %s; memory per level (bytes): %s", self.device, self.level_memory)
        self.metrics.torch_threads(torch.get_num_threads())
        self.metrics.batch_size(max(1, max_batch_samples))
        trim_heap()  # the levels' warm-up activations are freed; give the pages back

    def _profile(self, max_samples: int) -> ServiceTimes:
        shape = self.levels.input_spec.shape
        inputs = {n: torch.zeros((n, *shape), device=self.device)
                  for n in profile_sizes(max_samples)}

        def run(level: int, samples: int) -> None:
            with torch.inference_mode():
                torch.softmax(self.levels.modules[level](inputs[samples]).float(), dim=1)

        times = profile_levels(run, len(self.levels.names), tuple(inputs),
                               repeats=self.settings.profile_repeats, clock=self._clock)
        log.info("service times (ms) at batch sizes %s: %s", times.sizes, {
            name: [round(t * 1000, 2) for t in row]
            for name, row in zip(self.levels.names, times.seconds, strict=True)
        })
        return times

    def handle(self, requests: Sequence[RawRequest]) -> list[Outcome]:
        """Serve one batch; the result has one outcome per request, in order."""
        start = self._clock()
        received_ns = self._wall_ns()
        self._refresh_active()
        outcomes: list[Outcome | None] = [None] * len(requests)
        routed: list[tuple[int, str, Pixels, bool]] = []
        oldest_wait_s = 0.0
        for idx, request in enumerate(requests):
            began = self._clock()
            try:
                level, pixels, pinned = self._route(request)
                self.stages.add("decode", self._clock() - began)
            except BadRequest as err:
                outcomes[idx] = self._reject(err.status, err.reason)
                continue
            routed.append((idx, level, pixels, pinned))
            if not pinned:
                oldest_wait_s = max(oldest_wait_s, _waited_s(request.headers, received_ns))
        unpinned_samples = sum(p.samples for _, _, p, pinned in routed if not pinned)
        served = self._batch_level(unpinned_samples, oldest_wait_s, self._clock() - start)
        groups: dict[str, list[tuple[int, Pixels, bool]]] = {}
        for idx, level, pixels, pinned in routed:
            groups.setdefault(level if pinned else served, []).append((idx, pixels, pinned))
        # The controller's level first: a pinned group's forward pass must not lengthen the
        # latency the unpinned requests are measured at.
        order = sorted(groups, key=lambda name: name != served)
        for level in order:
            members = groups[level]
            self._run_group(level, [(idx, pixels) for idx, pixels, _ in members], outcomes)
            elapsed = self._clock() - start
            for idx, _, was_pinned in members:
                if isinstance(outcomes[idx], Success):
                    self.metrics.request_served(level, elapsed, pinned=was_pinned)
        self.stages.batch_done()
        flushed = self.stages.due(self._clock())
        for stage, seconds in flushed.items():
            self.metrics.stage_seconds(stage, seconds)
        if flushed:
            self.metrics.batches_served(self.stages.take_batches())
        return [o if o is not None else Failure(500, "internal error") for o in outcomes]

    def _batch_level(self, samples: int, oldest_wait_s: float, elapsed_s: float) -> str:
        """The level for this batch's unpinned requests: the ceiling, or the per-batch choice
        within ``[floor, ceiling]`` where the control file and a profile allow one."""
        times, floor, objective = self.service_times, self._floor, self._objective_s
        if samples == 0 or times is None or floor is None or objective is None:
            return self._active
        choice = choose_batch_level(
            floor=floor,
            ceiling=self.levels.index(self._active),
            oldest_wait_s=oldest_wait_s,
            elapsed_s=elapsed_s,
            service_s=times.predict_all(samples),
            budget_s=objective * self.settings.worker_target,
        )
        self.last_choice = choice
        if choice.reason is ChoiceReason.NONE_FITS:
            log.debug("no level fits: oldest waited %.1f ms; serving %s",
                      oldest_wait_s * 1000, self.levels.names[choice.level])
        return self.levels.names[choice.level]

    def _route(self, request: RawRequest) -> tuple[str, Pixels, bool]:
        """Level and decoded input of one request; every failure is a :class:`BadRequest`.

        The decoder raises :class:`BadRequest` for what it recognises; anything else it or the
        header handling raises on hostile input (a conversion Python refuses, memory for a
        body that passed the size checks) is still this request's fault, so it is a 4xx too.
        """
        try:
            level, pinned = self._choose_level(request.headers)
            pixels = decode_pixels(request.body, self.levels.input_spec, self.limits)
        except BadRequest:
            raise
        except MemoryError:
            raise BadRequest(413, "request too large to decode") from None
        except Exception as err:
            log.warning("request refused: %s", plain(f"{type(err).__name__}: {err}"))
            raise BadRequest(400, f"cannot read the request ({type(err).__name__})") from None
        return level, pixels, pinned

    def _reject(self, status: int, reason: str) -> Failure:
        failure = Failure(status, reason)
        self.metrics.request_rejected(failure.status)
        return failure

    def _run_group(
        self,
        level: str,
        members: list[tuple[int, Pixels]],
        outcomes: list[Outcome | None],
    ) -> None:
        try:
            began = self._clock()
            # One normalisation for the group, into one buffer on the device (decode.py).
            batch = batch_tensor([pixels for _, pixels in members], self.levels.normalisation,
                                 self.device)
            self.stages.add("decode", self._clock() - began)
            began = self._clock()
            with torch.inference_mode():
                probabilities = torch.softmax(
                    self.levels.module(level)(batch).float(), dim=1
                ).cpu()
            forward_s = self._clock() - began
            self.stages.add("forward", forward_s)
            if self.service_times is not None:
                self.service_times.observe(self.levels.index(level), batch.shape[0], forward_s)
        except Exception:  # a model failure is ours, not the client's: 500, keep serving
            log.exception("level %s failed on a batch of %d requests", level, len(members))
            for idx, _ in members:
                outcomes[idx] = Failure(500, f"level {level} failed")
            return
        began = self._clock()
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
        for idx, pixels in members:
            count = pixels.samples
            outcomes[idx] = Success(level, rows[offset : offset + count])
            offset += count
        self.stages.add("postprocess", self._clock() - began)

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
                self._take_bounds(state)
        healthy = self._control.healthy and self._level_known
        if healthy != self._control_ok:
            self._control_ok = healthy
            self.metrics.control_file_ok(healthy)
        self.metrics.active_level(self._active, self.levels.index(self._active))

    def _take_bounds(self, state: ControlState) -> None:
        """The floor and objective of the per-batch choice from a state whose level was taken;
        a floor naming no level turns the choice off (the ceiling is served) and says so."""
        self._floor, self._objective_s = None, None
        if state.floor is None or state.objective_ms is None:
            return
        try:
            self._floor = self.levels.index(self.levels.resolve(state.floor))
        except KeyError:
            self._control_problem(
                "unknown_level", f"names floor {plain(repr(state.floor), 60)}, not one of "
                                 f"{len(self.levels.names)} levels")
            return
        self._objective_s = state.objective_ms / 1000.0

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


def _waited_s(headers: Mapping[str, str], received_ns: int) -> float:
    """How long a request waited before its batch reached the worker, from the gateway's
    arrival stamp; 0 without a usable stamp (absent, not digits, in the future, absurdly old)."""
    stamp = _header(headers, ARRIVAL_HEADER)
    if not stamp or len(stamp) > MAX_STAMP_DIGITS or not (stamp.isascii() and stamp.isdigit()):
        return 0.0
    waited = (received_ns - int(stamp)) / 1e9
    return waited if 0.0 < waited <= MAX_WAIT_S else 0.0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value.strip() if isinstance(value, str) else None
    return None
