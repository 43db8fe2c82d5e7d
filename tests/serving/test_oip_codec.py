"""The v2 codec and model description without any server: what a request becomes, what is
refused and why, and how answers are put back together.

The real-TorchServe conformance cases are in test_oip_torchserve.py.
"""

from __future__ import annotations

import base64
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from elastiserve_serve.oip_codec import (
    InferPlan,
    OipError,
    RequestedOutput,
    Upstream,
    UpstreamAnswer,
    build_response,
    parse_infer,
)
from elastiserve_serve.oip_model import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_TOP_K,
    OipModel,
    OipModelError,
    oip_model_of_mar,
    oip_model_of_names,
)
from elastiserve_serve.oip_types import ModelLevel
from elastiserve_serve.runtime.settings import RuntimeSettings

MODEL = OipModel(name="m", versions=("1.0",), input_shape=(1, 2, 2),
                 class_names=("a", "b", "c"), levels=(ModelLevel(name="L0"),
                                                      ModelLevel(name="L1")),
                 top_k=2, max_samples=4)


def request(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def fp32(data: Any, shape: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": "input-0", "datatype": "FP32", "shape": shape, "data": data, **extra}


def upstream_json(call: Upstream) -> Any:
    assert call.content_type == "application/json"
    return json.loads(call.body)


# --------------------------------------------------------------------------- requests


def test_a_flat_and_a_nested_tensor_become_the_same_handler_tensor() -> None:
    values = [0.0, 0.25, 0.5, 1.0, 0.1, 0.2, 0.3, 0.4]
    flat = parse_infer(request([fp32(values, [2, 1, 2, 2])]), None, MODEL)
    nested = parse_infer(request([fp32([[[[0, 0.25], [0.5, 1]]], [[[0.1, 0.2], [0.3, 0.4]]]],
                                       [2, 1, 2, 2])]), None, MODEL)
    (call,) = flat.calls
    assert call.samples == 2 and flat.samples == 2
    assert upstream_json(call) == upstream_json(nested.calls[0]) == {
        "data": [[[[0.0, 0.25], [0.5, 1.0]]], [[[0.1, 0.2], [0.3, 0.4]]]]}


def test_a_sample_without_batch_dimension_is_a_batch_of_one() -> None:
    plan = parse_infer(request([fp32([1, 2, 3, 4], [1, 2, 2])]), None, MODEL)
    assert upstream_json(plan.calls[0]) == {"data": [[[[1.0, 2.0], [3.0, 4.0]]]]}


def test_the_id_is_echoed_or_made_up_and_the_level_parameter_pins() -> None:
    given = parse_infer(request([fp32([0] * 4, [1, 1, 2, 2])], id="42",
                                parameters={"level": "L0", "x": 1.5, "y": True}), None, MODEL)
    assert given.request_id == "42" and given.pin == "L0"
    made_up = parse_infer(request([fp32([0] * 4, [1, 1, 2, 2])]), None, MODEL)
    assert len(made_up.request_id) == 36 and made_up.pin is None
    by_index = parse_infer(request([fp32([0] * 4, [1, 1, 2, 2])], parameters={"level": 1}),
                           None, MODEL)
    assert by_index.pin == "1"


def test_images_in_json_are_base64_one_call_each() -> None:
    images = [b"\x89PNG first", b"\xff\xd8\xff second"]
    body = request([{"name": "input-0", "datatype": "BYTES", "shape": [2],
                     "data": [base64.b64encode(i).decode() for i in images]}])
    plan = parse_infer(body, None, MODEL)
    assert [c.body for c in plan.calls] == images
    assert all(c.samples == 1 and c.content_type == "application/octet-stream"
               for c in plan.calls)


def binary_request(tensor: dict[str, Any], raw: bytes, **extra: Any) -> tuple[bytes, str]:
    header = request([{**tensor, "parameters": {"binary_data_size": len(raw)}}], **extra)
    return header + raw, str(len(header))


def test_the_binary_extension_carries_images_and_float_tensors() -> None:
    images = [b"\x89PNG one", b"\x89PNG two!"]
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    body, length = binary_request({"name": "x", "datatype": "BYTES", "shape": [2, 1]}, raw)
    assert [c.body for c in parse_infer(body, length, MODEL).calls] == images
    floats = struct.pack("<4f", 0.5, 0.25, 0.125, 1.0)
    body, length = binary_request({"name": "x", "datatype": "FP32", "shape": [1, 1, 2, 2]},
                                  floats)
    (call,) = parse_infer(body, length, MODEL).calls
    assert upstream_json(call) == {"data": [[[[0.5, 0.25], [0.125, 1.0]]]]}


@pytest.mark.parametrize(
    ("body", "json_length", "status", "says"),
    [
        (b"not json", None, 400, "invalid inference request"),
        (b"{}", None, 400, "inputs: Field required"),
        (request([]), None, 400, "inputs: List should have at least 1 item"),
        (request([fp32([0] * 4, [1, 1, 2, 2]), fp32([0] * 4, [1, 1, 2, 2])]), None, 400,
         "takes one input"),
        (request([fp32([0] * 4, [1, -1, 2, 2])]), None, 400,
         "inputs.0.shape.1: Input should be greater than or equal to 0"),
        (request([fp32([0] * 4, ["1", 1, 2, 2])]), None, 400, "inputs.0.shape.0"),
        (request([fp32([0] * 4, [1, 1, 2, 2])], id=7), None, 400, "id: Input should be a "
         "valid string"),
        (request([{**fp32([0] * 4, [1, 1, 2, 2]), "datatype": "FP16"}]), None, 400,
         "datatype FP16 is not taken"),
        (request([{**fp32([0] * 4, [1, 1, 2, 2]), "datatype": "INT8"}]), None, 400,
         "datatype INT8 is not taken"),
        (request([fp32([0] * 4, [1, 1, 1, 2, 2])]), None, 400, "is not [n,C,H,W] or [C,H,W]"),
        (request([fp32([0] * 16, [1, 1, 4, 4])]), None, 400, "does not match [-1, 1, 2, 2]"),
        (request([fp32([0] * 3, [1, 1, 2, 2])]), None, 400, "3 elements, its shape holds 4"),
        (request([fp32([0] * 5, [1, 1, 2, 2])]), None, 400, "more than the 4 elements"),
        (request([fp32([0, 0, "x", 0], [1, 1, 2, 2])]), None, 400, "element 2 is str"),
        (request([fp32([0, 0, True, 0], [1, 1, 2, 2])]), None, 400, "element 2 is bool"),
        (request([fp32([0] * 4, [0, 1, 2, 2])]), None, 400, "holds no sample"),
        (request([fp32([0] * 20, [5, 1, 2, 2])]), None, 413, "5 samples exceed 4"),
        (request([fp32([0] * 4, [1, 1, 2, 2 ** 40])]), None, 400, "does not match"),
        (request([{"name": "input-0", "datatype": "FP32", "shape": [1, 1, 2, 2]}]), None, 400,
         "'data' is missing"),
        (request([fp32([0] * 4, [1, 1, 2, 2])], parameters={"level": ["L0"]}), None, 400,
         "parameters.level"),
        (request([fp32([0] * 4, [1, 1, 2, 2])], parameters={"level": False}), None, 400,
         "parameters.level"),
        (request([fp32([0] * 4, [1, 1, 2, 2])], outputs=[{"name": "logits"}]), None, 400,
         "unknown output 'logits'"),
        (request([fp32([0] * 4, [1, 1, 2, 2])], outputs=[{"name": "label"}, {"name": "label"}]),
         None, 400, "requested twice"),
        (request([fp32([0] * 4, [1, 1, 2, 2])], parameters={"binary_data_output": "yes"}),
         None, 400, "binary_data_output must be true or false"),
        (request([{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]), None,
         400, "is not base64"),
        (request([{"name": "i", "datatype": "BYTES", "shape": [1], "data": [3]}]), None, 400,
         "BYTES elements in JSON are base64 strings"),
        (request([{"name": "i", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]), None,
         400, "1 elements, its shape holds 2"),
        (request([{"name": "i", "datatype": "BYTES", "shape": [1], "data": [""]}]), None, 400,
         "element 0 is empty"),
        (request([{"name": "i", "datatype": "BYTES", "shape": [1, 2], "data": ["AA=="]}]), None,
         400, "shape [n] or [n, 1]"),
        (request([fp32([0] * 4, [1, 1, 2, 2])]) + b"tail", "x", 400, "whole number of bytes"),
        (request([fp32([0] * 4, [1, 1, 2, 2])]), "99999", 400, "but the body has"),
        (request([fp32([0] * 4, [1, 1, 2, 2])]) + b"tail",
         str(len(request([fp32([0] * 4, [1, 1, 2, 2])]))), 400, "names no binary_data_size"),
        (request([{**fp32([0] * 4, [1, 1, 2, 2]), "parameters": {"binary_data_size": 0}}]),
         None, 400, "both 'data' and binary_data_size"),
    ],
)
def test_refusals_name_their_reason(body: bytes, json_length: str | None, status: int,
                                    says: str) -> None:
    with pytest.raises(OipError) as refused:
        parse_infer(body, json_length, MODEL)
    assert refused.value.status == status
    assert says in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    ("tensor", "raw", "says"),
    [
        ({"datatype": "FP32", "shape": [1, 1, 2, 2]}, b"\0" * 15, "15 bytes of FP32"),
        ({"datatype": "FP32", "shape": [1, 1, 2, 2]}, struct.pack("<4f", 0, 0, float("nan"), 0),
         "non-finite"),
        ({"datatype": "BYTES", "shape": [1]}, b"\x05\0\0", "ends inside an element's length"),
        ({"datatype": "BYTES", "shape": [1]}, struct.pack("<I", 9) + b"abc", "claims 9 bytes"),
        ({"datatype": "BYTES", "shape": [2]}, struct.pack("<I", 1) + b"a" * 2, "ends inside"),
        ({"datatype": "BYTES", "shape": [1]},
         (struct.pack("<I", 1) + b"a") * 2, "more than the 1 elements"),
    ],
)
def test_binary_data_that_does_not_add_up_is_refused(tensor: dict[str, Any], raw: bytes,
                                                     says: str) -> None:
    body, length = binary_request({"name": "x", **tensor}, raw)
    with pytest.raises(OipError) as refused:
        parse_infer(body, length, MODEL)
    assert refused.value.status == 400 and says in refused.value.message, refused.value.message


def test_a_shape_larger_than_the_body_is_refused_before_the_data_is_walked() -> None:
    unknown = oip_model_of_names("m", ("L0",))
    body = request([fp32([0] * 4, [1, 1, 1000, 1000])])
    with pytest.raises(OipError, match="more than the body can hold"):
        parse_infer(body, None, unknown)


def test_an_empty_dimension_is_refused_when_the_geometry_is_unknown() -> None:
    unknown = oip_model_of_names("m", ("L0",))
    with pytest.raises(OipError, match="has an empty dimension"):
        parse_infer(request([fp32([], [1, 1, 0, 2])]), None, unknown)


def test_data_nested_deeper_than_any_shape_is_refused() -> None:
    deep: Any = [0.0]
    for _ in range(20):
        deep = [deep]
    unknown = oip_model_of_names("m", ("L0",))
    with pytest.raises(OipError, match="nested deeper"):
        parse_infer(request([fp32(deep, [1, 1, 1, 1])]), None, unknown)


# --------------------------------------------------------------------------- answers


def handler_answer(level: str, rows: list[list[tuple[str, float]]]) -> UpstreamAnswer:
    predictions = [[{"label": lab, "probability": p} for lab, p in row] for row in rows]
    return UpstreamAnswer(200, json.dumps({"level": level, "predictions": predictions}).encode())


def plan(samples: list[int], outputs: tuple[RequestedOutput, ...] | None = None) -> InferPlan:
    chosen = outputs or tuple(RequestedOutput(n, False) for n in ("label", "probability",
                                                                  "level"))
    return InferPlan("7", None, tuple(Upstream(b"", "x", s) for s in samples), chosen)


def test_answers_become_v2_outputs_naming_the_level() -> None:
    answers = [handler_answer("L1", [[("b", 0.75), ("a", 0.25)], [("c", 0.5), ("a", 0.5)]])]
    response = build_response(plan([2]), "m", "1.0", answers, {"replica": "pod-a"})
    body = json.loads(response.body)
    assert response.content_type == "application/json" and response.level == "L1"
    assert body["model_name"] == "m" and body["model_version"] == "1.0" and body["id"] == "7"
    assert body["parameters"] == {"level": "L1", "replica": "pod-a"}
    label, probability, level = body["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2, 2],
                     "data": ["b", "a", "c", "a"]}
    assert probability == {"name": "probability", "datatype": "FP32", "shape": [2, 2],
                           "data": [0.75, 0.25, 0.5, 0.5]}
    assert level == {"name": "level", "datatype": "BYTES", "shape": [2], "data": ["L1", "L1"]}


def test_a_switch_between_the_calls_of_one_request_names_each_samples_level() -> None:
    answers = [handler_answer("L1", [[("a", 1.0)]]), handler_answer("L0", [[("b", 1.0)]]),
               handler_answer("L1", [[("a", 1.0)]])]
    response = build_response(plan([1, 1, 1]), "m", None, answers)
    body = json.loads(response.body)
    assert response.level == "L1,L0" and body["parameters"]["level"] == "L1,L0"
    assert body["outputs"][2]["data"] == ["L1", "L0", "L1"]
    assert "model_version" not in body


def test_binary_outputs_follow_the_json_in_request_order() -> None:
    answers = [handler_answer("L1", [[("bé", 0.75), ("a", 0.25)]])]
    outputs = (RequestedOutput("probability", True), RequestedOutput("label", True),
               RequestedOutput("level", False))
    response = build_response(plan([1], outputs), "m", None, answers)
    assert response.content_type == "application/octet-stream"
    assert response.json_length is not None
    document = json.loads(response.body[:response.json_length])
    probability, label, level = document["outputs"]
    assert "data" not in probability and probability["parameters"] == {"binary_data_size": 8}
    assert label["parameters"] == {"binary_data_size": 4 + 3 + 4 + 1}
    assert level["data"] == ["L1"]
    tail = response.body[response.json_length:]
    assert struct.unpack("<2f", tail[:8]) == (0.75, 0.25)
    assert tail[8:] == struct.pack("<I", 3) + "bé".encode() + struct.pack("<I", 1) + b"a"


@pytest.mark.parametrize(
    ("answer", "status", "says"),
    [
        (UpstreamAnswer(403, b'{"code": 403, "error": "pinning a level is not allowed"}'), 403,
         "pinning a level is not allowed"),
        (UpstreamAnswer(503, b'{"code": 503, "type": "ServiceUnavailableException", '
                             b'"message": "Model \\"m\\" has no worker to serve inference "}'),
         503, "has no worker"),
        (UpstreamAnswer(400, b"<html>"), 400, "answered HTTP 400"),
        (UpstreamAnswer(302, b""), 502, "answered HTTP 302"),
        (UpstreamAnswer(200, b'{"level": "L0"}'), 502, "could not be read"),
        (UpstreamAnswer(200, b'{"level": "L0", "predictions": []}'), 502, "0 samples for 1"),
    ],
)
def test_a_failed_call_fails_the_request_with_its_status_and_reason(
    answer: UpstreamAnswer, status: int, says: str,
) -> None:
    with pytest.raises(OipError) as failed:
        build_response(plan([1]), "m", None, [answer])
    assert failed.value.status == status and says in failed.value.message


# --------------------------------------------------------------------------- model description


def test_the_handlers_defaults_are_the_descriptions_defaults() -> None:
    defaults = RuntimeSettings()
    assert (defaults.top_k, defaults.limits.max_samples) == (DEFAULT_TOP_K, DEFAULT_MAX_SAMPLES)


def fake_mar(path: Path, manifest: dict[str, Any], config: dict[str, Any]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("MAR-INF/MANIFEST.json",
                         json.dumps({"model": {"modelName": "x", "modelVersion": "2.5"}}))
        archive.writestr("model-config.yaml", yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real bundle's manifest (built once: a bundle costs seconds of a loaded CPU)."""
    from .bundles import make_bundle

    bundle = make_bundle(tmp_path_factory.mktemp("bundle"), size=16)
    loaded: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return loaded


def test_metadata_comes_from_the_archive(tmp_path: Path, manifest: dict[str, Any]) -> None:
    mar = fake_mar(tmp_path / "m.mar", manifest, {"handler": {"top_k": 3, "max_samples": 8}})
    model = oip_model_of_mar(mar, "served")
    metadata = model.metadata("L1").model_dump(exclude_none=True)
    assert metadata["name"] == "served" and metadata["versions"] == ["2.5"]
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32",
                                   "shape": [-1, 1, 16, 16]}]
    assert metadata["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1, 3]},
        {"name": "probability", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "level", "datatype": "BYTES", "shape": [-1]},
    ]
    assert [lv["name"] for lv in metadata["levels"]] == ["L0", "L1", "L2"]
    assert all(lv["macs"] > 0 and lv["params"] > 0 for lv in metadata["levels"])
    assert metadata["parameters"]["levels"] == "L0,L1,L2"
    assert metadata["parameters"]["active_level"] == "L1"
    assert metadata["parameters"]["max_samples"] == 8


def test_without_an_archive_unknown_dimensions_are_minus_one() -> None:
    metadata = oip_model_of_names("m", ("L0", "L1")).metadata().model_dump(exclude_none=True)
    assert metadata["inputs"][0]["shape"] == [-1, -1, -1, -1]
    assert metadata["outputs"][0]["shape"] == [-1, -1]
    assert "versions" not in metadata and "active_level" not in metadata["parameters"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not a zip", "not a readable .mar"),
        ("no-manifest", "no manifest.json inside"),
        ("bad-top-k", "handler.top_k must be a whole number"),
        ("bad-manifest", "cannot describe the model"),
    ],
)
def test_an_archive_that_cannot_describe_its_model_is_refused(
    tmp_path: Path, content: bytes | str, says: str, manifest: dict[str, Any],
) -> None:
    path = tmp_path / "m.mar"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no-manifest":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model-config.yaml", "{}")
    elif content == "bad-top-k":
        fake_mar(path, manifest, {"handler": {"top_k": 0}})
    else:
        fake_mar(path, {"schema_version": 99}, {})
    with pytest.raises(OipModelError, match=says):
        oip_model_of_mar(path, "m")


# --------------------------------------------------------------------------- hostile bodies

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
INPUTS = st.fixed_dictionaries(
    {"name": st.text(max_size=4), "datatype": st.sampled_from(["FP32", "FP64", "BYTES", "X"]),
     "shape": st.lists(st.integers(-2, 5), max_size=5), "data": JSON_VALUES},
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]),
                                            JSON_VALUES, max_size=2)},
)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200), length=st.none() | st.text(max_size=4))
def test_arbitrary_bytes_are_refused_with_a_reason_never_a_crash(body: bytes,
                                                                 length: str | None) -> None:
    try:
        parse_infer(body, length, MODEL)
    except OipError as refused:
        assert 400 <= refused.status < 500 and refused.message


@settings(max_examples=150, deadline=None)
@given(inputs=st.lists(INPUTS, min_size=1, max_size=2), extra=st.dictionaries(
    st.sampled_from(["id", "parameters", "outputs"]), JSON_VALUES, max_size=3),
    tail=st.binary(max_size=16))
def test_arbitrary_v2_shaped_requests_are_planned_or_refused(
    inputs: list[dict[str, Any]], extra: dict[str, Any], tail: bytes,
) -> None:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    unknown = oip_model_of_names("m", ("L0",))  # no geometry: every shape gets further
    for model in (MODEL, unknown):
        for body, length in ((header, None), (header + tail, str(len(header)))):
            try:
                plan = parse_infer(body, length, model)
            except OipError as refused:
                assert 400 <= refused.status < 500 and refused.message
            else:
                assert 1 <= plan.samples <= model.max_samples
