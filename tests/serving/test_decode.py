"""The request decoder: accepted formats, geometry conversion, and refusal of everything else."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from elastiserve_serve.runtime import BadRequest, DecodeLimits, InputSpec, Normalisation
from elastiserve_serve.runtime.decode import (
    IMAGE_AREA_MARGIN,
    Pixels,
    batch_tensor,
    decode,
    decode_pixels,
    limits_for,
)
from elastiserve_serve.runtime.engine import ElasticRuntime, Failure, RawRequest
from elastiserve_serve.runtime.settings import RuntimeSettings

from .tiny import SPEC, png_bytes, tiny_levels

NORM = Normalisation((0.0,), (1.0,))
RGB = InputSpec(3, 8, 8)
RGB_NORM = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
LIMITS = DecodeLimits(max_body_bytes=1 << 20, max_image_pixels=512 * 512, max_samples=4)


class TestImages:
    @pytest.mark.parametrize(
        ("mode", "fmt"),
        # JPEG has no alpha channel, so RGBA is only a PNG case.
        [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "JPEG"), ("RGB", "JPEG")],
    )
    def test_converts_to_model_geometry(self, mode: str, fmt: str) -> None:
        body = png_bytes(20, 13, mode, fmt)
        for spec, norm in ((SPEC, NORM), (RGB, RGB_NORM)):
            out = decode(body, spec, norm, LIMITS)
            assert out.shape == (1, *spec.shape)
            assert out.dtype == torch.float32
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0

    def test_normalisation_applied(self) -> None:
        body = png_bytes(8, 8)
        plain = decode(body, SPEC, NORM, LIMITS)
        shifted = decode(body, SPEC, Normalisation((0.5,), (0.5,)), LIMITS)
        assert torch.allclose(shifted, (plain - 0.5) / 0.5)

    @pytest.mark.parametrize("size", [(600, 600), (5000, 5000)])
    def test_huge_image_refused_from_header(self, size: tuple[int, int]) -> None:
        # A real, highly compressible PNG: small on the wire, huge once decoded.
        buffer = io.BytesIO()
        Image.new("L", size).save(buffer, format="PNG")
        assert len(buffer.getvalue()) < LIMITS.max_body_bytes
        with pytest.raises(BadRequest) as err:
            decode(buffer.getvalue(), SPEC, NORM, LIMITS)
        assert err.value.status == 413

    def test_truncated_png(self) -> None:
        with pytest.raises(BadRequest) as err:
            decode(png_bytes()[:40], SPEC, NORM, LIMITS)
        assert err.value.status == 400

    def test_body_size_limit(self) -> None:
        with pytest.raises(BadRequest) as err:
            decode(b"[" + b"0," * (1 << 20) + b"0]", SPEC, NORM, LIMITS)
        assert err.value.status == 413


class TestJson:
    def test_single_and_batch(self) -> None:
        one = [[[0.5] * 8] * 8]
        assert decode(json.dumps(one), SPEC, NORM, LIMITS).shape == (1, 1, 8, 8)
        assert decode(json.dumps({"data": [one, one]}), SPEC, NORM, LIMITS).shape == (2, 1, 8, 8)
        assert decode(json.dumps([[0.1] * 8] * 8), SPEC, NORM, LIMITS).shape == (1, 1, 8, 8)

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            (b"", 400),
            (b"hello", 415),
            (b"{", 400),
            (b'{"data": 1}', 400),
            (b'{"x": []}', 400),
            (b"[1, 2, 3]", 400),
            (b'[["a"]]', 400),
            (b"[[[true]]]", 400),
            (json.dumps([[[0.5] * 8] * 7]).encode(), 400),
            (json.dumps([[[0.5] * 8] * 8, [[0.5] * 7] * 8]).encode(), 400),
            (json.dumps([[[1e39] * 8] * 8]).encode(), 400),
            (json.dumps([[[[0.0] * 8] * 8]] * 5).encode(), 413),
            (json.dumps([[[[0.0] * 8] * 8]] * 0).encode(), 400),
            (b"[" * 100000 + b"]" * 100000, 400),
            (b"[[[NaN]]]", 400),
            (b"\xff\xfe[", 415),
            (b"[\xff]", 400),
        ],
    )
    def test_refused(self, body: bytes, status: int) -> None:
        with pytest.raises(BadRequest) as err:
            decode(body, SPEC, NORM, LIMITS)
        assert err.value.status == status
        assert err.value.reason


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def _npy_with_shape(shape: str, data_bytes: int) -> bytes:
    """A version 1.0 ``.npy`` body whose header says ``shape`` (as numpy writes a header)."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return (b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
            + b"\0" * data_bytes)


