"""One bad request fails only itself: the runtime and the TorchServe adapter under hostile input.

The handler is driven through its own seam (a runtime built from tiny levels and a fake
TorchServe context that records what would go back to the frontend), so hypothesis can throw
thousands of batches at it in seconds; ``test_torchserve.py`` checks the same on a real
TorchServe once. Whatever a request holds (bytes, JSON Python's own conversions choke on,
header values, pin values, rows of any shape), every good request of its batch is answered,
the bad one gets a 4xx, nothing raises, and every status, reason and header handed back is
plain and bounded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastiserve_serve.runtime import (
    ControlState,
    ElasticRuntime,
    Failure,
    LevelSet,
    RawRequest,
    RecordingMetrics,
    RuntimeSettings,
    Success,
    write_control_file,
)
from elastiserve_serve.torchserve_handler import ElastiserveHandler

from .tiny import NAMES, tiny_levels

GOOD_JSON = json.dumps([[[0.25] * 8] * 8]).encode()
PIN = "X-Elastiserve-Level"
EXAMPLES = 150
"""Examples per property below (six properties: 900 hostile batches per run)."""
MAX_REASON = 200
MAX_HEADER_VALUE = 128
"""What a reason phrase and a header value may be at most (``runtime.text``'s bounds; repeated
here so that this file also runs against code from before those bounds existed)."""


@dataclass
class FakeContext:
    """What TorchServe's context offers the handler, recording what goes back."""

    headers: list[Any] = field(default_factory=list)
    statuses: dict[int, tuple[int, str]] = field(default_factory=dict)
    response_headers: dict[int, dict[str, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)

    def get_all_request_header(self, idx: int) -> Any:
        return self.headers[idx]

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_header(self, idx: int, name: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[name] = value

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


LEVELS = tiny_levels()
"""Built once: a level set is immutable, and building one per example cost most of the time."""


def handler(tmp_path: Path, allow_pin: bool = True,
            levels: LevelSet = LEVELS) -> tuple[ElastiserveHandler, RecordingMetrics]:
    metrics = RecordingMetrics()
    settings_ = RuntimeSettings(control_file=tmp_path / "level.json", allow_pin=allow_pin)
    out = ElastiserveHandler()
    out.runtime = ElasticRuntime(levels, settings_, metrics)
    out.initialized = True
    return out, metrics


def plain_and_bounded(text: str, limit: int) -> bool:
    return len(text) <= limit and all(0x20 <= ord(ch) < 0x7F for ch in text)


def run_batch(h: ElastiserveHandler, rows: list[Any], headers: list[Any]) -> FakeContext:
    context = FakeContext(headers=headers)
    answers = h.handle(rows, context)
    assert len(answers) == len(rows)
    for idx, answer in enumerate(answers):
        body = json.loads(answer)
        assert context.content_types[idx] == "application/json"
        if idx in context.statuses:
            code, phrase = context.statuses[idx]
            assert 400 <= code <= 599 and body["code"] == code
            assert plain_and_bounded(phrase, MAX_REASON), phrase
        else:
            level = context.response_headers[idx]["x-elastiserve-level"]
            assert plain_and_bounded(level, MAX_HEADER_VALUE) and body["level"] == level
    return context


# ----------------------------------------------------------------------------- strategies

def _huge_int(digits: int) -> bytes:
    return b"[[[" + b"9" * digits + b"]]]"


HOSTILE_JSON = st.one_of(
    st.integers(4301, 20000).map(_huge_int),  # int() refuses past 4300 digits
    st.integers(310, 4000).map(_huge_int),  # converts, then overflows a float
    st.integers(6, 3000).map(lambda n: b"[" * n + b"0" + b"]" * n),  # deep nesting
    st.integers(1, 3000).map(lambda n: b'{"data":' * n + b"[]" + b"}" * n),
    st.sampled_from([b"[[[NaN]]]", b"[[[Infinity]]]", b"[[[-Infinity]]]", b"[[[1e999]]]",
                     b'{"data": [[[NaN]]]}', b"[[[1]]]\x00", b"[\xff\xfe]", b'["\\ud800"]',
                     b'{"data": "\\udfff"}', b'{"\xc3\x28": 1}', b"[[[1,]]]", b"{}",
                     b'{"data": [[[0.1]]], "data": 1}', b"[" + b"0," * 200000 + b"0]"]),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
        lambda children: st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=60,
    ).map(lambda doc: json.dumps(doc).encode()),
)
BODIES = st.one_of(
    st.binary(max_size=600),
    HOSTILE_JSON,
    st.binary(max_size=300).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
    st.binary(max_size=300).map(lambda tail: b"\xff\xd8\xff" + tail),
    # Text bodies, lone surrogates included (a str TorchServe might hand over).
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0xFFFF,
                                   categories=("Cs", "Cc", "Nd", "Lu")), max_size=40),
)
PIN_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\u00b2", "\u0663", "\U0001d7da", "9" * 5000, "-1", "+1", " 1", "1_0",
                     "0x1", "1e3", "\ud800", "L0\r\nX-Injected: 1", "\x00", "999999",
                     "L" * 100000, "\u2028"]),
    st.integers(0, 10**6).map(str),
    st.binary(max_size=10),  # not a str at all
    st.none(),
)
HEADERS: st.SearchStrategy[Any] = st.one_of(
    st.dictionaries(st.sampled_from([PIN, PIN.lower(), PIN.upper(), "Content-Type"]),
                    PIN_VALUES, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=10), st.binary(max_size=5), st.integers()),
                    st.one_of(st.text(max_size=10), st.binary(max_size=5)), max_size=3),
    st.sampled_from([None, [], "x", 7]),  # not a mapping at all
)
ROWS = st.one_of(
    BODIES.map(lambda body: {"body": body}),
    BODIES.map(lambda body: {"data": body}),
    BODIES.map(lambda body: {"file": bytearray(body) if isinstance(body, bytes) else body}),
    st.sampled_from([None, 7, "text", [], {}, {"data": None, "body": None},
                     {"data": {"data": [[[0.1]]]}}, {"data": [[[float("nan")]]]}]),
    st.recursive(st.integers(), lambda c: st.lists(c, max_size=3), max_leaves=10)
    .map(lambda doc: {"data": doc}),
)


