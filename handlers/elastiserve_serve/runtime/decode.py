"""Turn one request body into a batch of normalised input tensors, or a reason to reject it.

Every request is untrusted: the decoder accepts exactly four shapes of input (a PNG, a JPEG, a
JSON tensor, a NumPy ``.npy`` tensor), checks every size before it allocates, and reports
anything else as :class:`BadRequest` with an HTTP status and a human-readable reason, so that
one bad request in a batch costs a 4xx for that request and nothing for its neighbours or the
worker.

The format is sniffed from the leading bytes, not trusted from ``Content-Type``: clients (and
TorchServe's multipart handling) label bodies inconsistently, and magic numbers cannot lie about
which parser runs.

Limits follow the model (:func:`limits_for`): an image may have at most
:data:`IMAGE_AREA_MARGIN` times the pixels of the model's input, a JSON tensor exactly the
elements of ``max_samples`` inputs, and the body at most what either of those can take; the
body size, the JSON nesting depth and an upper bound on the element count are checked on the
raw bytes, before any parser runs.
"""

from __future__ import annotations

import functools
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .levels import InputSpec, Normalisation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGE_AREA_MARGIN = 16
"""An image may have 16x the pixels of the model's input (4x per side) before it is resized
down: a client's photo is usually larger than a 32x32 or 224x224 input, a bomb much larger."""
IMAGE_BYTES_PER_PIXEL = 8
"""Most bytes a PNG can spend per pixel uncompressed (16-bit RGBA)."""
IMAGE_METADATA_BYTES = 1 << 20
"""Room for the ancillary chunks a camera or editor adds (ICC profile, EXIF)."""
JSON_BYTES_PER_ELEMENT = 40
"""Longest plausible spelling of one float with its separator and spaces."""
MAX_JSON_DEPTH = 5
"""``{"data": [n][C][H][W]}``: an object and four lists, the deepest tensor accepted."""
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER_BYTES = 1024
"""A ``.npy`` header names a dtype, an order and a shape: a few dozen bytes, padded to 64."""
NPY_DTYPES = frozenset({"<f4", "<f8", "<f2", "|u1"})
"""Little-endian floats (pixel values in [0, 1], like a JSON tensor) and 8-bit pixels (0-255)."""


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


def limits_for(limits: DecodeLimits, spec: InputSpec) -> DecodeLimits:
    """``limits`` tightened to what a model with input ``spec`` can use (never loosened).

    Pixels: :data:`IMAGE_AREA_MARGIN` times the input's area. Body: the larger of the biggest
    image so bounded (raw pixels plus metadata room) and the biggest JSON tensor of
    ``max_samples`` inputs, so that a body neither format could need is refused unread.
    """
    area = spec.height * spec.width
    pixels = min(limits.max_image_pixels, area * IMAGE_AREA_MARGIN)
    image_bytes = pixels * IMAGE_BYTES_PER_PIXEL + IMAGE_METADATA_BYTES
    json_bytes = limits.max_samples * area * spec.channels * JSON_BYTES_PER_ELEMENT + 4096
    body = min(limits.max_body_bytes, max(image_bytes, json_bytes))
    return DecodeLimits(max_body_bytes=body, max_image_pixels=pixels,
                        max_samples=limits.max_samples)


@dataclass(frozen=True)
class Pixels:
    """One request's checked input before normalisation: ``[n, C, H, W]`` numbers and the
    scale that maps them to [0, 1] (255 for 8-bit pixels, 1 for float tensors).

    Kept apart from normalisation so that a batch is normalised once, in one buffer, on the
    device it runs on (:func:`batch_tensor`): 8-bit pixels then cross to a GPU at a quarter of
    the bytes, and the CPU path saves the per-request float copy and the concatenation.
    """

    array: np.ndarray[Any, Any]
    scale: float

    @property
    def samples(self) -> int:
        return int(self.array.shape[0])


def decode(
    body: bytes | bytearray | str,
    spec: InputSpec,
    norm: Normalisation,
    limits: DecodeLimits,
) -> torch.Tensor:
    """Decode one request body to a float tensor of shape ``[n, C, H, W]`` (n >= 1)."""
    return batch_tensor([decode_pixels(body, spec, limits)], norm)


