"""Translate one Open Inference Protocol v2 inference request into TorchServe calls, and the
answers back into one v2 response. Pure: bytes in, bytes out, no I/O.

Why the gateway translates instead of the handler: the handler already takes the two things a
v2 request carries (a JSON tensor of pixel values, or image bytes) and answers top-k with the
level that served; TorchServe batches requests across clients in front of it. Translating at
the gateway keeps one handler, one metric stream and one batching queue for both APIs, and a
v2 request is refused for its own faults (4xx and a reason) before TorchServe sees it.

What a request may carry (the model has one input, :data:`.oip_model.INPUT_NAME`):

* ``FP32`` (or ``FP64``) ``[n, C, H, W]`` (or ``[C, H, W]``: n = 1): pixel values in [0, 1],
  nested or flattened row-major (both are the protocol's), as JSON ``data`` or, with the binary
  tensor data extension, little-endian after the JSON. One TorchServe call carries all n.
* ``BYTES`` ``[n]`` (or ``[n, 1]``): n PNG or JPEG images, each base64 in JSON ``data`` (a JSON
  string cannot hold raw bytes; KServe's TorchServe examples do the same) or raw with the
  binary extension (each element a 4-byte little-endian length, then the bytes). One
  TorchServe call per image, sent together so that TorchServe batches them.

``parameters.level`` pins a level (as the ``X-Elastiserve-Level`` header does, where the model
allows pinning); ``outputs`` selects outputs; ``binary_data`` / ``binary_data_output`` return
outputs as binary data. Every refusal is an :class:`OipError` with a 4xx status and a reason.

Bounds, checked before work proportional to them: the body (the gateway's request limit), the
JSON's shape (:mod:`.oip_types`), at most ``max_samples`` samples, and for tensors exactly
``prod(shape)`` elements, counted while the data is walked (the walk stops at the first one
too many).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from .oip_model import INPUT_NAME, OUTPUT_LABEL, OUTPUT_LEVEL, OUTPUT_PROBABILITY, OUTPUTS, OipModel
from .oip_types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

__all__ = [
    "INFERENCE_HEADER",
    "InferPlan",
    "OipError",
    "RequestedOutput",
    "Response",
    "Upstream",
    "UpstreamAnswer",
    "build_response",
    "parse_infer",
    "validation_reason",
]

INFERENCE_HEADER = "Inference-Header-Content-Length"
"""The binary tensor data extension's header: how many leading bytes of the body are JSON."""
FLOAT_TYPES = {"FP32": "<f", "FP64": "<d"}
"""Tensor datatypes taken for the image input, with their little-endian binary layout."""
_DIGITS = re.compile(r"[0-9]{1,12}")
_NUMBERS = frozenset({int, float})
"""Exact types (``bool`` is a subclass of ``int`` but not a number here)."""


class OipError(Exception):
    """A request refused (4xx) or an answer that cannot be given (5xx), with its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upstream:
    """One TorchServe call: the body the handler decodes and how many samples it holds."""

    body: bytes
    content_type: str
    samples: int


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferPlan:
    """A valid v2 request, as the calls that answer it."""

    request_id: str
    pin: str | None
    calls: tuple[Upstream, ...]
    outputs: tuple[RequestedOutput, ...]

    @property
    def samples(self) -> int:
        return sum(call.samples for call in self.calls)


@dataclass(frozen=True)
class UpstreamAnswer:
    """What TorchServe answered to one :class:`Upstream`."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Response:
    """The v2 answer: body, content type, the level(s) that answered, and (binary outputs)
    the length of its JSON part."""

    body: bytes
    content_type: str
    level: str
    json_length: int | None = None