@st.composite
def mixed_batches(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[bool]]:
    """Hostile rows at random places among good ones (good: no header or a valid pin)."""
    bad = draw(st.lists(st.tuples(ROWS, HEADERS), min_size=1, max_size=4))
    good = draw(st.lists(st.sampled_from([None, *NAMES, "0", "2"]), min_size=1, max_size=4))
    items: list[tuple[Any, Any, bool]] = [(row, head, False) for row, head in bad]
    items += [({"body": GOOD_JSON}, {PIN: pin} if pin else {}, True) for pin in good]
    order = draw(st.permutations(range(len(items))))
    shuffled = [items[i] for i in order]
    return ([r for r, _, _ in shuffled], [h for _, h, _ in shuffled],
            [ok for _, _, ok in shuffled])


# ----------------------------------------------------------------------------- properties

@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(batch=mixed_batches())
def test_every_good_request_is_answered_whatever_its_neighbours_hold(
    tmp_path: Path, batch: tuple[list[Any], list[Any], list[bool]],
) -> None:
    rows, headers, good = batch
    h, _ = handler(tmp_path)
    context = run_batch(h, rows, headers)
    for idx, ok in enumerate(good):
        if ok:
            assert idx not in context.statuses, context.statuses.get(idx)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_any_body_is_a_tensor_or_a_4xx(tmp_path: Path, body: bytes | str) -> None:
    h, metrics = handler(tmp_path)
    context = run_batch(h, [{"body": body}, {"body": GOOD_JSON}], [{}, {}])
    assert 1 not in context.statuses
    if 0 in context.statuses:
        assert 400 <= context.statuses[0][0] < 500
        assert metrics.rejected and all(400 <= s < 500 for s in metrics.rejected)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pin=PIN_VALUES)
def test_any_pin_value_is_a_level_or_a_4xx(tmp_path: Path, pin: Any) -> None:
    h, _ = handler(tmp_path)
    context = run_batch(h, [{"body": GOOD_JSON}] * 2, [{PIN: pin}, {}])
    assert 1 not in context.statuses
    if 0 in context.statuses:
        assert context.statuses[0][0] == 400


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(headers=HEADERS)
def test_any_header_mapping_is_survived(tmp_path: Path, headers: Any) -> None:
    h, _ = handler(tmp_path)
    context = run_batch(h, [{"body": GOOD_JSON}] * 2, [headers, {}])
    assert 1 not in context.statuses


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROWS, max_size=4))
def test_any_rows_are_answered_one_each(tmp_path: Path, rows: list[Any]) -> None:
    h, _ = handler(tmp_path)
    run_batch(h, [*rows, {"body": GOOD_JSON}], [{}] * (len(rows) + 1))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_runtime_alone_never_raises(tmp_path: Path, data: st.DataObject) -> None:
    """The runtime's own seam, with headers that are not even strings."""
    rt = ElasticRuntime(LEVELS, RuntimeSettings(control_file=None, allow_pin=True))
    body = data.draw(BODIES)
    headers: Any = data.draw(HEADERS)
    out = rt.handle([RawRequest(body, headers), RawRequest(GOOD_JSON)])
    assert isinstance(out[1], Success)
    assert isinstance(out[0], (Success, Failure))
    if isinstance(out[0], Failure):
        assert 400 <= out[0].status < 500 and plain_and_bounded(out[0].reason, MAX_REASON)


# ----------------------------------------------------------------------------- examples

