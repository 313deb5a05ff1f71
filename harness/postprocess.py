"""Post-processing stages: raw model outputs -> predictions. Same code for every backend.

Detection graphs end at raw head outputs (DESIGN.md): points, box decoding and NMS happen here, so a
comparison of backends is never confounded by a different NMS, and the NMS itself can be varied.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from harness.errors import HarnessError
from harness.profile import Profile
from harness.plugins import lookup

PRE_NMS_TOP_K = 1000


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes float32[K, 4] xyxy pixels, scores float32[K], labels int64[K]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _torchvision_nms():
    """torchvision's own NMS kernel (torch.ops.torchvision.nms), its compiled library loaded without
    importing the torchvision package: `import torchvision.ops` imports torch._dynamo (through roi_align),
    4+ s in every detection command and in every sweep worker, while the library loads in milliseconds.
    Where the library file is not found the package is imported, which loads it."""
    import glob
    import importlib.util
    import os

    import torch

    if not hasattr(torch.ops.torchvision, "nms"):
        spec = importlib.util.find_spec("torchvision")
        found = sorted(glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "_C*.so")))
        if found:
            torch.ops.load_library(found[0])
        else:
            import torchvision.ops  # noqa: F401
    return torch.ops.torchvision.nms


def nms_torchvision_batched(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware NMS: torchvision.ops.batched_nms, step for step, on torchvision's kernel (_torchvision_nms
    says why the package is not imported). Its two strategies round differently, so its switch is kept:
    boxes offset per class (the coordinate trick) up to 4000 box coordinates on CPU, else a kernel call per
    class. tests/test_postprocess.py holds the kept indices equal to torchvision.ops.batched_nms's.
    Returns int64[K] kept indices, score-descending. Equal scores may keep different boxes on different
    implementations; compare kept scores."""
    import torch

    nms = _torchvision_nms()
    boxes, scores, labels = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
    if boxes.numel() == 0:
        return np.zeros(0, np.int64)
    if boxes.numel() <= 4000:
        offsets = labels.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou).numpy()
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for label in torch.unique(labels):
        members = torch.where(labels == label)[0]
        kept[members[nms(boxes[members], scores[members], iou)]] = True
    indices = torch.where(kept)[0]
    return indices[scores[indices].sort(descending=True)[1]].numpy()


ULTRALYTICS_MAX_WH = 7680


def nms_ultralytics_offset(boxes, scores, labels, iou: float) -> np.ndarray:
    """Class-aware NMS as ultralytics' non_max_suppression runs it: each class's boxes moved by class x 7680
    (max_wh) in float32, then one torchvision NMS. The large offsets round the boxes (float32 steps of
    1/256 px at class 7), so an overlap near the threshold can fall the other way than under
    torchvision-batched. Kept indices score-descending."""
    import torch

    offsets = torch.from_numpy(labels).to(torch.float32)[:, None] * ULTRALYTICS_MAX_WH
    return _torchvision_nms()(torch.from_numpy(boxes) + offsets, torch.from_numpy(scores), iou).numpy()


def nms_torchvision_agnostic(boxes, scores, labels, iou: float) -> np.ndarray:
    """Class-agnostic NMS (torchvision.ops.nms, its kernel): overlapping boxes of different classes suppress
    each other."""
    import torch

    return _torchvision_nms()(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()


def nms_numpy(boxes, scores, labels, iou: float) -> np.ndarray:
    """Plain greedy class-aware NMS, the textbook algorithm: the reference the others are checked against.
    Suppresses a box when IoU > iou (strictly), like torchvision."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(boxes), bool)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        keep.append(index)
        rest = order[position + 1:]
        rest = rest[(labels[rest] == labels[index]) & ~suppressed[rest]]
        tl = np.maximum(boxes[index, :2], boxes[rest, :2])
        br = np.minimum(boxes[index, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(br - tl, 0, None), axis=1)
        overlap = inter / np.maximum(areas[index] + areas[rest] - inter, 1e-12)
        suppressed[rest[overlap > iou]] = True
    return np.array(keep, np.int64)


def nms_opencv(boxes, scores, labels, iou: float) -> np.ndarray:
    """OpenCV's class-aware cv2.dnn.NMSBoxesBatched (boxes as x, y, w, h)."""
    import cv2

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), labels.tolist(), 0.0, iou)
    keep = np.asarray(keep, np.int64).ravel()
    return keep[np.argsort(-scores[keep], kind="stable")]


