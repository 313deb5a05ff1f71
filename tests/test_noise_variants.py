"""Each pre-processing variant produces what it claims, checked against an independent computation."""
import io

import numpy as np
import pytest
from PIL import Image

from harness.data import embedded_benchmark
from harness.errors import SampleError
from harness.preprocess import COLORS, CUDA_DECODERS, DECODERS, RESIZERS, decode
from harness.yuv import _pack_420


def test_yuv420_bt601_full_range_matches_the_formulas_on_a_known_pixel():
    # BT.601 full range, R,G,B = 200,100,50:
    #   Y  = 0.299*200 + 0.587*100 + 0.114*50      = 124.2 -> 124
    #   Cb = 128 + (50 - 124.2) / (2 * (1 - 0.114)) =  86.13 -> 86
    #   Cr = 128 + (200 - 124.2) / (2 * (1 - 0.299)) = 182.07 -> 182
    # and back: R = 124 + 1.402*54 = 199.7, G = 124 - 0.344136*(-42) - 0.714136*54 = 99.9, B = 124 + 1.772*(-42) = 49.6
    pixel = np.full((2, 2, 3), (200, 100, 50), np.uint8)
    assert COLORS["yuv420-bt601-full-i420"](pixel)[0, 0].tolist() == [200, 100, 50]
    y, cb, cr = np.full((2, 2), 124), np.full((1, 1), 86), np.full((1, 1), 182)
    assert list(_pack_420(y, cb, cr, "i420")) == [124] * 4 + [86, 182]
    assert list(_pack_420(y, np.array([[1, 2]]), np.array([[3, 4]]), "nv12"))[4:] == [1, 3, 2, 4]


def test_limited_range_and_chroma_subsampling_change_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    full = COLORS["yuv420-bt601-full-i420"](image)
    assert np.array_equal(full, COLORS["yuv420-bt601-full-nv12"](image))  # same samples, another layout
    assert not np.array_equal(full, image)  # 4:2:0 loses chroma detail
    assert not np.array_equal(full, COLORS["yuv420-bt709-full-i420"](image))
    assert np.array_equal(COLORS["bgr"](image), image[..., ::-1])


def _shorter_crop_by_hand(image: Image.Image, short: int, size: int) -> np.ndarray:
    """Pillow bilinear resize of the shorter side to `short` (long side rounded), then the floor-offset
    centre crop: the zoo classifier's training geometry, written out independently of apply_geometry."""
    width, height = image.size
    scale = short / min(width, height)
    new_w, new_h = max(short, round(width * scale)), max(short, round(height * scale))
    resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size]


def test_colour_converts_at_decode_by_default_and_after_the_resize_when_named():
    """The colour axis's default placement: the YUV round trip on the stored image at full resolution (as a
    camera ISP or a video decoder delivers it), then the reference resize; `@model-input`: resize first.
    Both through to_pixels (the stages spelled out without caches) and the pre-processing stages every run
    goes through (harness.stages), the cached way."""
    from harness.model import resolve_model
    from harness.noise import AXES
    from harness.preprocess import to_pixels
    from harness.stages import Preprocessor

    spec = resolve_model("resnet_tiny")
    dataset = embedded_benchmark("classify").limit(6).aligned_to(spec.labels)
    yuv = "yuv420-bt601-limited-i420"
    variants = {v.name: v for v in AXES["color"].variants(spec, "onnxruntime")}
    at_decode = spec.profile.replace(**variants[yuv].profile)
    at_input = spec.profile.replace(**variants[f"{yuv}@model-input"].profile)
    assert (at_decode.color_at, at_input.color_at) == ("decode", "model-input")
    stages = Preprocessor(dataset)
    staged = {place: stages.stack(dataset.samples, profile).pixels
              for place, profile in (("decode", at_decode), ("model-input", at_input))}
    for k, sample in enumerate(dataset.samples):
        data = dataset.read(sample)
        with Image.open(io.BytesIO(data)) as opened:
            stored = np.asarray(opened.convert("RGB"))
        converted_first = _shorter_crop_by_hand(Image.fromarray(COLORS[yuv](stored)), 72, 64)
        resized_first = COLORS[yuv](_shorter_crop_by_hand(Image.fromarray(stored), 72, 64))
        assert not np.array_equal(converted_first, resized_first)  # the placement changes pixels
        assert np.array_equal(to_pixels(data, at_decode)[0], converted_first)
        assert np.array_equal(staged["decode"][k], converted_first)
        assert np.array_equal(to_pixels(data, at_input)[0], resized_first)
        assert np.array_equal(staged["model-input"][k], resized_first)
    # a channel swap commutes with the resize: one resize serves it at either placement
    assert "bgr@model-input" not in variants


