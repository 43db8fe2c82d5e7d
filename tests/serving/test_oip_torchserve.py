"""The Open Inference Protocol v2 through the gateway, in front of a real TorchServe.

The cases are KServe's REST conformance cases for one model server (``docs/predict-api/v2/
required_api.md`` and ``python/kserve/test/test_server.py::TestV2Endpoints`` in kserve/kserve):
health, server and model metadata, model ready (and not ready: 503), unknown model 404,
inference with the id echoed, request parameters of every JSON type, requested outputs,
binary tensor data in and out, FP16 in JSON refused (400), every error as ``{"error": ...}``.
Left out as not applicable: the model repository extension (load/unload; one model per server
here), list-models (a KServe addition outside the protocol), CloudEvents, the OpenAI routes.

Then what is elastiserve's own: the answer names the level (``parameters``, an output, a
header), ``parameters.level`` pins like the header, a level switch shows in the next answer,
images as BYTES, the key guards metadata and inference but not the health routes, and the two
APIs agree: the same image (or tensor) gets the same answer through v2 as through
``/predictions``.

One TorchServe (one worker) and one in-process gateway per module, as a pod runs them: the
gateway on a free port, TorchServe's key check off behind it on loopback.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.gateway import Gateway, GatewayConfig
from elastiserve_serve.gateway_keys import KeyFile
from elastiserve_serve.gateway_server import GatewayServer
from elastiserve_serve.level_agent import set_level
from elastiserve_serve.ts_config import MAX_REQUEST_SIZE
from elastiserve_serve.ts_server import run_torchserve

from .bundles import LEVELS, make_bundle
from .tiny import png_bytes

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

MODEL = "elastic"
SIZE = 16
HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class V2:
    url: str
    key: str
    control_file: Path
    predictions_url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, key: bool = True) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.auth if key else {}, timeout=60)

    def infer(self, body: Any, path: str = f"/v2/models/{MODEL}/infer",
              headers: dict[str, str] | None = None, key: bool = True) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}{path}", content=content,
                          headers={"Content-Type": "application/json",
                                   **(self.auth if key else {}), **(headers or {})},
                          timeout=60)


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2]:
    assert shutil.which("java") is not None, "TorchServe needs Java 17 on PATH"
    root = tmp_path_factory.mktemp("oip")
    control = root / "shm" / "level.json"
    spec = ArchiveSpec(workers=1, batch_size=4, max_batch_delay_ms=5,
                       handler={"control_file": str(control), "allow_pin": True, "threads": 1})
    mar = build_archive(make_bundle(root / "bundle", size=SIZE), root / "store", MODEL, spec)
    set_level(control, "L1")
    key = secrets.token_urlsafe(32)
    (root / "key").write_text(key + "\n")
    keys = KeyFile(root / "key")
    keys.load()
    with run_torchserve(root / "run", root / "store", [f"{MODEL}={MODEL}.mar"],
                        token_authorization=False) as server:
        config = GatewayConfig(
            inference_url=server.inference_url, management_url=server.management_url,
            models=[MODEL], max_request_size=MAX_REQUEST_SIZE, ready_cache_s=0.0,
            replica="replica-a", control_file=control, level_names=LEVELS,
            model_archives={MODEL: mar},
        )
        gateway = GatewayServer(Gateway(config, keys), "127.0.0.1", 0)
        port = gateway.start()
        try:
            yield V2(f"http://127.0.0.1:{port}", key, control,
                     f"http://127.0.0.1:{port}/predictions/{MODEL}")
        finally:
            gateway.stop()


def pixels(seed: int, n: int = 1) -> list[float]:
    """``n`` samples of [1, SIZE, SIZE] pixel values in [0, 1], flattened row-major."""
    rng = np.random.default_rng(seed)
    values: list[float] = rng.random(n * SIZE * SIZE, dtype=np.float32).tolist()
    return values


def tensor_request(values: list[float], n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [n, 1, SIZE, SIZE], "datatype": "FP32",
                        "data": values}], **extra}


def outputs(answer: httpx.Response) -> dict[str, dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    return {out["name"]: out for out in answer.json()["outputs"]}


# --------------------------------------------------------------------------- health


def test_server_live_and_ready(v2: V2) -> None:
    live = v2.get("/v2/health/live", key=False)
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = v2.get("/v2/health/ready", key=False)
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_model_ready_needs_no_key_and_404s_an_unknown_model(v2: V2) -> None:
    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1.0/ready"):
        ready = v2.get(path, key=False)
        assert ready.status_code == 200 and ready.json() == {"name": MODEL, "ready": True}
    unknown = v2.get("/v2/models/InvalidModel/ready", key=False)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "Model with name InvalidModel does not exist."}


def test_a_model_that_cannot_serve_its_level_is_not_ready(v2: V2) -> None:
    """KServe's test_model_not_ready_v2: 503 with the reason; here the replica has no valid
    level control file (what a pod's level agent has not written yet)."""
    moved = v2.control_file.with_name("away.json")
    v2.control_file.rename(moved)
    try:
        for path in (f"/v2/models/{MODEL}/ready", "/v2/health/ready"):
            answer = v2.get(path, key=False)
            assert answer.status_code == 503, (path, answer.text)
            assert "control file" in answer.json()["error"]
        assert "not ready" in v2.get(f"/v2/models/{MODEL}/ready").json()["error"]
    finally:
        moved.rename(v2.control_file)
    assert v2.get(f"/v2/models/{MODEL}/ready", key=False).status_code == 200


# --------------------------------------------------------------------------- metadata


def test_server_metadata(v2: V2) -> None:
    answer = v2.get("/v2")
    assert answer.status_code == 200
    body = answer.json()
    assert body["name"] == "elastiserve" and isinstance(body["version"], str)
    assert set(body["extensions"]) == {"binary_tensor_data", "elastiserve_levels"}


def test_model_metadata_names_tensors_and_levels(v2: V2) -> None:
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1.0"):
        answer = v2.get(path)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["name"] == MODEL and body["versions"] == ["1.0"]
        assert body["platform"] == "pytorch_elastiserve"
        assert body["inputs"] == [{"name": "input-0", "datatype": "FP32",
                                   "shape": [-1, 1, SIZE, SIZE]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
            ("label", "BYTES", [-1, 5]), ("probability", "FP32", [-1, 5]),
            ("level", "BYTES", [-1])]
        assert [level["name"] for level in body["levels"]] == list(LEVELS)
        macs = [level["macs"] for level in body["levels"]]
        assert macs == sorted(macs) and macs[0] < macs[-1]
        assert body["parameters"]["active_level"] == "L1"


def test_unknown_models_and_versions_are_404_in_v2_shape(v2: V2) -> None:
    for path in ("/v2/models/InvalidModel", f"/v2/models/{MODEL}/versions/9"):
        answer = v2.get(path)
        assert answer.status_code == 404 and "error" in answer.json(), answer.text
    infer = v2.infer(tensor_request(pixels(0)), path="/v2/models/InvalidModel/infer")
    assert infer.status_code == 404
    assert infer.json() == {"error": "Model with name InvalidModel does not exist."}
    nowhere = v2.get("/v2/nowhere")
    assert nowhere.status_code == 404 and "error" in nowhere.json()
    wrong_method = v2.get(f"/v2/models/{MODEL}/infer")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_the_key_guards_metadata_and_inference_but_not_health(v2: V2) -> None:
    for answer in (v2.get("/v2", key=False), v2.get(f"/v2/models/{MODEL}", key=False),
                   v2.infer(tensor_request(pixels(0)), key=False),
                   v2.infer(tensor_request(pixels(0)), key=False,
                            headers={"Authorization": "Bearer wrong"})):
        assert answer.status_code == 401, answer.text
        assert set(answer.json()) == {"error"} and v2.key not in answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


# --------------------------------------------------------------------------- inference


def test_infer_echoes_the_id_and_names_the_level(v2: V2) -> None:
    answer = v2.infer(tensor_request(pixels(1), id="42"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["id"] == "42" and body["model_name"] == MODEL
    assert body["model_version"] == "1.0"
    assert body["parameters"] == {"level": "L1", "replica": "replica-a"}
    assert answer.headers["x-elastiserve-level"] == "L1"
    assert answer.headers["x-elastiserve-replica"] == "replica-a"
    out = outputs(answer)
    assert out["label"]["shape"] == [1, 5] and out["label"]["datatype"] == "BYTES"
    assert out["probability"]["shape"] == [1, 5] and out["probability"]["datatype"] == "FP32"
    assert out["level"] == {"name": "level", "shape": [1], "datatype": "BYTES", "data": ["L1"]}
    probabilities = out["probability"]["data"]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


def test_infer_takes_parameters_of_every_json_type(v2: V2) -> None:
    """KServe's test_infer_parameters_v2: string, bool, int and float parameters, on the
    request and on the input."""
    params = {"test-str": "dummy", "test-bool": True, "test-int": 100, "test-float": 1.3}
    request = tensor_request(pixels(2), id="123", parameters=params)
    request["inputs"][0]["parameters"] = params
    answer = v2.infer(request)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "123"


def test_a_batch_and_its_samples_one_by_one_agree(v2: V2) -> None:
    values = pixels(3, n=3)
    batch = outputs(v2.infer(tensor_request(values, n=3)))
    assert batch["label"]["shape"] == [3, 5] and batch["level"]["data"] == ["L1"] * 3
    step = SIZE * SIZE
    for i in range(3):
        one = outputs(v2.infer(tensor_request(values[i * step:(i + 1) * step])))
        assert one["label"]["data"] == batch["label"]["data"][i * 5:(i + 1) * 5]
        assert one["probability"]["data"] == pytest.approx(
            batch["probability"]["data"][i * 5:(i + 1) * 5], abs=1e-5)


def test_only_the_requested_outputs_come_back(v2: V2) -> None:
    answer = v2.infer(tensor_request(pixels(4), outputs=[{"name": "level"}, {"name": "label"}]))
    assert [o["name"] for o in answer.json()["outputs"]] == ["level", "label"]


def test_binary_outputs_with_the_header_length(v2: V2) -> None:
    """KServe's test_binary_data_parameter_precedence: binary_data_output for all, an
    output's own binary_data: false wins for that one."""
    answer = v2.infer(tensor_request(pixels(5), parameters={"binary_data_output": True},
                                     outputs=[{"name": "probability"},
                                              {"name": "label",
                                               "parameters": {"binary_data": False}}]))
    assert answer.status_code == 200, answer.text
    length = int(answer.headers[HEADER])
    document = json.loads(answer.content[:length])
    probability, label = document["outputs"]
    assert "data" not in probability and probability["parameters"]["binary_data_size"] == 20
    assert len(label["data"]) == 5
    values = struct.unpack("<5f", answer.content[length:])
    reference = outputs(v2.infer(tensor_request(pixels(5))))
    assert list(values) == pytest.approx(reference["probability"]["data"], abs=1e-6)
    assert label["data"] == reference["label"]["data"]


def test_binary_tensor_input(v2: V2) -> None:
    values = pixels(6)
    header = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 1, SIZE, SIZE],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": 4 * len(values)}}]})
    body = header.encode() + struct.pack(f"<{len(values)}f", *values)
    answer = v2.infer(body, headers={HEADER: str(len(header)),
                                     "Content-Type": "application/octet-stream"})
    reference = outputs(v2.infer(tensor_request(values)))
    assert outputs(answer)["label"]["data"] == reference["label"]["data"]
    assert outputs(answer)["probability"]["data"] == pytest.approx(
        reference["probability"]["data"], abs=1e-6)


def test_fp16_in_json_and_malformed_requests_are_400_with_a_reason(v2: V2) -> None:
    fp16 = tensor_request(pixels(7))
    fp16["inputs"][0]["datatype"] = "FP16"
    cases = [
        (fp16, "FP16"),
        (b"{not json", "invalid inference request"),
        ({"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "INT32",
                      "data": [[1, 2]]}]}, "INT32"),
        (tensor_request(pixels(7)[:-1]), "elements"),
        ({"inputs": [{"name": "input-0", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32",
                      "data": pixels(7) * 3}]}, "does not match"),
    ]
    for body, says in cases:
        answer = v2.infer(body)
        assert answer.status_code == 400, answer.text
        assert set(answer.json()) == {"error"} and says in answer.json()["error"]


# --------------------------------------------------------------------------- elastiserve's own


def image_request(*images: bytes) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [len(images)], "datatype": "BYTES",
                        "data": [base64.b64encode(i).decode() for i in images]}]}


