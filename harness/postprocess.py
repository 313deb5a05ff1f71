"""Post-processing stages: raw model outputs -> predictions. Same code for every backend.

Detection graphs end at raw head outputs (DESIGN.md): points, box decoding and NMS happen here, so a
comparison of backends is never confounded by a different NMS, and the NMS itself can be varied.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from harness.errors import UnknownName
from harness.profile import Profile

PRE_NMS_TOP_K = 1000


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes float32[K, 4] xyxy pixels, scores float32[K], labels int64[K]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def nms_torchvision_batched(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware NMS (torchvision.ops.batched_nms). Returns int64[K] kept indices, score-descending.
    Equal scores may keep different boxes on different implementations; compare kept scores."""
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou)
    return keep.numpy()


NMS = {"torchvision-batched": nms_torchvision_batched}


@lru_cache(maxsize=8)
def fcos_points(input_size: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Point centres float32[P, 2] (x, y) and their stride float32[P], in the order the head emits them."""
    points, point_strides = [], []
    for stride in strides:
        cells = input_size // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        centre = np.stack([xs.ravel(), ys.ravel()], axis=1) * stride + stride // 2
        points.append(centre.astype(np.float32))
        point_strides.append(np.full(cells * cells, stride, np.float32))
    return np.concatenate(points), np.concatenate(point_strides)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_fcos(cls_logits: np.ndarray, box_reg: np.ndarray, centerness: np.ndarray, strides: tuple[int, ...],
                profile: Profile) -> Detections:
    """One image's raw FCOS outputs (float32[P, C], [P, 4], [P]) -> Detections in model-input pixels."""
    points, point_strides = fcos_points(profile.input_size, tuple(strides))
    scores = np.sqrt(_sigmoid(cls_logits) * _sigmoid(centerness)[:, None])
    point_index, labels = np.nonzero(scores > profile.score_threshold)
    flat_scores = scores[point_index, labels]
    if len(flat_scores) > PRE_NMS_TOP_K:
        top = np.argpartition(-flat_scores, PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]
        point_index, labels, flat_scores = point_index[top], labels[top], flat_scores[top]
    distances = np.exp(box_reg[point_index].astype(np.float32)) * point_strides[point_index, None]
    centres = points[point_index]
    boxes = np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)
    boxes = np.clip(boxes, 0, profile.input_size).astype(np.float32)
    try:
        nms = NMS[profile.nms]
    except KeyError:
        raise UnknownName("nms", profile.nms, sorted(NMS)) from None
    keep = nms(boxes, flat_scores.astype(np.float32), labels.astype(np.int64), profile.iou_threshold)
    keep = keep[: profile.max_detections]
    return Detections(boxes[keep], flat_scores[keep].astype(np.float32), labels[keep].astype(np.int64))
