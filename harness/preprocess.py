"""Pre-processing stages: decode -> colour -> geometry (resize, crop/pad) -> normalise, or with
`color_at = "model-input"` decode -> geometry -> colour -> normalise.

Each stage is a pure function of (its input, its profile fields), so stage outputs can be cached and
every backend of a comparison is fed the very same tensor. The variants offered for each stage live in
the registries below, which is what the noise axes of `harness sysnoise` enumerate.
"""
from __future__ import annotations

import io
import os
from functools import lru_cache
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import SampleError
from harness.profile import NORMALISING_GEOMETRIES, Profile
from harness.plugins import lookup
from harness.yuv import YUV_MATRICES, yuv420_roundtrip

# An explicit pixel budget, checked on the header before any decoder allocates: a 167-byte PNG can claim
# 30000x30000. 100 MP is above any camera's still; HARNESS_MAX_PIXELS raises it for a dataset that needs it.
MAX_PIXELS = int(os.environ.get("HARNESS_MAX_PIXELS", 100_000_000))
# A 60000x1 strip is within the budget but resizing its shorter side to 256 px makes 15 G pixels.
MAX_ASPECT = 50
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check, at our budget


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Pillow's `convert("RGB")` saturates 16-bit grey to white; 16-bit samples are scaled to 8 bits as
    OpenCV does (the high byte), and modes with no faithful 8-bit form are refused."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode in ("I", "F"):
        raise ValueError(f"{'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels (mode "
                         f"{image.mode}) have no faithful 8-bit RGB form")
    return np.asarray(image.convert("RGB"))


def decode_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return _to_rgb(image)


def decode_opencv(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("OpenCV could not decode the image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_torchvision(data: bytes) -> np.ndarray:
    """torchvision.io's decoder (libjpeg-turbo / libpng / libwebp, by the bytes' format)."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated; they still work
        tensor = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if tensor.dtype != torch.uint8:  # 16-bit PNG: scaled as the other decoders do
        tensor = (tensor.to(torch.int32) >> 8).to(torch.uint8)
    return tensor.permute(1, 2, 0).numpy()


@lru_cache(maxsize=1)
def _mjpeg_codec():
    """One decoder context (per process; decoding runs in one thread): every MJPEG packet is a complete
    picture, and opening a codec costs ~10 ms, 15x the decode itself."""
    import av

    return av.CodecContext.create("mjpeg", "r")


def decode_ffmpeg(data: bytes) -> np.ndarray:
    """FFmpeg's MJPEG decoder and its swscale YUV->RGB conversion (PyAV), as the SysNoise paper used."""
    import av

    try:
        frames = _mjpeg_codec().decode(av.Packet(data))
    except BaseException:
        _mjpeg_codec.cache_clear()  # a failed packet can leave the shared context broken for every later one
        raise
    if not frames:
        _mjpeg_codec.cache_clear()
        raise ValueError("FFmpeg decoded no frame")
    return frames[0].to_ndarray(format="rgb24")


def decode_simplejpeg_fast(data: bytes) -> np.ndarray:
    """libjpeg-turbo with the fast integer IDCT and plain (non-fancy) chroma upsampling, as hardware and
    DALI-style decoders do."""
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="rgb", fastdct=True, fastupsample=True)


def decode_pil_draft(data: bytes) -> np.ndarray:
    """DCT-domain reduced decoding at 1/2 scale (Pillow `draft`), as thumbnailing services do; the
    geometry stage then resizes from the smaller image."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (image.width // 2, image.height // 2))
        return _to_rgb(image)


def decode_nvjpeg(data: bytes) -> np.ndarray:
    """nvJPEG on the GPU (torchvision.io.decode_jpeg with device="cuda"), as GPU inference servers decode
    (DALI, Triton's image pipelines); JPEG only."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated; they still work
        tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             device="cuda")
    return tensor.permute(1, 2, 0).cpu().numpy()


DECODERS = {"pil": decode_pil, "opencv": decode_opencv, "torchvision": decode_torchvision,
            "ffmpeg": decode_ffmpeg, "simplejpeg-fast": decode_simplejpeg_fast, "pil-draft-2": decode_pil_draft,
            "nvjpeg": decode_nvjpeg}
CUDA_DECODERS = ("nvjpeg",)  # offered as sweep variants only where CUDA is (harness.noise.cuda_missing)
# decoders whose package an install may lack (a GPU image's own torch beside a --no-deps harness): a sweep
# lists them as unavailable, naming the package, instead of failing every sample
DECODER_PACKAGES = {"ffmpeg": "av", "simplejpeg-fast": "simplejpeg"}


def _pil_resizer(method: int):
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((width, height), method))
    return resize