def test_an_image_gets_the_same_answer_through_both_apis(v2: V2) -> None:
    image = png_bytes(SIZE, SIZE)
    native = httpx.post(v2.predictions_url, content=image, timeout=60,
                        headers={**v2.auth, "Content-Type": "image/png"})
    assert native.status_code == 200, native.text
    (expected,) = native.json()["predictions"]
    out = outputs(v2.infer(image_request(image)))
    assert out["label"]["data"] == [p["label"] for p in expected]
    assert out["probability"]["data"] == [p["probability"] for p in expected]
    assert out["level"]["data"] == [native.json()["level"]]


def test_a_tensor_gets_the_same_answer_through_both_apis(v2: V2) -> None:
    """The v2 FP32 tensor and the /predictions JSON tensor of the same pixels; and an image
    sent as its pixel values (the PNG decoded and scaled to [0, 1] here) answers as the image
    does, so v2's tensor input means what the metadata says."""
    image = png_bytes(SIZE, SIZE)
    scaled = (np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32)
              / 255.0).reshape(-1).tolist()
    native = httpx.post(v2.predictions_url, timeout=60,
                        content=json.dumps({"data": np.reshape(scaled, (1, 1, SIZE, SIZE))
                                            .tolist()}).encode(),
                        headers={**v2.auth, "Content-Type": "application/json"})
    assert native.status_code == 200, native.text
    (expected,) = native.json()["predictions"]
    as_tensor = outputs(v2.infer(tensor_request(scaled)))
    as_image = outputs(v2.infer(image_request(image)))
    assert as_tensor["label"]["data"] == [p["label"] for p in expected] \
        == as_image["label"]["data"]
    assert as_tensor["probability"]["data"] == pytest.approx(as_image["probability"]["data"],
                                                             abs=1e-5)


