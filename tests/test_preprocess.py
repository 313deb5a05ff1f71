"""Pre-processing stages: geometry is fixed, boxes map back exactly, decoders are what we claim."""
import io

import numpy as np
import pytest
from PIL import Image

from harness.data import embedded_benchmark
from harness.errors import SampleError, UnknownName
from harness.preprocess import apply_geometry, decode, normalize, to_pixels
from harness.profile import Profile


def _jpeg(width, height, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("geometry", ["shorter-crop", "letterbox", "squash"])
@pytest.mark.parametrize("resize", ["pil-bilinear", "cv2-area", "cv2-nearest"])
def test_every_geometry_gives_the_model_input_size(geometry, resize):
    profile = Profile(input_size=64, resize_size=72, geometry=geometry, resize=resize)
    pixels, _ = to_pixels(_jpeg(150, 100), profile)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_shorter_crop_boxes_map_back_to_the_stored_image():
    # 200x100 image, shorter side 100 -> 72 (scale 0.72), width 144, centre crop 64: left offset 40, top 4
    profile = Profile(input_size=64, resize_size=72, geometry="shorter-crop")
    _, geometry = apply_geometry(np.zeros((100, 200, 3), np.uint8), profile)
    assert (geometry.scale_x, geometry.scale_y, geometry.offset_x, geometry.offset_y) == (0.72, 0.72, -40, -4)
    back = geometry.to_image(np.array([[0, 0, 64, 64]], np.float32))
    np.testing.assert_allclose(back, [[40 / 0.72, 4 / 0.72, 104 / 0.72, 68 / 0.72]], rtol=1e-6)


def test_letterbox_pads_below_and_right():
    profile = Profile(input_size=128, geometry="letterbox")
    out, geometry = apply_geometry(np.full((100, 200, 3), 7, np.uint8), profile)
    assert geometry.scale_x == geometry.scale_y == 0.64
    assert (out[:64] == 7).all() and (out[64:] == 114).all()


def test_normalize_layout_and_values():
    profile = Profile(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    pixels[..., 1] = 255
    out = normalize(pixels, profile)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    assert np.all(out[:, 0] == -1.0) and np.all(out[:, 1] == 2.0)


def test_pil_and_opencv_decode_the_benchmark_bit_identically():
    # A measured fact of current wheels (shared/DATA-NOTES.md): this pair is a null decoder axis.
    dataset = embedded_benchmark("classify")
    for sample in dataset.samples[:40]:
        data = dataset.read(sample)
        assert np.array_equal(decode(data, "pil"), decode(data, "opencv"))


def test_bad_bytes_and_unknown_names():
    with pytest.raises(SampleError, match="cannot decode"):
        decode(b"not an image", "pil")
    with pytest.raises(SampleError):
        decode(_jpeg(10, 10)[:40], "opencv")
    with pytest.raises(UnknownName, match="known: .*pil-bilinear"):
        to_pixels(_jpeg(10, 10), Profile(resize="pil-bilinar"))


def test_reduced_decoding_still_maps_boxes_to_the_stored_image():
    # pil-draft-2 decodes at half size; the Geometry must still point into the stored image
    data = _jpeg(200, 100)
    profile = Profile(input_size=64, geometry="letterbox")
    _, full = to_pixels(data, profile)
    _, reduced = to_pixels(data, profile.replace(decoder="pil-draft-2"))
    box = np.array([[10, 5, 60, 30]], np.float32)
    np.testing.assert_allclose(reduced.to_image(box), full.to_image(box), rtol=1e-6)