def _cv2_resizer(method: int):
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        return cv2.resize(image, (width, height), interpolation=method)
    return resize


def _torch_resizer(mode: str, antialias: bool):
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        out = F.interpolate(tensor, size=(height, width), mode=mode, align_corners=False, antialias=antialias)
        return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return resize


# Pillow antialiases when it shrinks (its filters widen with the scale); OpenCV's do not, except area.
RESIZERS = {
    "pil-nearest": _pil_resizer(Image.NEAREST),
    "pil-bilinear": _pil_resizer(Image.BILINEAR),
    "pil-bicubic": _pil_resizer(Image.BICUBIC),
    "pil-lanczos": _pil_resizer(Image.LANCZOS),
    "pil-box": _pil_resizer(Image.BOX),
    "pil-hamming": _pil_resizer(Image.HAMMING),
    "cv2-nearest": _cv2_resizer(cv2.INTER_NEAREST),
    "cv2-nearest-exact": _cv2_resizer(cv2.INTER_NEAREST_EXACT),
    "cv2-linear": _cv2_resizer(cv2.INTER_LINEAR),
    "cv2-cubic": _cv2_resizer(cv2.INTER_CUBIC),
    "cv2-area": _cv2_resizer(cv2.INTER_AREA),
    "cv2-lanczos4": _cv2_resizer(cv2.INTER_LANCZOS4),
    "torch-bilinear": _torch_resizer("bilinear", False),
    "torch-bilinear-aa": _torch_resizer("bilinear", True),
    "torch-bicubic": _torch_resizer("bicubic", False),
    "torch-bicubic-aa": _torch_resizer("bicubic", True),
}

COLORS = {
    "rgb": lambda rgb: rgb,
    "bgr": lambda rgb: np.ascontiguousarray(rgb[..., ::-1]),
}
for _matrix in YUV_MATRICES:
    for _range in ("full", "limited"):
        for _layout in ("i420", "nv12"):
            COLORS[f"yuv420-{_matrix}-{_range}-{_layout}"] = (
                lambda rgb, m=_matrix, f=_range == "full", l=_layout: yuv420_roundtrip(rgb, m, f, l))
# pure channel orders commute with every resize: where they apply changes no pixel, so they apply after
# the geometry whatever the placement, and colour variants share one resize
CHANNEL_ORDERS = ("rgb", "bgr")
LETTERBOX_FILL = 114  # the grey YOLO-style letterboxing pads with
IGNORE_LABEL = 255  # a label-map value no metric counts: VOC's boundary value, and letterbox padding of labels


def color_before_geometry(profile: Profile) -> bool:
    """Whether the profile's colour conversion runs on the decoded image, before the resize."""
    return profile.color_at == "decode" and profile.color not in CHANNEL_ORDERS


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map back to stored-image pixels: stored = (input - offset) / scale; `width` and
    `height` are the stored image's size (0: not known), the resolution a label map is evaluated at."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0
    width: int = 0
    height: int = 0

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        """float[..., 2] xy in model-input pixels -> stored-image pixels."""
        out = np.asarray(points, np.float32).copy()
        out[..., 0] = (out[..., 0] - self.offset_x) / self.scale_x
        out[..., 1] = (out[..., 1] - self.offset_y) / self.scale_y
        return out

    def image_region(self, input_size: int, map_width: int, map_height: int) -> tuple[int, int, int, int]:
        """The rows and columns (x0, y0, x1, y1) of a map over the model input (map_width x map_height for the
        input_size square) that the stored image covers: all of it for squash, the unpadded part for
        letterbox. A geometry that crops the image (it lies partly outside the input) has none:
        HarnessError, as a whole-image map (label map, instance mask) cannot be recovered from it."""
        from harness.errors import HarnessError

        if not (self.width and self.height):
            raise HarnessError("a map at the stored image's size needs that size; the geometry does not hold it")
        to_map_x, to_map_y = map_width / input_size, map_height / input_size
        x0, y0 = self.offset_x * to_map_x, self.offset_y * to_map_y
        x1, y1 = x0 + self.width * self.scale_x * to_map_x, y0 + self.height * self.scale_y * to_map_y
        if x0 < -1e-6 or y0 < -1e-6 or x1 > map_width + 1e-6 or y1 > map_height + 1e-6:
            raise HarnessError("a whole-image map (label map, instance masks) needs a geometry that keeps the whole "
                               "image (squash or letterbox), not one that crops it")
        # half up, both ends alike (Python's round halves to even: 1.5 -> 2 but 6.5 -> 6 would lose a row)
        return tuple(int(np.floor(v + 0.5)) for v in (x0, y0, x1, y1))

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """float32[K, 4] xyxy in model-input pixels -> stored-image pixels."""
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.offset_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.offset_y) / self.scale_y
        return out