def test_decoders_differ_where_the_measurements_say():
    dataset = embedded_benchmark("classify")
    data = dataset.read(dataset.samples[0])
    reference = decode(data, "pil")
    assert np.array_equal(decode(data, "torchvision"), reference)
    assert np.array_equal(decode(data, "opencv"), reference)
    assert decode(data, "ffmpeg").shape == reference.shape
    differing = [name for name in ("ffmpeg", "simplejpeg-fast")
                 if not np.array_equal(decode(data, name), reference)]
    assert differing == ["ffmpeg", "simplejpeg-fast"]
    reduced = decode(data, "pil-draft-2")
    assert reduced.shape[0] == (reference.shape[0] + 1) // 2 and reduced.shape[1] == (reference.shape[1] + 1) // 2


@pytest.mark.parametrize("name", sorted(RESIZERS))
def test_every_resizer_hits_the_requested_size(name):
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    assert RESIZERS[name](image, 50, 40).shape == (40, 50, 3)


def test_antialiasing_is_what_separates_pil_from_cv2_linear():
    # a 1-pixel checkerboard shrunk 3.2x: antialiasing averages it to grey; a 2-tap filter that ignores
    # the scale (cv2 linear, torch without antialias) lands between two pixels and aliases
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[..., None], 3, axis=2)
    pil = RESIZERS["pil-bilinear"](image, 20, 20).astype(int)
    torch_aa = RESIZERS["torch-bilinear-aa"](image, 20, 20).astype(int)
    assert np.abs(pil - 127.5).max() < 1 and np.abs(torch_aa - pil).max() <= 1
    for aliasing in ("cv2-linear", "torch-bilinear"):
        assert np.abs(RESIZERS[aliasing](image, 20, 20).astype(int) - 127.5).max() > 60


def _encoded(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.needs_device("torch", "cuda"))
                                  if name in CUDA_DECODERS else name for name in sorted(DECODERS)])
def test_every_decoder_fails_one_sample_with_the_same_contract(name):
    """Garbage, a PNG, a truncated JPEG and zero bytes: each decoder either decodes (uint8 HxWx3 at the
    header's size) or raises SampleError naming what is wrong, never its own exception type; and a failure
    leaves the decoder working for the next image (FFmpeg shares one codec context)."""
    jpeg, png = _encoded("JPEG", quality=90), _encoded("PNG")
    before = decode(jpeg, name)
    for data in (b"\xff\xd8\xff garbage", b""):
        with pytest.raises(SampleError, match="cannot decode"):
            decode(data, name)
    for data in (png, jpeg[: len(jpeg) // 2]):
        try:
            pixels = decode(data, name)
        except SampleError as err:
            assert str(err).startswith(f"{name} cannot decode it ("), err
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
            if data is png and name != "pil-draft-2":  # a lossless file: every decoder that reads it agrees
                assert np.array_equal(pixels, decode(png, "pil"))
    assert np.array_equal(decode(jpeg, name), before)


def test_ffmpeg_decodes_again_after_an_empty_packet():
    """An empty packet is FFmpeg's end-of-stream: the shared codec context then refuses every later picture
    (EOFError) unless it is opened anew, which the decoder does after any failure."""
    jpeg = _encoded("JPEG", quality=90)
    before = DECODERS["ffmpeg"](jpeg)
    with pytest.raises(ValueError, match="FFmpeg decoded no frame"):
        DECODERS["ffmpeg"](b"")
    assert np.array_equal(DECODERS["ffmpeg"](jpeg), before)