def decode_pixels(body: bytes | bytearray | str, spec: InputSpec, limits: DecodeLimits) -> Pixels:
    """Check and decode one request body; every refusal is a :class:`BadRequest`."""
    try:
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    except UnicodeEncodeError:  # lone surrogates in a text body
        raise BadRequest(400, "request body is not valid UTF-8 text") from None
    if not data:
        raise BadRequest(400, "empty request body")
    if len(data) > limits.max_body_bytes:
        raise BadRequest(413, f"body of {len(data)} bytes exceeds {limits.max_body_bytes}")
    if data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC):
        return Pixels(decode_image(data, spec, limits)[None], 255.0)
    if data.startswith(NPY_MAGIC):
        array = decode_npy_tensor(data, spec, limits)
        return Pixels(array, 255.0 if array.dtype == np.uint8 else 1.0)
    if data.lstrip()[:1] in (b"[", b"{"):
        return Pixels(decode_json_tensor(data, spec, limits), 1.0)
    raise BadRequest(415, "unsupported body: expected a PNG, a JPEG, a JSON or a .npy tensor")


def decode_image(data: bytes, spec: InputSpec, limits: DecodeLimits) -> np.ndarray[Any, Any]:
    """PNG/JPEG bytes to ``[C, H, W]`` uint8 pixels, converted to the model's geometry.

    Pixels stay 8-bit until :func:`batch_tensor`, which converts, lays out and scales them in one
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
    max_elements = limits.max_samples * spec.channels * spec.height * spec.width
    # Bounded before parsing: every element but the last is followed by a comma, and so is
    # each list but the last, so a body with more commas than twice the elements is too big.
    if data.count(b",") > 2 * max_elements:
        raise BadRequest(413, f"JSON tensor has more than {max_elements} elements")
    depth = _max_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(400, f"JSON nested {depth} deep; a tensor needs at most "
                              f"{MAX_JSON_DEPTH}")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError also covers integers longer than Python converts (4300 digits).
        raise BadRequest(400, f"invalid JSON: {type(err).__name__}") from None
    if isinstance(document, dict):
        if set(document) != {"data"}:
            raise BadRequest(400, 'a JSON object body must have exactly one key, "data"')
        document = document["data"]
    if not isinstance(document, list):
        raise BadRequest(400, "JSON tensor must be a nested list of numbers")
    count = _count_numbers(document)
    if count is None:
        raise BadRequest(400, "JSON tensor must contain only numbers")
    if count > max_elements:
        raise BadRequest(413, f"JSON tensor has {count} elements, more than {max_elements}")
    try:
        with np.errstate(over="ignore"):  # overflow to inf is caught by the finiteness check
            array = np.asarray(document, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as err:
        raise BadRequest(400, f"JSON tensor is not rectangular: {err}") from err
    if array.dtype == object:
        raise BadRequest(400, "JSON tensor is not rectangular")
    return _checked_batch(array, spec, limits, "JSON tensor")


def decode_npy_tensor(data: bytes, spec: InputSpec, limits: DecodeLimits) -> np.ndarray[Any, Any]:
    """A NumPy ``.npy`` body (format 1.0 or 2.0) to ``[n, C, H, W]``, read without pickle.

    The binary twin of the JSON tensor: the same shapes, float values in [0, 1] (``uint8``
    pixels in 0-255 are scaled like an image's). A 16-image 28x28 request costs microseconds
    here against milliseconds as JSON text, which is most of a small model's request. Checked
    before anything is allocated: the header's size, a dtype from :data:`NPY_DTYPES` (never
    ``object``: no pickle runs), C order, the element count against the limits, and that the
    body holds exactly that many bytes after the header.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream, max_header_size=NPY_MAX_HEADER_BYTES)
    except Exception as err:  # numpy's header parser (tokenize, literal_eval)
        # raises assorted errors on hostile input: every one is a bad header, never a 500.
        raise BadRequest(400, f"invalid .npy header: {type(err).__name__}: {err}") from None
    if dtype.str not in NPY_DTYPES:
        raise BadRequest(400, f".npy dtype {dtype.str} is not one of {sorted(NPY_DTYPES)}")
    if fortran_order:
        raise BadRequest(400, ".npy tensor must be in C order")
    # numpy's header check lets any int through (bools, huge or negative numbers, 100 axes):
    # the shape must be one the model takes before it sizes anything.
    if not (all(type(dim) is int and dim >= 0 for dim in shape) and _fits_geometry(shape, spec)):
        raise BadRequest(400, f".npy tensor shape {list(shape)} != [C,H,W] or [n,C,H,W] with "
                              f"{list(spec.shape)}")
    max_elements = limits.max_samples * spec.channels * spec.height * spec.width
    count = math.prod(shape)  # Python ints: a hostile shape cannot overflow the check
    if count > max_elements:
        raise BadRequest(413, f".npy tensor has {count} elements, more than {max_elements}")
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise BadRequest(400, f".npy body holds {len(data) - offset} bytes of data; its header "
                              f"says {count * dtype.itemsize}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    if dtype != np.uint8:
        with np.errstate(over="ignore", invalid="ignore"):  # inf is refused just below
            array = array.astype(np.float32)
    return _checked_batch(array, spec, limits, ".npy tensor")


def _fits_geometry(shape: tuple[int, ...], spec: InputSpec) -> bool:
    """Whether ``shape`` is ``[C,H,W]``, ``[n,C,H,W]`` or (one channel) ``[H,W]`` of ``spec``."""
    return (shape[-3:] == spec.shape and len(shape) in (3, 4)) or (
        spec.channels == 1 and shape == (spec.height, spec.width))


def _checked_batch(array: np.ndarray[Any, Any], spec: InputSpec, limits: DecodeLimits,
                   what: str) -> np.ndarray[Any, Any]:
    """A parsed tensor as ``[n, C, H, W]`` of the model's geometry, or the reason it is not."""
    shape = tuple(array.shape)
    if spec.channels == 1 and shape == (spec.height, spec.width):
        array = array[None, None]
    elif shape == spec.shape:
        array = array[None]
    elif len(shape) != 4 or shape[1:] != spec.shape:
        raise BadRequest(
            400, f"{what} shape {list(shape)} != [C,H,W] or [n,C,H,W] with {list(spec.shape)}"
        )
    if array.shape[0] < 1:
        raise BadRequest(400, f"{what} batch is empty")
    if array.shape[0] > limits.max_samples:
        raise BadRequest(413, f"{array.shape[0]} samples exceed {limits.max_samples} per request")
    if array.dtype != np.uint8 and not np.isfinite(array).all():
        raise BadRequest(400, f"{what} contains a non-finite value")
    return np.ascontiguousarray(array)


def batch_tensor(parts: Sequence[Pixels], norm: Normalisation,
                 device: torch.device | None = None) -> torch.Tensor:
    """The requests of one batch as one contiguous float32 ``(p / scale - mean) / std`` on
    ``device`` (the CPU when ``None``).

    One float buffer is allocated for the whole batch. Each part is converted into its rows
    on the way in (the copy also makes any layout contiguous and, on a GPU, moves the part
    there at its own width: 1 byte a pixel for images); its scale and the standard deviation
    are divided out in place, then the mean is subtracted once over the batch.
    """
    if not parts:
        raise ValueError("a batch needs at least one request")
    target = device or torch.device("cpu")
    shape = parts[0].array.shape[1:]
    out = torch.empty((sum(p.samples for p in parts), *shape), dtype=torch.float32,
                      device=target)
    mean = tuple(norm.mean)
    std = tuple(norm.std)
    offset = 0
    for part in parts:
        array = part.array if part.array.flags.writeable else np.array(part.array)
        rows = out[offset:offset + part.samples]
        rows.copy_(torch.from_numpy(array))
        divisor, _ = _affine(mean, std, part.scale, target)
        rows.div_(divisor)
        offset += part.samples
    _, shift = _affine(mean, std, 1.0, target)
    return out.sub_(shift)


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], scale: float,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale * std`` and ``mean / std`` as ``[1, C, 1, 1]`` tensors on
    ``device`` (cached: built once per normalisation, scale and device)."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return (std_t * scale).to(device), (mean_t / std_t).to(device)


def _count_numbers(value: object) -> int | None:
    """How many leaves, when every one is an int or float (not a bool, string, null or
    object); ``None`` otherwise. Finiteness is checked after conversion, where float32
    overflow also shows up."""
    stack = [value]
    count = 0
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return None
        else:
            count += 1
    return count


def _max_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in ``data`` (brackets inside strings count too: a tensor
    holds no strings but its one key, so that only makes a bad body fail sooner)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    steps = (np.isin(raw, _OPENERS).astype(np.int32) - np.isin(raw, _CLOSERS).astype(np.int32))
    return int(np.cumsum(steps).max(initial=0))


_OPENERS = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSERS = np.frombuffer(b"]}", dtype=np.uint8)
