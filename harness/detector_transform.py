"""Geometry `torchvision-detect`: torchvision's detectors' own input transform (GeneralizedRCNNTransform), which
they run inside the model: the image as floats in [0, 1], normalised, resized as a float tensor, and
zero-padded at the bottom and right to a multiple of 32 (its batch_images). The harness runs it before the
graph, so the exported graph starts at the backbone and the resize is a pre-processing axis like any other.

The profile says which of its two resizes: `resize_size` set, the shorter side scaled to it by the scale factor
the transform computes (RetinaNet, FCOS, Faster R-CNN: min_size); `resize_size` unset, both sides to
`input_size` (SSD's fixed_size). The harness runs one square input a profile, so the first kind takes square
images only (whose resized side pads to `input_size`); another image is one counted SampleError, never squashed.
"""
from __future__ import annotations

import math

import numpy as np

from harness.errors import SampleError

# GeneralizedRCNNTransform pads each side up to a multiple of this (size_divisible; SSD's fixed size pads nothing)
SIZE_DIVISIBLE = 32


def scaled_size(width: int, height: int, min_size: int) -> tuple[int, int]:
    """The size torchvision's resize gives an image whose shorter side is scaled to `min_size`: the scale
    factor min_size / shorter side, each side floor(side * scale) as F.interpolate's recompute_scale_factor
    computes it (a square's side can come out one pixel short: floor(97 * (800 / 97)) is 799)."""
    scale = min_size / min(width, height)
    return math.floor(width * scale), math.floor(height * scale)


def torchvision_detect(image: np.ndarray, profile, resize, source_w: int, source_h: int):
    """uint8[H, W, 3] -> (float32[S, S, 3] normalised, Geometry), S = profile.input_size. The reference resize
    (a torch-* one) runs on the normalised float tensor with the transform's own F.interpolate arguments, bit
    for bit; a Pillow or OpenCV resize resizes the decoded uint8 image to the same size before normalising, as
    a deployment's image pipeline does."""
    import torch
    import torch.nn.functional as F

    from harness.preprocess import Geometry

    height, width = image.shape[:2]
    size = profile.input_size
    if profile.resize_size:
        new_w, new_h = scaled_size(width, height, profile.resize_size)
        if new_w != new_h or not size - SIZE_DIVISIBLE < new_w <= size:
            raise SampleError(f"{width}x{height}: torchvision's detection transform resizes it to {new_w}x{new_h} "
                              f"and pads that to a multiple of {SIZE_DIVISIBLE}; the harness runs one {size}x{size} "
                              "input a profile (square images; geometry letterbox/squash in --profile, measured as "
                              "a deviation)")
    else:
        new_w = new_h = size
    mean, std = (torch.tensor(values, dtype=torch.float32)[:, None, None] for values in (profile.mean, profile.std))
    if profile.resize.startswith("torch-"):
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).to(torch.float32) / 255
        tensor = (tensor - mean) / std
        resized = F.interpolate(tensor[None], size=(new_h, new_w), mode=profile.resize.split("-")[1],
                                align_corners=False, antialias=profile.resize.endswith("-aa"))[0]
    else:
        pixels = resize(image, new_w, new_h)
        resized = (torch.from_numpy(np.array(pixels)).permute(2, 0, 1).to(torch.float32) / 255 - mean) / std
    padded = torch.zeros(3, size, size, dtype=torch.float32)
    padded[:, :new_h, :new_w] = resized
    return padded.permute(1, 2, 0).numpy().copy(), Geometry(new_w / source_w, new_h / source_h, 0, 0, source_w,
                                                             source_h)
