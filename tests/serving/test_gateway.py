"""The authenticating gateway without TorchServe: keys, health, forwarding, limits.

A stand-in upstream (an aiohttp app on a real loopback port) plays TorchServe's inference and
management APIs and records what reaches it, so each rule is checked on its own: who gets
401/413/503, which headers travel in each direction, how readiness follows the workers.
The real-TorchServe checks (two replicas, one key, rotation) are in test_gateway_torchserve.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from elastiserve_serve.gateway import (
    BadGatewayRequest,
    Gateway,
    GatewayConfig,
    control_file_ready,
    forwarded,
    ready_workers,
)
from elastiserve_serve.gateway_keys import KeyFile, KeyFileError, check_bearer
from elastiserve_serve.runtime.control import ARRIVAL_HEADER, ControlState, write_control_file

KEY = "k" * 43


# --------------------------------------------------------------------------- bearer check


@pytest.mark.parametrize(
    ("header", "key", "allowed", "says"),
    [
        (f"Bearer {KEY}", KEY.encode(), True, ""),
        (f"bearer {KEY}", KEY.encode(), True, ""),
        (f"Bearer {KEY}\n", KEY.encode(), True, ""),
        (None, KEY.encode(), False, "missing"),
        ("", KEY.encode(), False, "missing"),
        (KEY, KEY.encode(), False, "Bearer <key>"),
        (f"Basic {KEY}", KEY.encode(), False, "Bearer <key>"),
        ("Bearer ", KEY.encode(), False, "Bearer <key>"),
        (f"Bearer {KEY[:-1]}", KEY.encode(), False, "invalid"),
        (f"Bearer {KEY}x", KEY.encode(), False, "invalid"),
        (f"Bearer {KEY}", None, False, "no inference key"),
        # A header byte the server decoded to a lone surrogate: refused, not a crash.
        ("Bearer \udcff\ud800", KEY.encode(), False, "invalid"),
    ],
)
def test_bearer_verdicts(header: str | None, key: bytes | None, allowed: bool, says: str) -> None:
    verdict = check_bearer(header, key)
    assert verdict.allowed is allowed
    assert says in verdict.reason
    assert KEY not in verdict.reason


# --------------------------------------------------------------------------- key file


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    os.replace(partial, path)


def test_key_file_follows_an_atomic_rename_and_strips_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("first\n")
    keys = KeyFile(path)
    assert keys.load() == b"first" == keys.current()
    write_atomically(path, "second")
    assert keys.current() == b"second"


def test_key_file_follows_a_secret_volume_symlink_swap(tmp_path: Path) -> None:
    """The kubelet's layout: key -> ..data/key, ..data -> ..<timestamp>; an update writes a new
    timestamped directory and renames a new ..data link over the old one."""
    def version(name: str, key: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "key").write_text(key)

    version("..v1", "old")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "key").symlink_to("..data/key")
    keys = KeyFile(tmp_path / "key")
    assert keys.load() == b"old"
    version("..v2", "new")
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert keys.current() == b"new"


def test_an_unreadable_or_emptied_key_refuses_rather_than_keeping_the_old(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("secret")
    keys = KeyFile(path)
    keys.load()
    write_atomically(path, "  \n")
    assert keys.current() is None
    path.unlink()
    assert keys.current() is None
    write_atomically(path, "back")
    assert keys.current() == b"back"


@pytest.mark.parametrize("content", [None, "", "\n", "x" * 5000])
def test_load_refuses_a_missing_empty_or_huge_key(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KeyFileError, match=str(path)):
        KeyFile(path).load()


# --------------------------------------------------------------------------- gateway


@dataclass
class Upstream:
    """What the stand-in TorchServe saw and what it answers."""

    worker_status: str = "READY"
    describes: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/predictions/{model}", self.predict)
        app.router.add_post("/predictions/{model}/{version}", self.predict)
        app.router.add_get("/models/{model}", self.describe)
        return app

    async def predict(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        if request.match_info["model"] == "broken":
            return web.json_response({"code": 400, "message": "bad image"}, status=400,
                                     headers={"x-elastiserve-level": "L0"})
        return web.Response(body=b'{"level": "L1"}', content_type="application/json",
                            headers={"x-elastiserve-level": "L1", "x-other": "dropped"})

    async def describe(self, request: web.Request) -> web.Response:
        self.describes += 1
        workers = [{"id": "9000", "status": self.worker_status}]
        return web.json_response([{"modelName": request.match_info["model"],
                                   "workers": workers}])


Scenario = Callable[[TestClient[Any, Any], Upstream], Coroutine[Any, Any, None]]


async def _with_gateway(
    scenario: Scenario, keys: KeyFile | None, *, upstream_up: bool = True,
    ready_cache_s: float = 0.0, max_request_size: int = 1024, replica: str = "",
    control_file: Path | None = None, level_names: tuple[str, ...] = (),
) -> None:
    upstream = Upstream()
    async with _serve(upstream.app(), upstream_up) as url:
        config = GatewayConfig(inference_url=url, management_url=url, models=["m"],
                               max_request_size=max_request_size, ready_cache_s=ready_cache_s,
                               replica=replica, control_file=control_file,
                               level_names=level_names)
        async with TestClient(TestServer(Gateway(config, keys).app())) as client:
            await scenario(client, upstream)


class _serve:
    """The stand-in on a real port, or a port nobody listens on (``up=False``)."""

    def __init__(self, app: web.Application, up: bool) -> None:
        self.server = TestServer(app)
        self.up = up

    async def __aenter__(self) -> str:
        await self.server.start_server()
        url = str(self.server.make_url("")).rstrip("/")
        if not self.up:
            await self.server.close()
        return url

    async def __aexit__(self, *_: object) -> None:
        await self.server.close()


def run(scenario: Scenario, keys: KeyFile | None, **kwargs: Any) -> None:
    asyncio.run(_with_gateway(scenario, keys, **kwargs))


@pytest.fixture
def keys(tmp_path: Path) -> KeyFile:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    key_file = KeyFile(path)
    key_file.load()
    return key_file


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_predictions_need_the_key_and_reach_torchserve_only_with_it(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            refused = await client.post("/predictions/m", data=b"img", headers=headers)
            assert refused.status == 401
            body = await refused.json()
            assert body["code"] == 401 and body["message"] and KEY not in str(body)
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert upstream.seen == []
        answer = await client.post("/predictions/m", data=b"img", headers=AUTH)
        assert answer.status == 200 and await answer.json() == {"level": "L1"}
        (seen,) = upstream.seen
        assert seen["path"] == "/predictions/m" and seen["body"] == b"img"

    run(scenario, keys)


def test_headers_travel_both_ways_but_never_the_credential(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        answer = await client.post(
            "/predictions/m/2.0", data=b"img",
            headers={**AUTH, "Content-Type": "image/png", "X-Elastiserve-Level": "0",
                     "Cookie": "c=1"})
        assert answer.status == 200
        assert answer.headers["x-elastiserve-level"] == "L1"
        assert answer.headers["Content-Type"].startswith("application/json")
        assert "x-other" not in answer.headers
        (seen,) = upstream.seen
        sent = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"] == "/predictions/m/2.0"
        assert sent["content-type"] == "image/png" and sent["x-elastiserve-level"] == "0"
        assert "authorization" not in sent and "cookie" not in sent

    run(scenario, keys)


def test_the_gateway_stamps_the_arrival_and_a_clients_own_stamp_never_passes(
        keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        before = time.time_ns()
        answer = await client.post(
            "/predictions/m", data=b"img",
            headers={**AUTH, "X-Elastiserve-Arrival-Ns": "1", "x-elastiserve-arrival-ns": "2"})
        after = time.time_ns()
        assert answer.status == 200
        (seen,) = upstream.seen
        stamps = [v for k, v in seen["headers"].items() if k.lower() == ARRIVAL_HEADER]
        assert len(stamps) == 1 and before <= int(stamps[0]) <= after

    run(scenario, keys)


def test_the_answer_names_the_replica_when_it_has_a_name(keys: KeyFile) -> None:
    async def named(client: TestClient[Any, Any], _upstream: Upstream) -> None:
        answer = await client.post("/predictions/m", data=b"img", headers=AUTH)
        assert answer.headers["x-elastiserve-replica"] == "fmnist-serving-abc"

    async def anonymous(client: TestClient[Any, Any], _upstream: Upstream) -> None:
        answer = await client.post("/predictions/m", data=b"img", headers=AUTH)
        assert "x-elastiserve-replica" not in answer.headers

    run(named, keys, replica="fmnist-serving-abc")
    run(anonymous, keys)


def test_torchserve_errors_come_back_with_their_status_and_level(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        answer = await client.post("/predictions/broken", data=b"x", headers=AUTH)
        assert answer.status == 400 and (await answer.json())["message"] == "bad image"
        assert answer.headers["x-elastiserve-level"] == "L0"

    run(scenario, keys)


def test_an_oversized_body_is_refused_before_forwarding(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        announced = await client.post("/predictions/m", data=b"x" * 1025, headers=AUTH)
        assert announced.status == 413
        assert (await announced.json())["type"] == "RequestEntityTooLarge"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 512

        streamed = await client.post("/predictions/m", data=chunks(), headers=AUTH)
        assert streamed.status == 413
        assert upstream.seen == []
        fits = await client.post("/predictions/m", data=b"z" * 1024, headers=AUTH)
        assert fits.status == 200

    run(scenario, keys)


def test_torchserve_unreachable_is_503(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], _upstream: Upstream) -> None:
        answer = await client.post("/predictions/m", data=b"img", headers=AUTH)
        assert answer.status == 503
        assert (await answer.json())["type"] == "ServiceUnavailable"
        ready = await client.get("/v2/health/ready")
        assert ready.status == 503 and "did not answer" in (await ready.json())["reason"]
        live = await client.get("/v2/health/live")
        assert live.status == 200 and await live.json() == {"live": True}

    run(scenario, keys, upstream_up=False)


def test_health_needs_no_key_and_follows_the_workers(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        upstream.worker_status = "UNLOADING"
        ready, ping = await client.get("/v2/health/ready"), await client.get("/ping")
        assert ready.status == 503 == ping.status
        assert "no READY worker" in (await ready.json())["reason"]
        assert (await ping.json())["status"] == "Unhealthy"
        upstream.worker_status = "READY"
        ready, ping = await client.get("/v2/health/ready"), await client.get("/ping")
        assert ready.status == 200 and await ready.json() == {"ready": True}
        assert ping.status == 200 and await ping.json() == {"status": "Healthy"}

    run(scenario, keys)


def test_probes_within_the_cache_window_ask_torchserve_once(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        answers = await asyncio.gather(*(client.get("/v2/health/ready") for _ in range(10)))
        assert {a.status for a in answers} == {200}
        assert upstream.describes == 1

    run(scenario, keys, ready_cache_s=3600.0)


def test_without_a_key_file_the_gateway_checks_no_key() -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        answer = await client.post("/predictions/m", data=b"img")
        assert answer.status == 200 and len(upstream.seen) == 1

    run(scenario, None)


def test_rotation_applies_to_the_next_request(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], _upstream: Upstream) -> None:
        assert (await client.post("/predictions/m", data=b"a", headers=AUTH)).status == 200
        write_atomically(keys.path, "rotated")
        assert (await client.post("/predictions/m", data=b"a", headers=AUTH)).status == 401
        rotated = {"Authorization": "Bearer rotated"}
        assert (await client.post("/predictions/m", data=b"a", headers=rotated)).status == 200

    run(scenario, keys)


@pytest.mark.parametrize(
    ("described", "count"),
    [
        ([{"workers": [{"status": "READY"}, {"status": "READY"}]}], 2),
        ([{"workers": [{"status": "STARTING"}]}, {"workers": [{"status": "READY"}]}], 1),
        ([{"workers": []}], 0),
        ({"code": 404}, 0),
        ([{"workers": ["READY"]}], 0),
    ],
)
def test_ready_workers_reads_every_version(described: Any, count: int) -> None:
    assert ready_workers(described) == count


# --------------------------------------------------------------------------- hostile requests


GOOD_REQUEST = (b"POST /predictions/m HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                + b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nimg")
HOSTILE_REQUESTS = {
    "pin-invalid-utf8": b"X-Elastiserve-Level: \xff\xfe\r\n",
    "pin-latin1": b"X-Elastiserve-Level: L\xe9vel\r\n",
    "pin-control-char": b"X-Elastiserve-Level: L0\x01\r\n",
    "pin-huge": b"X-Elastiserve-Level: " + b"9" * 6000 + b"\r\n",
    "content-type-invalid-utf8": b"Content-Type: image/\xc3\x28\r\n",
    "content-type-del": b"Content-Type: image/png\x7f\r\n",
    "authorization-invalid-utf8": b"Authorization: Bearer \xed\xa0\x80\r\n",
}
HOSTILE_PATHS = {
    "dotdot": b"/predictions/..",
    "encoded-slash": b"/predictions/m%2F..%2Fmodels",
    "encoded-nul": b"/predictions/m%00",
    "invalid-utf8": b"/predictions/%ff%fe",
    "surrogate": b"/predictions/%ed%a0%80",
    "huge-version": b"/predictions/m/" + b"9" * 5000,
    "newline": b"/predictions/m%0d%0aX-Injected:%201",
    "dot-version": b"/predictions/m/..",
}


async def _raw(client: TestClient[Any, Any], request: bytes) -> int:
    """Send ``request`` as raw bytes (no client library cleans them) and read the status."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1]) if line.startswith(b"HTTP/1.") else -1