@pytest.mark.parametrize("pin", ["\u00b2", "\u0663", "9" * 5000, "1" * 7])
def test_digit_pins_python_cannot_or_should_not_convert_are_400(tmp_path: Path,
                                                                pin: str) -> None:
    # Before: str.isdigit() let "²" and 5000 digits through to int(), whose ValueError
    # escaped the runtime and failed the whole batch.
    h, _ = handler(tmp_path)
    context = run_batch(h, [{"body": GOOD_JSON}] * 2, [{PIN: pin}, {}])
    assert context.statuses[0][0] == 400 and 1 not in context.statuses


def test_a_surrogate_text_body_is_400_and_its_neighbour_served(tmp_path: Path) -> None:
    # Before: str.encode("utf-8") raised UnicodeEncodeError out of decode().
    h, _ = handler(tmp_path)
    context = run_batch(h, [{"body": "[\ud800]"}, {"body": GOOD_JSON}], [{}, {}])
    assert context.statuses[0][0] == 400 and 1 not in context.statuses


def test_a_huge_integer_in_json_is_400(tmp_path: Path) -> None:
    # Before: json.loads raised ValueError (not JSONDecodeError) past 4300 digits.
    h, _ = handler(tmp_path)
    context = run_batch(h, [{"body": _huge_int(5000)}, {"body": GOOD_JSON}], [{}, {}])
    assert context.statuses[0][0] == 400 and 1 not in context.statuses


def test_reason_with_newlines_reaches_the_frontend_plain(tmp_path: Path) -> None:
    h, _ = handler(tmp_path)
    context = run_batch(h, [{"body": GOOD_JSON}], [{PIN: "L0\r\nX-Injected: yes"}])
    code, phrase = context.statuses[0]
    assert code == 400 and "\r" not in phrase and "\n" not in phrase


def test_an_unexpected_runtime_failure_is_500_for_the_batch_not_a_crash(tmp_path: Path) -> None:
    h, _ = handler(tmp_path)

    def broken(_: Any) -> Any:
        raise RuntimeError("a bug")

    h.runtime.handle = broken  # type: ignore[method-assign, union-attr]
    context = run_batch(h, [{"body": GOOD_JSON}] * 2, [{}, {}])
    assert {code for code, _ in context.statuses.values()} == {500}


class TestPinnedRequestsAndTheSignal:
    def test_pinned_latency_is_reported_apart(self, tmp_path: Path) -> None:
        h, metrics = handler(tmp_path)
        run_batch(h, [{"body": GOOD_JSON}] * 3, [{PIN: "small"}, {}, {PIN: "full"}])
        assert [level for level, _ in metrics.served] == ["full"]
        assert sorted(level for level, _ in metrics.pinned) == ["full", "small"]

    def test_the_active_level_runs_before_pinned_levels(self, tmp_path: Path) -> None:
        # A pinned group's forward pass must not lengthen the unpinned requests' latency.
        ticks = iter(range(1000))
        metrics = RecordingMetrics()
        rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=None, allow_pin=True,
                                                           default_level="small"),
                            metrics, clock=lambda: float(next(ticks)))
        rt.handle([RawRequest(GOOD_JSON, {PIN: "full"}), RawRequest(GOOD_JSON)])
        (served,) = metrics.served
        (pinned,) = metrics.pinned
        assert served[0] == "small" and served[1] < pinned[1]

    def test_pinning_stays_refused_where_not_allowed(self, tmp_path: Path) -> None:
        h, metrics = handler(tmp_path, allow_pin=False)
        context = run_batch(h, [{"body": GOOD_JSON}] * 2, [{PIN: "small"}, {}])
        assert context.statuses[0][0] == 403 and 1 not in context.statuses
        write_control_file(tmp_path / "level.json", ControlState("full", 1, allow_pin=True))
        context = run_batch(h, [{"body": GOOD_JSON}], [{PIN: "small"}])
        assert not context.statuses  # the control file may allow it at runtime
        write_control_file(tmp_path / "level.json", ControlState("full", 2, allow_pin=False))
        context = run_batch(h, [{"body": GOOD_JSON}], [{PIN: "small"}])
        assert context.statuses[0][0] == 403
        assert metrics.rejected == [403, 403]


def test_model_failure_is_500_for_its_group_only_among_hostile_neighbours(
    tmp_path: Path,
) -> None:
    h, _ = handler(tmp_path, levels=tiny_levels())  # its own modules: one is broken below

    def broken(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    assert h.runtime is not None
    h.runtime.levels.modules[0].forward = broken  # type: ignore[method-assign]
    rows: list[Mapping[str, Any]] = [{"body": GOOD_JSON}, {"body": b"\xff"}, {"body": GOOD_JSON}]
    context = run_batch(h, rows, [{PIN: "small"}, {}, {}])
    assert context.statuses[0][0] == 500 and context.statuses[1][0] == 415
    assert 2 not in context.statuses
