"""Turn one request body into a batch of normalised input tensors, or a reason to reject it.

Every request is untrusted: the decoder accepts exactly three shapes of input (a PNG, a JPEG, a
JSON tensor), checks every size before it allocates, and reports anything else as
:class:`BadRequest` with an HTTP status and a human-readable reason, so that one bad request in a
batch costs a 4xx for that request and nothing for its neighbours or the worker.

The format is sniffed from the leading bytes, not trusted from ``Content-Type``: clients (and
TorchServe's multipart handling) label bodies inconsistently, and magic numbers cannot lie about
which parser runs.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .levels import InputSpec, Normalisation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class BadRequest(Exception):
    """A request the runtime refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds checked before any allocation proportional to the input."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_samples: int = 64

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_image_pixels, self.max_samples) < 1:
            raise ValueError("decode limits must be positive")


def decode(
    body: bytes | bytearray | str,
    spec: InputSpec,
    norm: Normalisation,
    limits: DecodeLimits,
) -> torch.Tensor:
    """Decode one request body to a float tensor of shape ``[n, C, H, W]`` (n >= 1)."""
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not data:
        raise BadRequest(400, "empty request body")
    if len(data) > limits.max_body_bytes:
        raise BadRequest(413, f"body of {len(data)} bytes exceeds {limits.max_body_bytes}")
    if data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC):
        return normalise(decode_image(data, spec, limits)[None], norm, scale=255.0)
    if data.lstrip()[:1] in (b"[", b"{"):
        return normalise(decode_json_tensor(data, spec, limits), norm)
    raise BadRequest(415, "unsupported body: expected a PNG, a JPEG or a JSON tensor")


def decode_image(data: bytes, spec: InputSpec, limits: DecodeLimits) -> np.ndarray[Any, Any]:
    """PNG/JPEG bytes to ``[C, H, W]`` uint8 pixels, converted to the model's geometry.

    Pixels stay 8-bit until :func:`normalise`, which converts, lays out and scales them in one
    pass: a float copy per step (divide, transpose, subtract, divide) cost as much as the
    resize on a 224x224 RGB input.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x raises) on its own global pixel limit; ours is stricter
            # and checked below from the header alone, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
            width, height = opened.size
            if width < 1 or height < 1:
                raise BadRequest(400, f"image has no pixels ({width}x{height})")
            if width * height > limits.max_image_pixels:
                raise BadRequest(
                    413,
                    f"image of {width}x{height} pixels exceeds {limits.max_image_pixels} pixels",
                )
            if opened.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the target is much smaller.
                opened.draft("L" if spec.channels == 1 else "RGB", (spec.width, spec.height))
            mode = "L" if spec.channels == 1 else "RGB"
            image = opened.convert(mode) if opened.mode != mode else opened
            if image.size != (spec.width, spec.height):
                image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            image.load()  # decode errors surface here, inside this try, not in numpy
            array = np.array(image)  # a writable uint8 copy, which torch can wrap
    except BadRequest:
        raise
    except Image.DecompressionBombError as err:
        raise BadRequest(413, f"image too large: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadRequest(400, f"cannot decode image: {err}") from err
    except Exception as err:  # Pillow's plugins raise assorted errors on hostile input.
        raise BadRequest(400, f"cannot decode image: {type(err).__name__}: {err}") from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_json_tensor(data: bytes, spec: InputSpec, limits: DecodeLimits) -> np.ndarray[Any, Any]:
    """A JSON tensor (pixel values in [0, 1], before normalisation) to ``[n, C, H, W]``.

    Accepted: a nested list, or an object ``{"data": <nested list>}``; shape ``[C, H, W]`` for
    one sample or ``[n, C, H, W]`` for a client-side batch (single-channel models also take
    ``[H, W]``). JSON has no resize semantics, so the geometry must match exactly.
    """
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        # RecursionError: the C scanner recurses per nesting level and stops at the
        # interpreter's limit, which is the bound on depth that costs nothing to check.
        raise BadRequest(400, f"invalid JSON: {err}") from err
    if isinstance(document, dict):
        if set(document) != {"data"}:
            raise BadRequest(400, 'a JSON object body must have exactly one key, "data"')
        document = document["data"]
    if not isinstance(document, list):
        raise BadRequest(400, "JSON tensor must be a nested list of numbers")
    if not _numbers_only(document):
        raise BadRequest(400, "JSON tensor must contain only numbers")
    try:
        with np.errstate(over="ignore"):  # overflow to inf is caught by the finiteness check
            array = np.asarray(document, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as err:
        raise BadRequest(400, f"JSON tensor is not rectangular: {err}") from err
    if array.dtype == object:
        raise BadRequest(400, "JSON tensor is not rectangular")
    shape = tuple(array.shape)
    if spec.channels == 1 and shape == (spec.height, spec.width):
        array = array[None, None]
    elif shape == spec.shape:
        array = array[None]
    elif len(shape) != 4 or shape[1:] != spec.shape:
        raise BadRequest(
            400, f"JSON tensor shape {list(shape)} != [C,H,W] or [n,C,H,W] with {list(spec.shape)}"
        )
    if array.shape[0] < 1:
        raise BadRequest(400, "JSON tensor batch is empty")
    if array.shape[0] > limits.max_samples:
        raise BadRequest(413, f"{array.shape[0]} samples exceed {limits.max_samples} per request")
    if not np.isfinite(array).all():
        raise BadRequest(400, "JSON tensor contains a non-finite value")
    return np.ascontiguousarray(array)


def normalise(pixels: np.ndarray[Any, Any], norm: Normalisation, *,
              scale: float = 1.0) -> torch.Tensor:
    """``[n, C, H, W]`` pixels (any layout) to a contiguous float32 ``(p / scale - mean) / std``.

    ``scale`` is 255 for 8-bit image pixels and 1 for JSON tensors already in [0, 1]. One float
    buffer is allocated; the per-channel divisor and offset are applied to it in place.
    """
    source = torch.from_numpy(pixels if pixels.flags.writeable else np.array(pixels))
    out = torch.empty(source.shape, dtype=torch.float32)
    out.copy_(source)  # converts and makes the layout contiguous in the same pass
    divisor, offset = _affine(tuple(norm.mean), tuple(norm.std), scale)
    return out.div_(divisor).sub_(offset)


@functools.lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...],
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale * std`` and ``mean / std`` as ``[1, C, 1, 1]`` tensors (cached)."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return std_t * scale, mean_t / std_t


def _numbers_only(value: object) -> bool:
    """True when every leaf is an int or float (not a bool, string, null or object).

    Finiteness is checked after conversion, where float32 overflow also shows up.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return False
    return True
