"""The Open Inference Protocol v2 (KServe v2 / Triton / MLServer) REST bodies, as pydantic models.

Why pydantic: the request schema is what a client of any v2 server already sends, and parsing it
by hand is where servers differ in what they let through. These models follow KServe's own
``kserve.protocol.rest.v2_datamodels`` field for field (KServe validates with pydantic too), so
that an accepted request here is one KServe would accept, and a refused one gets a reason
naming the field. Two things are stricter than KServe, because the body is untrusted and its
size decides the gateway's work: every list and string is bounded, and a shape dimension must
be a non-negative integer (the protocol says "representable as an unsigned 64-bit integer").

Unknown keys are ignored, as KServe ignores them (the protocol lets servers define their own).
``data`` stays ``list[Any]`` here: its element type depends on ``datatype`` and its nesting on
``shape``, which :mod:`.oip_codec` checks together, element by element, with a count bound.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelMetadataResponse",
    "ModelReadyResponse",
    "Parameters",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadataResponse",
]

MAX_NAME = 256
MAX_PARAMETERS = 64
MAX_RANK = 8
MAX_TENSORS = 16
"""No model served here has more than one input or a handful of outputs; a request naming
more is refused by the schema instead of being walked."""

ParameterValue = StrictStr | StrictInt | StrictFloat | StrictBool
"""``$parameter = $string : $string | $number | $boolean`` (strict: no coercion)."""
Parameters = Annotated[dict[Annotated[str, Field(max_length=MAX_NAME)], ParameterValue],
                       Field(max_length=MAX_PARAMETERS)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME)]
Dimension = Annotated[StrictInt, Field(ge=0, le=(1 << 63) - 1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RequestInput(_Body):
    """``$request_input``; ``data`` may be missing only when the binary tensor extension
    carries the tensor after the JSON (``parameters.binary_data_size``)."""

    name: Name
    shape: Annotated[list[Dimension], Field(max_length=MAX_RANK)]
    datatype: Annotated[StrictStr, Field(min_length=1, max_length=16)]
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(_Body):
    """``$request_output``: which output to return, and (``binary_data``) how."""

    name: Name
    parameters: Parameters | None = None


class InferenceRequest(_Body):
    """``$inference_request``."""

    id: Annotated[StrictStr, Field(max_length=MAX_NAME)] | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=MAX_TENSORS)]
    outputs: Annotated[list[RequestOutput], Field(max_length=MAX_TENSORS)] | None = None


class ResponseOutput(_Body):
    """``$response_output``; ``data`` is left out when the tensor travels as binary data."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Body):
    """``$inference_response``."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Body):
    """``$metadata_tensor``: ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelLevel(_Body):
    """One nested level of the model, narrowest first (elastiserve's addition to the
    metadata; v2 clients that do not know it ignore the key)."""

    name: str
    macs: int | None = None
    params: int | None = None
    accuracy: float | None = None


class ModelMetadataResponse(_Body):
    """``$metadata_model_response`` plus ``parameters`` and ``levels``."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None
    levels: list[ModelLevel] | None = None


class ModelReadyResponse(_Body):
    name: str
    ready: bool


class ServerMetadataResponse(_Body):
    """``$metadata_server_response``."""

    name: str
    version: str
    extensions: list[str]