@lru_cache(maxsize=1)
def _onnx_nms_session():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"], ["selected"])],
        "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
                helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
                helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
                helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def nms_onnx(boxes, scores, labels, iou: float) -> np.ndarray:
    """ONNX NonMaxSuppression run by ONNX Runtime, per class (scores laid out [1, classes, boxes]); the
    op's own rule: suppress when IoU > iou_threshold."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    classes = int(labels.max()) + 1
    per_class = np.full((1, classes, len(boxes)), -1.0, np.float32)
    per_class[0, labels, np.arange(len(boxes))] = scores
    selected = _onnx_nms_session().run(None, {
        "boxes": boxes[None].astype(np.float32), "scores": per_class,
        "max_out": np.array([len(boxes)], np.int64), "iou": np.array([iou], np.float32),
        "score": np.array([-0.5], np.float32)})[0]
    keep = selected[:, 2]
    return keep[np.argsort(-scores[keep], kind="stable")]


NMS = {"torchvision-batched": nms_torchvision_batched, "torchvision-agnostic": nms_torchvision_agnostic,
       "ultralytics-offset": nms_ultralytics_offset, "onnx": nms_onnx, "opencv": nms_opencv, "numpy": nms_numpy}
BOX_DECODES = ("clip", "no-clip", "legacy-plus-one", "fp16")


# where a runtime places an FCOS head's points (or an anchor generator its anchor centres): (grid, offset)
# - grid "stride": point (i, j) at ((j + offset) * stride, (i + offset) * stride), scale = stride
#   (FCOS and mmdetection's MlvlPointGenerator at offset 0.5; YOLOX's grid at offset 0);
# - grid "spread": a map's points spread evenly over the input, step = input_size / map size, point at
#   ((j + offset) * step_x, (i + offset) * step_y), scale = step (Caffe's PriorBox with no explicit step,
#   torchvision's DefaultBoxGenerator with steps=None, as SSDlite uses).
POINT_PLACEMENTS = {"stride": ("stride", 0.5), "stride-offset0": ("stride", 0.0),
                    "spread": ("spread", 0.5), "spread-offset0": ("spread", 0.0)}


def point_placement(head: dict, profile: Profile | None = None) -> str:
    """The placement post-processing uses: the profile's `points` when it names one (a runtime that computes
    points its own way), else the head's declared convention (the one it was trained with; "stride" when
    it declares none)."""
    placement = (profile.points if profile is not None else None) or head.get("points", "stride")
    if placement not in POINT_PLACEMENTS:
        raise HarnessError(f"head points {placement!r} is not a point placement; known: {', '.join(POINT_PLACEMENTS)}")
    return placement


@lru_cache(maxsize=16)
def fcos_points(levels: tuple[tuple[int, int, int], ...], input_size: int,
                placement: str = "stride") -> tuple[np.ndarray, np.ndarray]:
    """Point centres float32[P, 2] (x, y) and their scale float32[P] (the unit of the box distances) for
    feature maps (stride, height, width), level-major and row-major inside a level, as the head's maps
    flatten; `placement` is one of POINT_PLACEMENTS.

    "stride" and "spread" agree exactly when every map is input_size / stride points a side (the trained
    geometry) and part when the backbone's geometry changes: a pooling ceil-mode flip (16 -> 17 points a
    side) adds a border row and column under "stride" and moves every point (and box scale) under
    "spread". An offset of 0 instead of 0.5 moves every point by half a step, at any geometry.
    """
    grid, offset = POINT_PLACEMENTS[placement]
    points, point_scales = [], []
    for stride, height, width in levels:
        ys, xs = np.mgrid[0:height, 0:width]
        step_x, step_y = (stride, stride) if grid == "stride" else (input_size / width, input_size / height)
        centre = (np.stack([xs.ravel(), ys.ravel()], axis=1) + offset) * np.array([step_x, step_y])
        points.append(centre.astype(np.float32))
        # boxes are regressed in one unit per point; a non-square step (odd map on one side) takes the mean
        point_scales.append(np.full(height * width, (step_x + step_y) / 2, np.float32))
    return np.concatenate(points), np.concatenate(point_scales)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_boxes(box_reg: np.ndarray, centres: np.ndarray, strides: np.ndarray, profile: Profile) -> np.ndarray:
    """float[K, 4] log(l, t, r, b / stride) at points float[K, 2] -> boxes float32[K, 4] xyxy, the way the
    profile's `box_decode` says: clip to the input (reference), no clipping, the legacy "+1" pixel
    convention (inclusive x2/y2: width = x2 - x1 + 1, so x2/y2 come out one pixel smaller), or the whole
    decode in float16, as a half-precision deployment pipeline does."""
    dtype = np.float16 if profile.box_decode == "fp16" else np.float32
    distances = np.exp(box_reg.astype(dtype)) * strides[:, None].astype(dtype)
    centres = centres.astype(dtype)
    return box_convention(np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1), profile)


def box_convention(boxes: np.ndarray, profile: Profile) -> np.ndarray:
    """Decoded xyxy boxes -> float32 by the profile's `box_decode` conventions after the decode: the legacy
    "+1" pixel (x2/y2 one pixel smaller), then clipping to the input unless "no-clip"."""
    if profile.box_decode == "legacy-plus-one":
        boxes[:, 2:] -= 1
    if profile.box_decode != "no-clip":
        boxes = np.clip(boxes, 0, profile.input_size)
    return boxes.astype(np.float32)


def decode_fcos(levels: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], profile: Profile,
                placement: str = "stride") -> Detections:
    """One image's raw FCOS maps, per level (stride, cls float32[C, H, W], box_reg [4, H, W], centerness
    [1, H, W]) -> Detections in model-input pixels. Points come from each map's own size, placed as the
    head declares (fcos_points)."""
    return decode_fcos_points(levels, profile, placement)[0]


def decode_fcos_points(levels: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], profile: Profile,
                       placement: str = "stride") -> tuple[Detections, np.ndarray]:
    """decode_fcos, with the point each kept detection came from (int64[K], level-major and row-major: the
    order of fcos_points, in which a YOLACT head's mask coefficients flatten too)."""
    points, point_scales = fcos_points(tuple((stride, *cls.shape[-2:]) for stride, cls, _, _ in levels),
                                       profile.input_size, placement)
    cls_logits, box_reg, centerness = (np.concatenate([level[k].reshape(len(level[k]), -1) for level in levels],
                                                      axis=1).T for k in (1, 2, 3))
    centerness = centerness[:, 0]
    scores = np.sqrt(_sigmoid(cls_logits) * _sigmoid(centerness)[:, None])
    point_index, labels = np.nonzero(scores > profile.score_threshold)
    flat_scores = scores[point_index, labels]
    if len(flat_scores) > PRE_NMS_TOP_K:
        top = np.argpartition(-flat_scores, PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]
        point_index, labels, flat_scores = point_index[top], labels[top], flat_scores[top]
    boxes = decode_boxes(box_reg[point_index], points[point_index], point_scales[point_index], profile)
    nms = lookup(NMS, "nms", profile.nms)
    keep = nms(boxes, flat_scores.astype(np.float32), labels.astype(np.int64), profile.iou_threshold)
    keep = keep[: profile.max_detections]
    return (Detections(boxes[keep], flat_scores[keep].astype(np.float32), labels[keep].astype(np.int64)),
            point_index[keep].astype(np.int64))


# how a segmenter's logits over the model input become a class map at the label's (stored image's) resolution
MASK_RESIZES = ("logits-bilinear", "logits-bilinear-align-corners", "argmax-nearest")


def label_map(logits: np.ndarray, geometry, input_size: int, method: str) -> np.ndarray:
    """float[C, h, w] logits over the model input -> class map [H, W] at the stored image's size (uint8, or
    uint16 beyond 255 classes). The part of the output the stored image covers (all of it for squash, the
    unpadded part for letterbox) is resized to the stored size:
    - logits-bilinear: logits resized bilinear, half-pixel (align_corners=False), then argmax: the evaluation
      of torchvision's and mmsegmentation's segmenters (`resize(seg_logit, ori_shape)`);
    - logits-bilinear-align-corners: the same with align_corners=True (DeepLab's TF lineage, older configs);
    - argmax-nearest: argmax at the output's resolution, then the class map resized nearest (OpenCV), as a
      runtime that returns class indices does."""
    import cv2
    import torch
    import torch.nn.functional as F

    if method not in MASK_RESIZES:
        raise HarnessError(f"mask resize {method!r} is not one of {', '.join(MASK_RESIZES)}")
    classes, height, width = logits.shape
    x0, y0, x1, y1 = geometry.image_region(input_size, width, height)
    region = logits[:, y0:y1, x0:x1]
    dtype = np.uint8 if classes <= 255 else np.uint16
    size = (geometry.height, geometry.width)
    if method == "argmax-nearest":
        classes_small = region.argmax(axis=0).astype(dtype)
        return cv2.resize(classes_small, size[::-1], interpolation=cv2.INTER_NEAREST)
    tensor = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))[None]
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=method.endswith("align-corners"))
    return resized[0].argmax(dim=0).numpy().astype(dtype)