def _with_header(header: bytes) -> bytes:
    head, _, rest = GOOD_REQUEST.partition(b"Content-Length")
    if header.startswith(b"Authorization"):
        head = head.replace(b"Authorization: Bearer " + KEY.encode() + b"\r\n", b"")
    return head + header + b"Content-Length" + rest


def _with_path(path: bytes) -> bytes:
    return GOOD_REQUEST.replace(b"/predictions/m", path, 1)


@pytest.mark.parametrize("name", sorted(HOSTILE_REQUESTS) + sorted(HOSTILE_PATHS))
def test_a_hostile_request_is_its_own_4xx_and_the_next_one_is_served(
    keys: KeyFile, name: str,
) -> None:
    request = (_with_header(HOSTILE_REQUESTS[name]) if name in HOSTILE_REQUESTS
               else _with_path(HOSTILE_PATHS[name]))

    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        status = await _raw(client, request)
        assert 400 <= status < 500, (name, status)
        assert upstream.seen == []  # nothing malformed was forwarded
        assert await _raw(client, GOOD_REQUEST) == 200
        assert len(upstream.seen) == 1

    run(scenario, keys)


@settings(max_examples=300, deadline=None)
@given(
    model=st.text(max_size=40) | st.sampled_from(["..", ".", "m/../x", "m\x00", "\ud800"]),
    version=st.none() | st.text(max_size=20),
    headers=st.dictionaries(st.sampled_from(["Content-Type", "x-elastiserve-level", "Cookie"]),
                            st.text(max_size=40) | st.binary(max_size=5), max_size=3),
)
def test_what_is_forwarded_is_a_plain_name_and_plain_headers(
    model: str, version: str | None, headers: dict[str, Any],
) -> None:
    match = {"model": model} if version is None else {"model": model, "version": version}
    try:
        path, sent = forwarded(match, headers)
    except BadGatewayRequest:
        return
    assert re.fullmatch(r"/predictions/[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?",
                        path)
    assert ".." not in path.split("/")
    assert set(sent) <= {"Content-Type", "x-elastiserve-level"}
    assert all(re.fullmatch(r"[\x20-\x7e]{0,256}", v) for v in sent.values())