class TestNpy:
    """The binary twin of the JSON tensor: same shapes and values, read without pickle."""

    def test_same_tensor_as_json(self) -> None:
        values = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
        from_json = decode(json.dumps({"data": values.tolist()}), SPEC, NORM, LIMITS)
        for version in (None, (2, 0)):
            assert torch.equal(decode(npy(values, version), SPEC, NORM, LIMITS), from_json)
        assert decode(npy(values[0, 0].astype(np.float64)), SPEC, NORM, LIMITS).shape == (
            1, 1, 8, 8)

    def test_uint8_pixels_are_scaled_like_an_image(self) -> None:
        pixels = np.arange(64, dtype=np.uint8).reshape(1, 1, 8, 8)
        out = decode(npy(pixels), SPEC, NORM, LIMITS)
        assert torch.allclose(out, torch.from_numpy(pixels.astype(np.float32) / 255.0))

    def test_the_header_is_checked_before_any_data_is_read(self) -> None:
        huge = npy(np.zeros((1, 1, 8, 8), np.float32)).replace(b"(1, 1, 8, 8)", b"(9, 1, 8, 8)")
        with pytest.raises(BadRequest) as err:
            decode(huge, SPEC, NORM, LIMITS)
        assert err.value.status == 413 and "elements" in err.value.reason

    @pytest.mark.parametrize(
        ("body", "status", "words"),
        [
            (npy(np.zeros((1, 1, 8, 8), np.int64)), 400, "dtype"),
            (npy(np.zeros((1, 1, 8, 8), ">f4")), 400, "dtype"),
            (npy(np.asfortranarray(np.zeros((1, 1, 8, 8), np.float32))), 400, "C order"),
            (npy(np.zeros((1, 1, 8, 7), np.float32)), 400, "shape"),
            (npy(np.zeros((0, 1, 8, 8), np.float32)), 400, "empty"),
            (npy(np.full((1, 1, 8, 8), np.inf, np.float32)), 400, "non-finite"),
            (npy(np.zeros((1, 1, 8, 8), np.float32))[:-4], 400, "bytes"),
            (npy(np.zeros((1, 1, 8, 8), np.float32)) + b"\0", 400, "bytes"),
            (_npy_with_shape("(0, 1000000000000000000000000000000, 8, 8)", 0), 400, "shape"),
            (_npy_with_shape("(0, 4611686018427387904, 4611686018427387904)", 0), 400, "shape"),
            (_npy_with_shape("(" + "1, " * 100 + ")", 4), 400, "shape"),
            (_npy_with_shape("(True, 1, 8, 8)", 256), 400, "shape"),
            (npy(np.full((1, 1, 8, 8), 1e300)), 400, "non-finite"),
            (b"\x93NUMPY\x09\x00", 400, "header"),
            (b"\x93NUMPY\x01\x00\xff", 400, "header"),
        ],
    )
    def test_refused(self, body: bytes, status: int, words: str) -> None:
        with pytest.raises(BadRequest) as err:
            decode(body, SPEC, NORM, LIMITS)
        assert err.value.status == status and words in err.value.reason, err.value.reason

    def test_an_object_array_never_unpickles(self) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.array([None, 1], dtype=object), allow_pickle=True)
        with pytest.raises(BadRequest) as err:
            decode(buffer.getvalue(), SPEC, NORM, LIMITS)
        assert err.value.status == 400 and "dtype" in err.value.reason