def validation_reason(error: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one line naming each bad field (``inputs.0.shape.1: ...``)."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(part) for part in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_infer(body: bytes, json_length: str | None, model: OipModel) -> InferPlan:
    """Check a v2 inference request against ``model`` and plan the TorchServe calls."""
    header, binary = _split(body, json_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as error:
        raise OipError(400, f"invalid inference request: {validation_reason(error)}") from None
    if len(request.inputs) != 1:
        raise OipError(400, f"model {model.name} takes one input ({INPUT_NAME}), got "
                            f"{len(request.inputs)}")
    (tensor,) = request.inputs
    raw = _binary_part(tensor, binary)
    if tensor.datatype in FLOAT_TYPES:
        calls: tuple[Upstream, ...] = (_tensor_call(tensor, raw, model, len(header)),)
    elif tensor.datatype == "BYTES":
        calls = _image_calls(tensor, raw, model)
    else:
        raise OipError(400, f"input {tensor.name}: datatype {tensor.datatype} is not taken; "
                            f"{INPUT_NAME} is FP32 [n,C,H,W] pixel values in [0,1] (FP64 too) "
                            "or BYTES [n] PNG/JPEG images")
    return InferPlan(
        request_id=request.id if request.id is not None else str(uuid.uuid4()),
        pin=_pin(request.parameters),
        calls=calls,
        outputs=_outputs(request),
    )


def _split(body: bytes, json_length: str | None) -> tuple[bytes, bytes]:
    if json_length is None:
        return body, b""
    if not _DIGITS.fullmatch(json_length.strip()):
        raise OipError(400, f"{INFERENCE_HEADER} must be a whole number of bytes")
    length = int(json_length.strip())
    if length > len(body):
        raise OipError(400, f"{INFERENCE_HEADER} is {length} but the body has {len(body)} "
                            "bytes")
    return body[:length], body[length:]


def _binary_part(tensor: RequestInput, binary: bytes) -> bytes | None:
    """The tensor's binary data (the extension), or ``None`` when it came as JSON ``data``."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise OipError(400, f"{len(binary)} bytes follow the JSON but input {tensor.name} "
                                "names no binary_data_size")
        if tensor.data is None:
            raise OipError(400, f"input {tensor.name}: 'data' is missing (or give "
                                "parameters.binary_data_size with the binary data extension)")
        return None
    if tensor.data is not None:
        raise OipError(400, f"input {tensor.name}: both 'data' and binary_data_size given")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OipError(400, f"input {tensor.name}: binary_data_size must be a whole number")
    if size != len(binary):
        raise OipError(400, f"input {tensor.name}: binary_data_size is {size} but "
                            f"{len(binary)} bytes follow the JSON")
    return binary


def _samples(count: int, model: OipModel) -> int:
    if count < 1:
        raise OipError(400, f"input {INPUT_NAME} holds no sample (batch dimension 0)")
    if count > model.max_samples:
        raise OipError(413, f"{count} samples exceed {model.max_samples} per request")
    return count


def _tensor_call(tensor: RequestInput, raw: bytes | None, model: OipModel,
                 json_bytes: int) -> Upstream:
    shape = list(tensor.shape)
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4:
        raise OipError(400, f"input {tensor.name}: shape {list(tensor.shape)} is not "
                            "[n,C,H,W] or [C,H,W]")
    expected = model.input_shape
    if expected is not None and tuple(shape[1:]) != expected:
        raise OipError(400, f"input {tensor.name}: shape {list(tensor.shape)} does not match "
                            f"[-1, {', '.join(map(str, expected))}]")
    n = _samples(shape[0], model)
    if 0 in shape[1:]:
        raise OipError(400, f"input {tensor.name}: shape {list(tensor.shape)} has an empty "
                            "dimension")
    total = math.prod(shape)
    if raw is not None:
        width = struct.calcsize(FLOAT_TYPES[tensor.datatype])
        if len(raw) != total * width:
            raise OipError(400, f"input {tensor.name}: {len(raw)} bytes of {tensor.datatype} "
                                f"for shape {list(tensor.shape)} ({total * width} expected)")
        values: list[float] = [v for (v,) in struct.iter_unpack(FLOAT_TYPES[tensor.datatype],
                                                                 raw)]
    else:
        # Each JSON number takes at least one byte and a separator: no body this size can hold
        # more, so a shape claiming more is refused before anything is walked.
        if total > json_bytes:
            raise OipError(400, f"input {tensor.name}: shape {list(tensor.shape)} needs {total} "
                                "elements, more than the body can hold")
        values = _numbers(tensor.data or [], total, tensor.name)
    if not all(math.isfinite(v) for v in values):
        raise OipError(400, f"input {tensor.name}: holds a non-finite value")
    # pydantic-core's serialiser writes floats six times faster than json.dumps (the largest
    # cost of a 3x224x224 JSON tensor) and reads back the same numbers.
    body = to_json({"data": _nest(values, shape)})
    return Upstream(body=body, content_type="application/json", samples=n)


def _leaves(data: list[Any], name: str) -> Iterator[Any]:
    """The leaves of a nested list in row-major order, without recursion."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise OipError(400, f"input {name}: 'data' is nested deeper than its shape")
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _numbers(data: list[Any], total: int, name: str) -> list[float]:
    if len(data) == total and all(type(item) in _NUMBERS for item in data):
        return data  # flat already (the common case): no walk, no copy
    values: list[float] = []
    for item in _leaves(data, name):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise OipError(400, f"input {name}: element {len(values)} is "
                                f"{type(item).__name__}, not a number")
        if len(values) == total:
            raise OipError(400, f"input {name}: more than the {total} elements its shape holds")
        values.append(float(item))
    if len(values) != total:
        raise OipError(400, f"input {name}: {len(values)} elements, its shape holds {total}")
    return values


def _nest(flat: list[float], shape: Sequence[int]) -> list[Any]:
    """Row-major ``flat`` as nested lists of ``shape`` (``len(flat) == prod(shape)``)."""
    nested: list[Any] = flat
    for size in reversed(shape[1:]):
        nested = [nested[i:i + size] for i in range(0, len(nested), size)]
    return nested


def _image_calls(tensor: RequestInput, raw: bytes | None, model: OipModel) -> tuple[Upstream, ...]:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise OipError(400, f"input {tensor.name}: BYTES images take shape [n] or [n, 1], not "
                            f"{shape}")
    n = _samples(shape[0], model)
    images = _length_prefixed(raw, n, tensor.name) if raw is not None \
        else _base64_images(tensor.data or [], n, tensor.name)
    for index, image in enumerate(images):
        if not image:
            raise OipError(400, f"input {tensor.name}: element {index} is empty")
    return tuple(Upstream(body=image, content_type="application/octet-stream", samples=1)
                 for image in images)


def _base64_images(data: list[Any], n: int, name: str) -> list[bytes]:
    items: list[bytes] = []
    for item in _leaves(data, name):
        if len(items) == n:
            raise OipError(400, f"input {name}: more than the {n} elements its shape holds")
        if not isinstance(item, str):
            raise OipError(400, f"input {name}: element {len(items)} is "
                                f"{type(item).__name__}; BYTES elements in JSON are base64 "
                                "strings")
        try:
            items.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise OipError(400, f"input {name}: element {len(items)} is not base64 (images in "
                                "JSON travel base64-encoded; raw bytes need the binary data "
                                "extension)") from None
    if len(items) != n:
        raise OipError(400, f"input {name}: {len(items)} elements, its shape holds {n}")
    return items


def _length_prefixed(raw: bytes, n: int, name: str) -> list[bytes]:
    """The binary extension's BYTES layout: per element a uint32 LE length, then the bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(items) == n:
            raise OipError(400, f"input {name}: more than the {n} elements its shape holds")
        if offset + 4 > len(raw):
            raise OipError(400, f"input {name}: binary data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise OipError(400, f"input {name}: element {len(items)} claims {size} bytes, "
                                f"{len(raw) - offset} remain")
        items.append(raw[offset:offset + size])
        offset += size
    if len(items) != n:
        raise OipError(400, f"input {name}: {len(items)} elements, its shape holds {n}")
    return items


def _pin(parameters: dict[str, Any] | None) -> str | None:
    value = (parameters or {}).get("level")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise OipError(400, "parameters.level must be a level name or index")
    return str(value)


def _flag(parameters: dict[str, Any] | None, key: str, default: bool, where: str) -> bool:
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise OipError(400, f"{where}.{key} must be true or false")
    return value


def _outputs(request: InferenceRequest) -> tuple[RequestedOutput, ...]:
    binary_default = _flag(request.parameters, "binary_data_output", False, "parameters")
    if request.outputs is None:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUTS)
    chosen: list[RequestedOutput] = []
    for index, wanted in enumerate(request.outputs):
        if wanted.name not in OUTPUTS:
            raise OipError(400, f"unknown output {wanted.name!r}; the model produces "
                                f"{', '.join(OUTPUTS)}")
        if any(c.name == wanted.name for c in chosen):
            raise OipError(400, f"output {wanted.name!r} is requested twice")
        chosen.append(RequestedOutput(
            wanted.name,
            _flag(wanted.parameters, "binary_data", binary_default,
                  f"outputs.{index}.parameters"),
        ))
    return tuple(chosen)


# --------------------------------------------------------------------------- answers


def _reason(answer: UpstreamAnswer) -> str:
    """The handler's reason (``{"code", "error"}``) or TorchServe's (``{"message"}``)."""
    try:
        document = json.loads(answer.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        document = None
    if isinstance(document, dict):
        for key in ("error", "message"):
            if isinstance(document.get(key), str):
                return str(document[key])
    return f"the model server answered HTTP {answer.status}"


def _rows(answer: UpstreamAnswer, samples: int) -> tuple[str, list[list[tuple[str, float]]]]:
    """(level, per sample the top-k (label, probability)) of one handler answer."""
    try:
        document = json.loads(answer.body.decode("utf-8"))
        level = document["level"]
        predictions = document["predictions"]
        rows = [[(str(p["label"]), float(p["probability"])) for p in row]
                for row in predictions]
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
        raise OipError(502, "the model server's answer could not be read") from None
    if not isinstance(level, str) or len(rows) != samples:
        raise OipError(502, f"the model server answered {len(rows)} samples for {samples}")
    return level, rows


def build_response(
    plan: InferPlan, model_name: str, model_version: str | None,
    answers: Sequence[UpstreamAnswer], parameters: dict[str, Any] | None = None,
) -> Response:
    """The v2 response for ``plan`` from TorchServe's ``answers`` (one per call, in order).

    A failed call fails the request with that call's status and reason: the protocol has no
    partial answers. ``level`` names the level that answered, or the levels in sample order
    when a level switch fell between the calls of one request (each sample's own level is in
    the ``level`` output).
    """
    for answer in answers:
        if answer.status != 200:
            raise OipError(answer.status if 400 <= answer.status <= 599 else 502,
                           _reason(answer))
    labels: list[list[str]] = []
    probabilities: list[list[float]] = []
    levels: list[str] = []
    for call, answer in zip(plan.calls, answers, strict=True):
        level, rows = _rows(answer, call.samples)
        for row in rows:
            labels.append([label for label, _ in row])
            probabilities.append([p for _, p in row])
            levels.append(level)
    k = len(labels[0]) if labels else 0
    if any(len(row) != k for row in labels):
        raise OipError(502, "the model server answered a different number of classes per "
                            "sample")
    answered = ",".join(dict.fromkeys(levels))
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        OUTPUT_LABEL: ("BYTES", [len(labels), k], [x for row in labels for x in row]),
        OUTPUT_PROBABILITY: ("FP32", [len(labels), k],
                             [x for row in probabilities for x in row]),
        OUTPUT_LEVEL: ("BYTES", [len(levels)], levels),
    }
    outputs, blobs = [], []
    for wanted in plan.outputs:
        datatype, shape, data = tensors[wanted.name]
        if wanted.binary:
            blob = _binary(datatype, data)
            blobs.append(blob)
            outputs.append(ResponseOutput(name=wanted.name, shape=shape, datatype=datatype,
                                          parameters={"binary_data_size": len(blob)}))
        else:
            outputs.append(ResponseOutput(name=wanted.name, shape=shape, datatype=datatype,
                                          data=data))
    document = InferenceResponse(
        model_name=model_name, model_version=model_version, id=plan.request_id,
        parameters={"level": answered, **(parameters or {})}, outputs=outputs,
    ).model_dump_json(exclude_none=True).encode("utf-8")
    if not blobs:
        return Response(document, "application/json", answered)
    return Response(document + b"".join(blobs), "application/octet-stream", answered,
                    json_length=len(document))


def _binary(datatype: str, data: list[Any]) -> bytes:
    """An output tensor in the binary extension's layout (FP32 little-endian; BYTES as
    uint32-LE-length-prefixed UTF-8)."""
    if datatype == "FP32":
        return struct.pack(f"<{len(data)}f", *data)
    parts = []
    for item in data:
        encoded = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(encoded)) + encoded)
    return b"".join(parts)
