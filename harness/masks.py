"""Instance masks: a YOLACT-style head's prototypes and coefficients -> one binary mask per detection at the
stored image's size, as COCO run-length encodings (pycocotools' own RLE, what COCO's `segm` evaluation reads).

The reference follows YOLACT and its most deployed descendant (ultralytics' process_mask_native, "retina
masks"): mask probabilities sigmoid(coefficients . prototypes) over the model input; the part of that map the
stored image covers resized to the stored size, bilinear with half-pixel centres (F.interpolate,
align_corners=False); zeroed outside the detection's box (ultralytics' crop_mask: pixel index x kept when
x1 <= x < x2); kept where the probability is above 0.5. Runtimes paste differently (`mask_paste`) and
threshold differently (`mask_threshold`): those are the post-processing noise of this task.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError
from harness.postprocess import Detections

# name -> (F.interpolate mode, align_corners)
_PASTE_MODES = {
    "bilinear": ("bilinear", False),                 # half-pixel centres: YOLACT, ultralytics, mmdet's paste
    "bilinear-align-corners": ("bilinear", True),    # corner pixels aligned: no half-pixel offset
    "nearest": ("nearest", None),                    # floor(x * in / out): OpenCV's and ONNX's legacy nearest
    "nearest-exact": ("nearest-exact", None),        # nearest with half-pixel centres (Pillow, ONNX half_pixel)
}
MASK_PASTES = tuple(_PASTE_MODES)


@dataclass(frozen=True)
class InstanceDetections(Detections):
    """Detections with each one's mask: `masks` holds one COCO RLE dict ({"size": [H, W], "counts": bytes})
    per detection, at the stored image's size."""

    masks: tuple = ()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def paste_masks(coefficients: np.ndarray, prototypes: np.ndarray, boxes: np.ndarray, geometry, input_size: int,
                paste: str = "bilinear", threshold: float = 0.5) -> list[dict]:
    """coefficients float[D, K], prototypes float[K, h, w] over the model input, boxes float[D, 4] xyxy in
    stored-image pixels -> D COCO RLEs at the stored image's size (geometry.width x geometry.height), by the
    module's pipeline with the given paste method and threshold."""
    import torch
    import torch.nn.functional as F
    from pycocotools import mask as coco_mask

    if paste not in _PASTE_MODES:
        raise HarnessError(f"mask paste {paste!r} is not one of {', '.join(MASK_PASTES)}")
    count, (channels, height, width) = len(coefficients), prototypes.shape
    if coefficients.shape[1:] != (channels,):
        raise HarnessError(f"mask coefficients {coefficients.shape} do not match prototypes {prototypes.shape}")
    if count == 0:
        return []
    x0, y0, x1, y1 = geometry.image_region(input_size, width, height)
    region = prototypes[:, y0:y1, x0:x1].reshape(channels, -1).astype(np.float32)
    probabilities = _sigmoid(coefficients.astype(np.float32) @ region).reshape(count, y1 - y0, x1 - x0)
    mode, align_corners = _PASTE_MODES[paste]
    pasted = F.interpolate(torch.from_numpy(probabilities)[None], size=(geometry.height, geometry.width), mode=mode,
                           align_corners=align_corners)[0].numpy()
    columns, rows = np.arange(geometry.width), np.arange(geometry.height)
    inside = ((columns[None, None, :] >= boxes[:, 0, None, None]) & (columns[None, None, :] < boxes[:, 2, None, None])
              & (rows[None, :, None] >= boxes[:, 1, None, None]) & (rows[None, :, None] < boxes[:, 3, None, None]))
    binary = (pasted > threshold) & inside
    return coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))


def mask_iou(first: list[dict], second: list[dict]) -> np.ndarray:
    """float[len(first), len(second)]: IoU of every pair of RLE masks (pycocotools), where two empty masks
    count as equal (1; pycocotools gives 0): a box whose mask thresholds to nothing on both sides agrees."""
    from pycocotools import mask as coco_mask

    if not first or not second:
        return np.zeros((len(first), len(second)))
    overlap = np.asarray(coco_mask.iou(list(first), list(second), [0] * len(second)), np.float64).reshape(
        len(first), len(second))
    empty_first, empty_second = coco_mask.area(list(first)) == 0, coco_mask.area(list(second)) == 0
    overlap[empty_first[:, None] & empty_second[None, :]] = 1.0
    return overlap


def decode_masks(rles: list[dict]) -> np.ndarray:
    """bool[D, H, W] of RLE masks (pycocotools)."""
    from pycocotools import mask as coco_mask

    return coco_mask.decode(list(rles)).transpose(2, 0, 1).astype(bool)