class TestFuzz:
    """Whatever arrives, the decoder answers a tensor or a 4xx: never another exception."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=2048))
    def test_random_bytes(self, body: bytes) -> None:
        _decode_or_4xx(body)

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=512), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]))
    def test_image_magic_with_garbage(self, tail: bytes, magic: bytes) -> None:
        _decode_or_4xx(magic + tail)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
    def test_corrupted_npy(self, position: int, patch: bytes) -> None:
        body = bytearray(npy(np.zeros((2, 1, 8, 8), np.float32)))
        position %= len(body)
        body[position : position + len(patch)] = patch
        _decode_or_4xx(bytes(body))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
    def test_corrupted_real_png(self, position: int, patch: bytes) -> None:
        body = bytearray(png_bytes(12, 9, "RGB"))
        position %= len(body)
        body[position : position + len(patch)] = patch
        _decode_or_4xx(bytes(body))

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
            lambda children: st.lists(children, max_size=6)
            | st.dictionaries(st.text(max_size=5), children, max_size=3),
            max_leaves=80,
        )
    )
    def test_wrong_json(self, document: object) -> None:
        _decode_or_4xx(json.dumps(document).encode())


def _decode_or_4xx(body: bytes) -> None:
    try:
        out = decode(body, SPEC, NORM, LIMITS)
    except BadRequest as err:
        assert 400 <= err.status < 500
        return
    assert out.shape[1:] == SPEC.shape
    assert torch.isfinite(out).all()


class TestNormalisedValues:
    """The decoder's one-pass conversion gives what the textbook formula gives."""

    def test_rgb_jpeg_matches_reference(self) -> None:
        spec = InputSpec(3, 16, 16)
        norm = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        body = png_bytes(20, 18, "RGB", "JPEG")
        image = Image.open(io.BytesIO(body)).convert("RGB").resize((16, 16),
                                                                   Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean = np.array(norm.mean, dtype=np.float32)[:, None, None]
        std = np.array(norm.std, dtype=np.float32)[:, None, None]
        reference = torch.from_numpy((pixels - mean) / std)[None]
        out = decode(body, spec, norm, LIMITS)
        assert out.is_contiguous() and out.dtype == torch.float32
        assert torch.allclose(out, reference, atol=1e-5)

    def test_json_pixels_scaled_by_mean_and_std(self) -> None:
        norm = Normalisation((0.25,), (0.5,))
        out = decode(json.dumps([[0.75] * 8] * 8), SPEC, norm, LIMITS)
        assert torch.allclose(out, torch.full((1, 1, 8, 8), 1.0))

    def test_unmodified_image_is_decoded_without_conversion(self) -> None:
        body = png_bytes(8, 8, "L")  # already the model's mode and size
        expected = torch.from_numpy(np.asarray(Image.open(io.BytesIO(body)), dtype=np.float32))
        out = decode(body, SPEC, NORM, LIMITS)
        assert torch.equal(out[0, 0], expected / 255.0)


class TestBatchNormalisation:
    """A batch is normalised once, in one buffer: the same numbers as each request alone."""

    def test_mixed_bodies_give_each_requests_own_rows(self) -> None:
        norm = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        values = np.random.default_rng(3).random((2, 3, 8, 8), dtype=np.float32)
        bodies: list[bytes | str] = [png_bytes(8, 8, "RGB", "JPEG"),
                                     json.dumps({"data": values.tolist()}),
                  npy((values * 255).astype(np.uint8)), png_bytes(12, 10, "RGB")]
        parts = [decode_pixels(body, RGB, LIMITS) for body in bodies]
        assert [p.scale for p in parts] == [255.0, 1.0, 255.0, 255.0]
        batch = batch_tensor(parts, norm)
        alone = torch.cat([decode(body, RGB, norm, LIMITS) for body in bodies])
        assert batch.shape == (6, 3, 8, 8) and batch.is_contiguous()
        assert torch.equal(batch, alone)

    def test_an_empty_batch_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            batch_tensor([], RGB_NORM)

    def test_a_read_only_array_is_copied_not_refused(self) -> None:
        pixels = np.full((1, 3, 8, 8), 255, dtype=np.uint8)
        pixels.flags.writeable = False
        out = batch_tensor([Pixels(pixels, 255.0)], RGB_NORM)
        assert torch.equal(out, torch.ones((1, 3, 8, 8)))


class TestLimitsFollowTheModel:
    def test_pixels_and_body_follow_the_input_size(self) -> None:
        limits = limits_for(DecodeLimits(), SPEC)
        assert limits.max_image_pixels == SPEC.height * SPEC.width * IMAGE_AREA_MARGIN
        assert limits.max_body_bytes < DecodeLimits().max_body_bytes

    def test_never_looser_than_configured(self) -> None:
        tight = DecodeLimits(max_body_bytes=100, max_image_pixels=10, max_samples=2)
        assert limits_for(tight, SPEC) == tight

    def test_the_runtime_decodes_with_the_models_limits(self) -> None:
        rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=None))
        side = 8 * 4 + 1  # just over 16x the 8x8 input's pixels
        too_big, fits = rt.handle([RawRequest(png_bytes(side, side)),
                                   RawRequest(png_bytes(32, 32))])
        assert isinstance(too_big, Failure) and too_big.status == 413
        assert not isinstance(fits, Failure)

    def test_more_json_elements_than_max_samples_inputs_is_413(self) -> None:
        too_many = json.dumps([[[[0.0] * 8] * 8]] * 5).encode()  # LIMITS: 4 samples
        with pytest.raises(BadRequest) as err:
            decode(too_many, SPEC, NORM, LIMITS)
        assert err.value.status == 413

    def test_element_count_is_bounded_before_parsing(self, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
        def no_parse(*_: object) -> None:
            raise AssertionError("parsed a body that was too big on its face")

        monkeypatch.setattr("elastiserve_serve.runtime.decode.json.loads", no_parse)
        with pytest.raises(BadRequest) as err:
            decode(b"[" + b"0," * (2 * 4 * 64 + 1) + b"0]", SPEC, NORM, LIMITS)
        assert err.value.status == 413

    def test_nesting_depth_is_bounded_before_parsing(self, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
        def no_parse(*_: object) -> None:
            raise AssertionError("parsed a body nested deeper than any tensor")

        monkeypatch.setattr("elastiserve_serve.runtime.decode.json.loads", no_parse)
        with pytest.raises(BadRequest) as err:
            decode(b"[[[[[[0]]]]]]", SPEC, NORM, LIMITS)
        assert err.value.status == 400

    def test_a_decompression_bomb_is_refused_from_its_header(self) -> None:
        # 20000x20000 zero pixels deflate to ~400 kB: within the body limit, refused unread.
        buffer = io.BytesIO()
        Image.new("1", (20000, 20000)).save(buffer, format="PNG")
        limits = limits_for(LIMITS, SPEC)
        assert len(buffer.getvalue()) < limits.max_body_bytes
        with pytest.raises(BadRequest) as err:
            decode(buffer.getvalue(), SPEC, NORM, limits)
        assert err.value.status == 413