def test_several_images_in_one_request_and_in_binary_form(v2: V2) -> None:
    images = [png_bytes(SIZE, SIZE), png_bytes(SIZE + 1, SIZE), png_bytes(SIZE, SIZE + 2)]
    from_json = outputs(v2.infer(image_request(*images)))
    assert from_json["label"]["shape"] == [3, 5] and from_json["level"]["data"] == ["L1"] * 3
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = json.dumps({"inputs": [{"name": "input-0", "shape": [3, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]})
    binary = v2.infer(header.encode() + raw, headers={HEADER: str(len(header))})
    assert outputs(binary)["label"] == from_json["label"]


def test_parameters_level_pins_like_the_header(v2: V2) -> None:
    values = pixels(8)
    pinned = v2.infer(tensor_request(values, parameters={"level": "L0"}))
    assert pinned.json()["parameters"]["level"] == "L0"
    assert pinned.headers["x-elastiserve-level"] == "L0"
    assert outputs(pinned)["level"]["data"] == ["L0"]
    by_header = v2.infer(tensor_request(values), headers={"X-Elastiserve-Level": "L0"})
    assert outputs(by_header)["probability"] == outputs(pinned)["probability"]
    unpinned = v2.infer(tensor_request(values))
    assert outputs(unpinned)["level"]["data"] == ["L1"]
    clash = v2.infer(tensor_request(values, parameters={"level": "L0"}),
                     headers={"X-Elastiserve-Level": "L2"})
    assert clash.status_code == 400 and "disagree" in clash.json()["error"]
    unknown = v2.infer(tensor_request(values, parameters={"level": "L9"}))
    assert unknown.status_code == 400 and "unknown level" in unknown.json()["error"]


def test_a_level_switch_shows_in_the_next_answer_and_the_metadata(v2: V2) -> None:
    set_level(v2.control_file, "L2")
    try:
        answer = v2.infer(tensor_request(pixels(9)))
        assert answer.json()["parameters"]["level"] == "L2"
        assert outputs(answer)["level"]["data"] == ["L2"]
        assert v2.get(f"/v2/models/{MODEL}").json()["parameters"]["active_level"] == "L2"
    finally:
        set_level(v2.control_file, "L1")
    assert v2.infer(tensor_request(pixels(9))).json()["parameters"]["level"] == "L1"