def test_upstream_headers_come_back_plain(keys: KeyFile) -> None:
    async def scenario(client: TestClient[Any, Any], upstream: Upstream) -> None:
        answer = await client.post("/predictions/m", data=b"img", headers=AUTH)
        assert answer.status == 200
        assert all(0x20 <= ord(c) < 0x7F for c in answer.headers["x-elastiserve-replica"])

    run(scenario, keys, replica="pod-\u00e9\u2028" + "x" * 300)


# --------------------------------------------------------------------------- readiness and level


def test_ready_waits_for_a_valid_control_file_naming_a_served_level(
    keys: KeyFile, tmp_path: Path,
) -> None:
    control = tmp_path / "shm" / "level.json"

    async def reason(client: TestClient[Any, Any]) -> tuple[int, str]:
        answer = await client.get("/v2/health/ready")
        return answer.status, str((await answer.json()).get("reason", ""))

    async def scenario(client: TestClient[Any, Any], _upstream: Upstream) -> None:
        status, why = await reason(client)
        assert status == 503 and "does not exist" in why
        control.parent.mkdir(parents=True)
        control.write_bytes(b"{garbage")
        status, why = await reason(client)
        assert status == 503 and "not JSON" in why
        control.unlink()
        write_control_file(control, ControlState(7, 1))
        status, why = await reason(client)
        assert status == 503 and "not one of the 3 levels" in why
        control.unlink()
        control.symlink_to(tmp_path / "elsewhere")
        status, why = await reason(client)
        assert status == 503 and "link" in why
        control.unlink()
        write_control_file(control, ControlState(1, 2))
        assert await reason(client) == (200, "")
        assert (await client.get("/ping")).status == 200

    run(scenario, keys, control_file=control, level_names=("L0", "L1", "L2"))


def test_control_file_ready_without_a_control_file_is_ready() -> None:
    assert control_file_ready(None, ())[0]
