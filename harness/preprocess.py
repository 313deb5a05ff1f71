"""Pre-processing stages: decode -> geometry (resize, crop/pad) -> colour -> normalise.

Each stage is a pure function of (its input, its profile fields), so stage outputs can be cached and
every backend of a comparison is fed the very same tensor. The variants offered for each stage live in
the registries below, which is what the noise axes of `harness sysnoise` enumerate.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import SampleError, UnknownName
from harness.profile import Profile


def decode_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_opencv(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("OpenCV could not decode the image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


DECODERS = {"pil": decode_pil, "opencv": decode_opencv}


def _pil_resizer(method: int):
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((width, height), method))
    return resize


def _cv2_resizer(method: int):
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        return cv2.resize(image, (width, height), interpolation=method)
    return resize


# Pillow antialiases when it shrinks (its filters widen with the scale); OpenCV's do not, except area.
RESIZERS = {
    "pil-nearest": _pil_resizer(Image.NEAREST),
    "pil-bilinear": _pil_resizer(Image.BILINEAR),
    "pil-bicubic": _pil_resizer(Image.BICUBIC),
    "pil-lanczos": _pil_resizer(Image.LANCZOS),
    "cv2-nearest": _cv2_resizer(cv2.INTER_NEAREST),
    "cv2-linear": _cv2_resizer(cv2.INTER_LINEAR),
    "cv2-cubic": _cv2_resizer(cv2.INTER_CUBIC),
    "cv2-area": _cv2_resizer(cv2.INTER_AREA),
}

COLORS = {
    "rgb": lambda rgb: rgb,
    "bgr": lambda rgb: np.ascontiguousarray(rgb[..., ::-1]),
}
LETTERBOX_FILL = 114  # the grey YOLO-style letterboxing pads with


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map back to stored-image pixels: stored = (input - offset) / scale."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """float32[K, 4] xyxy in model-input pixels -> stored-image pixels."""
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.offset_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.offset_y) / self.scale_y
        return out


def _lookup(registry: dict, kind: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise UnknownName(kind, name, sorted(registry)) from None


def decode(data: bytes, decoder: str) -> np.ndarray:
    """JPEG/PNG bytes -> uint8[H, W, 3] RGB. Raises SampleError when the bytes are not an image."""
    fn = _lookup(DECODERS, "decoder", decoder)
    try:
        return fn(data)
    except (UnidentifiedImageError, OSError, ValueError, cv2.error) as err:
        raise SampleError(f"cannot decode image ({type(err).__name__}: {err})") from None


def apply_geometry(image: np.ndarray, profile: Profile) -> tuple[np.ndarray, Geometry]:
    """uint8[H, W, 3] -> uint8[S, S, 3] with S = profile.input_size; only the interpolation varies."""
    resize = _lookup(RESIZERS, "resize method", profile.resize)
    height, width = image.shape[:2]
    size = profile.input_size
    if profile.geometry == "squash":
        return resize(image, size, size), Geometry(size / width, size / height)
    if profile.geometry == "letterbox":
        scale = size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.full((size, size, 3), LETTERBOX_FILL, np.uint8)
        canvas[:new_h, :new_w] = resize(image, new_w, new_h)
        return canvas, Geometry(new_w / width, new_h / height)
    short = profile.crop_resize_size
    scale = short / min(height, width)
    new_w, new_h = max(short, round(width * scale)), max(short, round(height * scale))
    resized = resize(image, new_w, new_h)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized[top:top + size, left:left + size]
    return np.ascontiguousarray(cropped), Geometry(new_w / width, new_h / height, -left, -top)


def to_pixels(data: bytes, profile: Profile) -> tuple[np.ndarray, Geometry]:
    """Bytes -> uint8[S, S, 3] in the profile's colour order, plus its Geometry."""
    image, geometry = apply_geometry(decode(data, profile.decoder), profile)
    return _lookup(COLORS, "color mode", profile.color)(image), geometry


def normalize(pixels: np.ndarray, profile: Profile) -> np.ndarray:
    """uint8[..., H, W, 3] -> float32[..., 3, H, W], (x / 255 - mean) / std."""
    mean = np.asarray(profile.mean, np.float32)
    std = np.asarray(profile.std, np.float32)
    scaled = (pixels.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(np.moveaxis(scaled, -1, -3))
