"""The gateway's v2 routes against a stand-in TorchServe: the refusals a real server cannot be
made to show on demand (unreachable upstream, a body over the limit, a hostile pin header),
what travels upstream, and the description of a model whose archive the gateway was not given.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from elastiserve_serve.gateway import Gateway, GatewayConfig
from elastiserve_serve.gateway_keys import KeyFile

KEY = "k" * 43
AUTH = {"Authorization": f"Bearer {KEY}"}
TENSOR = {"inputs": [{"name": "input-0", "shape": [1, 1, 1, 1], "datatype": "FP32",
                      "data": [0.5]}]}

Scenario = Callable[[TestClient[Any, Any], list[dict[str, Any]]], Coroutine[Any, Any, None]]


def stand_in(seen: list[dict[str, Any]]) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "body": await request.read(),
                     "headers": {k.lower(): v for k, v in request.headers.items()}})
        level = request.headers.get("x-elastiserve-level", "L1")
        return web.json_response({"level": level, "predictions": [[{"label": "a",
                                                                    "probability": 1.0}]]},
                                 headers={"x-elastiserve-level": level})

    app = web.Application()
    app.router.add_post("/predictions/{model}", predict)
    return app


def run(scenario: Scenario, tmp_path: Path, *, up: bool = True) -> None:
    async def main() -> None:
        seen: list[dict[str, Any]] = []
        upstream = TestServer(stand_in(seen))
        await upstream.start_server()
        url = str(upstream.make_url("")).rstrip("/")
        if not up:
            await upstream.close()
        (tmp_path / "key").write_text(KEY)
        keys = KeyFile(tmp_path / "key")
        keys.load()
        config = GatewayConfig(inference_url=url, management_url=url, models=["m"],
                               max_request_size=1024, level_names=("L0", "L1"))
        try:
            async with TestClient(TestServer(Gateway(config, keys).app())) as client:
                await scenario(client, seen)
        finally:
            await upstream.close()

    asyncio.run(main())


def test_only_the_body_its_type_and_the_pin_travel_upstream(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], seen: list[dict[str, Any]]) -> None:
        request = {**TENSOR, "parameters": {"level": "L0"}}
        answer = await client.post("/v2/models/m/infer", data=json.dumps(request),
                                   headers={**AUTH, "Cookie": "c=1"})
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["parameters"]["level"] == "L0"
        (call,) = seen
        assert call["path"] == "/predictions/m"
        assert json.loads(call["body"]) == {"data": [[[[0.5]]]]}
        assert call["headers"]["x-elastiserve-level"] == "L0"
        assert call["headers"]["content-type"] == "application/json"
        assert "authorization" not in call["headers"] and "cookie" not in call["headers"]

    run(scenario, tmp_path)


def test_an_unreachable_model_server_is_503_in_v2_shape(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], _seen: list[dict[str, Any]]) -> None:
        answer = await client.post("/v2/models/m/infer", data=json.dumps(TENSOR), headers=AUTH)
        assert answer.status == 503
        assert await answer.json() == {"error": "the model server is unreachable"}

    run(scenario, tmp_path, up=False)


def test_refusals_before_anything_is_forwarded(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], seen: list[dict[str, Any]]) -> None:
        big = await client.post("/v2/models/m/infer", data=b"x" * 2048, headers=AUTH)
        assert big.status == 413 and "exceeds 1024" in (await big.json())["error"]
        hostile = await client.post("/v2/models/m/infer", data=json.dumps(TENSOR),
                                    headers={**AUTH, "X-Elastiserve-Level": "L" * 300})
        assert hostile.status == 400 and "printable ASCII" in (await hostile.json())["error"]
        control = {**TENSOR, "parameters": {"level": "L0\n"}}
        in_body = await client.post("/v2/models/m/infer", data=json.dumps(control),
                                    headers=AUTH)
        assert in_body.status == 400 and "printable ASCII" in (await in_body.json())["error"]
        bad_name = await client.get("/v2/models/m..x%2F/ready")
        assert bad_name.status in (400, 404) and "error" in await bad_name.json()
        assert seen == []

    run(scenario, tmp_path)


def test_without_its_archive_a_model_is_described_by_its_levels(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], _seen: list[dict[str, Any]]) -> None:
        answer = await client.get("/v2/models/m", headers=AUTH)
        assert answer.status == 200
        body = await answer.json()
        assert body["inputs"][0]["shape"] == [-1, -1, -1, -1]
        assert [level["name"] for level in body["levels"]] == ["L0", "L1"]
        assert "versions" not in body
        # The model server's own version check then applies: any version is forwarded.
        metadata = await client.get("/v2/models/m/versions/7", headers=AUTH)
        assert metadata.status == 200

    run(scenario, tmp_path)


@pytest.mark.parametrize("path", ["/predictions/m", "/ping"])
def test_paths_outside_v2_keep_their_own_error_shape(tmp_path: Path, path: str) -> None:
    async def scenario(client: TestClient[Any, Any], _seen: list[dict[str, Any]]) -> None:
        answer = await client.put(path)
        assert answer.status == 405
        assert "error" not in await answer.text()

    run(scenario, tmp_path)