def check_header(data: bytes) -> None:
    """Refuses, from the header alone, what no decoder should be handed: no bytes, an unknown format, more
    pixels than MAX_PIXELS, or an aspect beyond MAX_ASPECT (SampleError: this sample fails, no other)."""
    if not data:
        raise SampleError("cannot decode: empty file (0 bytes)")
    size = stored_size(data)
    if size is None:
        raise SampleError("cannot decode: not an image Pillow can identify (unknown format or corrupt header)")
    width, height = size
    if width <= 0 or height <= 0:
        raise SampleError(f"header gives an empty image ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise SampleError(f"header claims {width}x{height} = {width * height / 1e6:.0f} MP, above the "
                          f"{MAX_PIXELS / 1e6:.0f} MP budget (HARNESS_MAX_PIXELS)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise SampleError(f"{width}x{height}: aspect above {MAX_ASPECT}:1, no photo a model is fed")


def decode(data: bytes, decoder: str) -> np.ndarray:
    """Image bytes -> uint8[H, W, 3] RGB. Whatever the decoder (built-in or the user's), a sample it cannot
    decode raises SampleError and fails alone: decoders are native code with their own error types
    (RuntimeError from torchvision, EOFError and av errors from FFmpeg, cv2.error, ...)."""
    fn = lookup(DECODERS, "decoder", decoder)
    check_header(data)
    try:
        image = fn(data)
    except Exception as err:  # noqa: BLE001 - see above: one sample's failure, with the decoder's own words
        message = " ".join(str(err).split())[:200]
        raise SampleError(f"{decoder} cannot decode it ({type(err).__name__}: {message})") from None
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise SampleError(f"{decoder} returned {type(image).__name__} {getattr(image, 'dtype', '')}{shape}, "
                          "expected uint8[H, W, 3]")
    return image


def stored_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the stored image from its header, whatever a decoder then makes of it."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_header says it in words
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as err:
        raise SampleError(f"above the {MAX_PIXELS / 1e6:.0f} MP budget (HARNESS_MAX_PIXELS): {err}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def apply_geometry(image: np.ndarray, profile: Profile, source_size: tuple[int, int] | None = None,
                   fill: int = LETTERBOX_FILL, box=None) -> tuple[np.ndarray, Geometry]:
    """uint8[H, W, 3] -> uint8[S, S, 3] with S = profile.input_size; only the interpolation varies.

    The Geometry maps model-input pixels to the stored image's pixels: `source_size` (width, height) is
    that image's size when the decoder returned a smaller one (DCT-domain reduced decoding); `box` is the
    instance a top-down crop is taken around."""
    height, width = image.shape[:2]
    source_w, source_h = source_size or (width, height)
    if profile.geometry == "topdown":
        from harness.topdown import topdown_crop

        return topdown_crop(image, profile, box, source_w, source_h)
    resize = lookup(RESIZERS, "resize method", profile.resize)
    size = profile.input_size
    if profile.geometry == "squash":
        # both sides to resize_size (default: the input size), then torchvision's centre crop: timm's
        # crop_mode "squash" with its crop_pct
        side = profile.resize_size or size
        offset = int(round((side - size) / 2.0))
        squashed = resize(image, side, side)[offset:offset + size, offset:offset + size]
        return np.ascontiguousarray(squashed), Geometry(side / source_w, side / source_h, -offset, -offset,
                                                        source_w, source_h)
    if profile.geometry == "letterbox":
        scale = size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.full((size, size, 3), fill, np.uint8)
        canvas[:new_h, :new_w] = resize(image, new_w, new_h)
        return canvas, Geometry(new_w / source_w, new_h / source_h, 0, 0, source_w, source_h)
    if profile.geometry == "torchvision-detect":
        from harness.detector_transform import torchvision_detect

        return torchvision_detect(image, profile, resize, source_w, source_h)
    short = profile.crop_resize_size
    if profile.geometry == "torchvision-resize":
        return _torchvision_resize(image, resize, short, size, source_w, source_h)
    if profile.geometry == "torchvision-crop":
        # torchvision.transforms.functional.resize (_compute_resized_output_size) truncates the long side,
        # and center_crop rounds its offset: the conventions every torchvision model was trained with
        long = int(short * max(height, width) / min(height, width))
        new_w, new_h = (short, long) if width <= height else (long, short)
        resized = resize(image, new_w, new_h)
        # center_crop pads with zeros first when the image is smaller than the crop (resize_size < input_size)
        pad_top, pad_left = max(size - new_h, 0) // 2, max(size - new_w, 0) // 2
        if pad_top or pad_left or new_h < size or new_w < size:
            resized = np.pad(resized, ((pad_top, max(size - new_h, 0) - pad_top),
                                       (pad_left, max(size - new_w, 0) - pad_left), (0, 0)))
        padded_h, padded_w = resized.shape[:2]
        top, left = int(round((padded_h - size) / 2.0)), int(round((padded_w - size) / 2.0))
        cropped = resized[top:top + size, left:left + size]
        return np.ascontiguousarray(cropped), Geometry(new_w / source_w, new_h / source_h, pad_left - left,
                                                       pad_top - top, source_w, source_h)
    scale = short / min(height, width)
    new_w, new_h = max(short, round(width * scale)), max(short, round(height * scale))
    resized = resize(image, new_w, new_h)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized[top:top + size, left:left + size]
    return np.ascontiguousarray(cropped), Geometry(new_w / source_w, new_h / source_h, -left, -top, source_w,
                                                   source_h)


def _torchvision_resize(image: np.ndarray, resize, short: int, size: int, source_w: int, source_h: int):
    """torchvision's SemanticSegmentation preset: the shorter side to `short`, the long one truncated as
    _compute_resized_output_size does, aspect kept, nothing cropped. The harness runs one square input size a
    profile, so an image that is not square (whose input would be short x long) is refused, one sample."""
    height, width = image.shape[:2]
    long = int(short * max(height, width) / min(height, width))
    new_w, new_h = (short, long) if width <= height else (long, short)
    if (new_w, new_h) != (size, size):
        raise SampleError(f"{width}x{height} is not square: torchvision's resize keeps the aspect, so its input "
                          f"would be {new_w}x{new_h}, and the harness runs one {size}x{size} input a profile "
                          "(a square dataset, or geometry letterbox/squash in --profile, measured as a deviation)")
    resized = image if (width, height) == (new_w, new_h) else resize(image, new_w, new_h)
    return np.ascontiguousarray(resized), Geometry(new_w / source_w, new_h / source_h, 0, 0, source_w, source_h)


def label_map_to_input(mask: np.ndarray, profile: Profile) -> np.ndarray:
    """uint8[H, W] label map -> uint8[S, S] at the model input by the profile's geometry, resized with Pillow's
    nearest neighbour (labels are never interpolated or normalised); letterbox padding is IGNORE_LABEL."""
    planes = np.repeat(mask[..., None], 3, axis=2)
    pixels, _ = apply_geometry(planes, profile.replace(resize="pil-nearest"), fill=IGNORE_LABEL)
    return np.ascontiguousarray(pixels[..., 0])


def to_pixels(data: bytes, profile: Profile, box=None) -> tuple[np.ndarray, Geometry]:
    """Bytes -> uint8[S, S, 3] in the profile's colour, converted where the profile's system converts it
    (`color_at`), plus its Geometry (`box`: the instance of a top-down crop)."""
    color = lookup(COLORS, "color mode", profile.color)
    image = decode(data, profile.decoder)
    if color_before_geometry(profile):
        return apply_geometry(color(image), profile, stored_size(data), box=box)
    image, geometry = apply_geometry(image, profile, stored_size(data), box=box)
    return color(image), geometry


def normalize(pixels: np.ndarray, profile: Profile) -> np.ndarray:
    """uint8[..., H, W, 3] -> float32[..., 3, H, W], (x / 255 - mean) / std. A geometry that normalises before
    it resizes (torchvision-detect) hands over float32 pixels already normalised: only the axes move."""
    if profile.geometry in NORMALISING_GEOMETRIES:
        return np.ascontiguousarray(np.moveaxis(pixels.astype(np.float32, copy=False), -1, -3))
    mean = np.asarray(profile.mean, np.float32)
    std = np.asarray(profile.std, np.float32)
    scaled = (pixels.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(np.moveaxis(scaled, -1, -3))