# how SimCC bins become coordinates (the reference: RTMPose's argmax)
KEYPOINT_DECODES = ("simcc-argmax", "simcc-argmax-shift", "simcc-dark")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _dark_refine(bins: np.ndarray, probabilities: np.ndarray, sigma: float) -> np.ndarray:
    """mmpose's refine_simcc_dark: the distribution blurred by a Gaussian of the training sigma's kernel
    (keeping its peak), logged, and the argmax moved by a second-order Taylor step -f'/f''."""
    import cv2

    kernel = int((sigma * 20 - 7) // 3)
    kernel -= int(kernel % 2 == 0)
    border = (kernel - 1) // 2
    blurred = np.empty_like(probabilities, dtype=np.float64)
    for k, row in enumerate(probabilities.astype(np.float64)):
        padded = np.zeros(len(row) + 2 * border)
        padded[border:border + len(row)] = row
        smooth = cv2.GaussianBlur(padded[None], (kernel, 1), 0)[0][border:border + len(row)]
        blurred[k] = smooth * row.max() / max(smooth.max(), 1e-12)
    logs = np.pad(np.log(np.clip(blurred, 1e-3, 50.0)), ((0, 0), (2, 2)), mode="edge")
    at = (bins + 2.5).astype(np.int64)[:, None]
    value = lambda shift: np.take_along_axis(logs, at + shift, axis=1)[:, 0]  # noqa: E731
    gradient = 0.5 * (value(1) - value(-1))
    curvature = 1e-9 + 0.25 * (value(2) - 2 * value(0) + value(-2))
    return bins - gradient / curvature


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float, method: str,
                 sigma: float = 2.0) -> np.ndarray:
    """float[J, Bx], float[J, By] bin logits -> float32[J, 3]: x, y in model-input pixels and a score (the
    smaller of the two axes' peak probabilities):
    - simcc-argmax: the peak bin / split_ratio (RTMPose);
    - simcc-argmax-shift: the peak moved a quarter bin toward its larger neighbour (the heatmap decoders'
      classic correction, applied per axis);
    - simcc-dark: sub-bin refinement of the smoothed log-distribution (mmpose's use_dark)."""
    if method not in KEYPOINT_DECODES:
        raise HarnessError(f"keypoint decode {method!r} is not one of {', '.join(KEYPOINT_DECODES)}")
    coordinates, scores = [], []
    for logits in (simcc_x, simcc_y):
        probabilities = _softmax(logits.astype(np.float64))
        peak = probabilities.argmax(axis=1)
        bins = peak.astype(np.float64)
        if method == "simcc-argmax-shift":
            rows = np.arange(len(peak))
            left = probabilities[rows, np.clip(peak - 1, 0, None)]
            right = probabilities[rows, np.clip(peak + 1, None, probabilities.shape[1] - 1)]
            bins = bins + 0.25 * np.sign(right - left)
        elif method == "simcc-dark":
            bins = _dark_refine(bins, probabilities, sigma)
        coordinates.append(bins / split_ratio)
        scores.append(probabilities.max(axis=1))
    return np.stack([coordinates[0], coordinates[1], np.minimum(*scores)], axis=1).astype(np.float32)
