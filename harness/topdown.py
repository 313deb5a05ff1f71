"""Top-down crops, the geometry stage of keypoint models (the RTMPose line): one instance's box padded,
made square and warped to the model input, by OpenCV's warpAffine (mmpose) or Pillow's affine transform,
in the legacy or the UDP pixel convention (Profile.crop_convention)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from harness.errors import SampleError
from harness.profile import Profile

if TYPE_CHECKING:
    from harness.preprocess import Geometry  # preprocess imports this module when it crops

# a top-down crop's warp, by the profile's `resize` name: OpenCV's warpAffine (mmpose) or Pillow's affine
# transform, whose pixel-centre conventions differ by half a pixel
WARPS = {"cv2-nearest": cv2.INTER_NEAREST, "cv2-linear": cv2.INTER_LINEAR, "cv2-cubic": cv2.INTER_CUBIC,
         "cv2-lanczos4": cv2.INTER_LANCZOS4, "pil-nearest": Image.NEAREST, "pil-bilinear": Image.BILINEAR,
         "pil-bicubic": Image.BICUBIC}


def instance_box(sample, profile: Profile):
    """The box a top-down crop is taken around (a keypoint sample is one instance), else None."""
    boxes = getattr(sample, "boxes", None)
    return boxes[0] if profile.geometry == "topdown" and boxes is not None and len(boxes) else None


def topdown_crop(image: np.ndarray, profile: Profile, box, source_w: int, source_h: int
                 ) -> tuple[np.ndarray, Geometry]:
    """The instance's box (stored-image pixels; None: the whole image) padded by box_padding, made square
    around its centre (mmpose's GetBBoxCenterScale + _fix_aspect_ratio), warped to S x S."""
    height, width = image.shape[:2]
    ratio_x, ratio_y = width / source_w, height / source_h  # a reduced decode is smaller than the stored image
    x0, y0, x1, y1 = (0.0, 0.0, float(source_w), float(source_h)) if box is None else (float(v) for v in box)
    if max(x1 - x0, y1 - y0) <= 0:
        raise SampleError(f"its box {[round(v, 2) for v in (x0, y0, x1, y1)]} has no extent to crop around")
    side_x, side_y = max(x1 - x0, y1 - y0) * profile.box_padding * ratio_x, \
        max(x1 - x0, y1 - y0) * profile.box_padding * ratio_y
    centre_x, centre_y = (x0 + x1) / 2 * ratio_x, (y0 + y1) / 2 * ratio_y
    size = profile.input_size
    span = size - 1 if profile.crop_convention == "udp" else size
    scale_x, scale_y = span / side_x, span / side_y
    offset_x, offset_y = -scale_x * (centre_x - side_x / 2), -scale_y * (centre_y - side_y / 2)
    method = WARPS.get(profile.resize)
    if method is None:
        raise SampleError(f"resize {profile.resize!r} cannot warp a top-down crop; one of {', '.join(WARPS)}")
    if profile.resize.startswith("cv2-"):
        matrix = np.array([[scale_x, 0, offset_x], [0, scale_y, offset_y]], np.float64)
        pixels = cv2.warpAffine(image, matrix, (size, size), flags=method)
    else:  # Pillow takes the inverse map, output -> input
        inverse = (1 / scale_x, 0, -offset_x / scale_x, 0, 1 / scale_y, -offset_y / scale_y)
        pixels = np.asarray(Image.fromarray(image).transform((size, size), Image.AFFINE, inverse, resample=method))
    from harness.preprocess import Geometry

    return pixels, Geometry(scale_x * ratio_x, scale_y * ratio_y, offset_x, offset_y, source_w, source_h)
