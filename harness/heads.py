"""Detection head layouts: one image's raw outputs -> Detections. The decoding and NMS are the harness's
(harness.postprocess), so the post-processing noise axes apply, except to a graph that post-processes itself.

A model declares its layout as `head` (a ModelSpec's, or a profile file's `[head]` table):
- fcos: per-level class, box-distance and centerness maps (the zoo's detectors)
  `{type = "fcos", levels = [{stride = 8, cls_logits = OUT, box_reg = OUT, centerness = OUT}, ...]}`
- yolo: dense decoded boxes as YOLOv5/v8/11 exports end: `[N, 4+C, A]` (layout "channels-first",
  ultralytics v8 and later) or `[N, A, 4+C]` / `[N, A, 5+C]` with objectness ("anchors-first", YOLOv5);
  boxes "xywh" (centre, size) or "xyxy" in input pixels, class scores already probabilities
  `{type = "yolo", output = OUT, layout = "channels-first", box = "xywh", objectness = false}`
- anchors: per-anchor class logits and box deltas as torchvision's RetinaNet head returns them, every level
  concatenated: `cls_logits` [N, sum(H*W*A), C] and `bbox_regression` [N, sum(H*W*A), 4]; the anchors are
  torchvision's AnchorGenerator's for the declared `strides`, `sizes` (per level) and `aspect_ratios`, the
  deltas decoded by its BoxCoder with `box_coder_weights`; scored and cut as RetinaNet.postprocess_detections
  (sigmoid, score threshold, the best `top_k` per level, batched NMS, max_detections). SSD's:
  `generator = "default-boxes"` (DefaultBoxGenerator: per-level `aspect_ratios`, `min_ratio`/`max_ratio` or
  `scales`, `steps`, `clip`) and `scores = "softmax"` (class 0 the background; the best `top_k` per class)
  torchvision's FCOS: `centerness = OUT` (its bbox_ctrness [N, sum(H*W), 1]: scores sqrt(sigmoid(cls) *
  sigmoid(centerness))) and `box_coder = "linear"` (BoxLinearCoder: distances to the sides, times the anchor's size)
  `{type = "anchors", cls_logits = OUT, bbox_regression = OUT, strides = [8, 16, 32, 64, 128],
    sizes = [[32, 40, 50], ...], aspect_ratios = [0.5, 1.0, 2.0], box_coder_weights = [1.0, 1.0, 1.0, 1.0]}`
- postprocessed: the graph ran its own NMS: `{type = "postprocessed", boxes = OUT, scores = OUT, labels = OUT}`
  (boxes [N, K, 4] xyxy input pixels, scores [N, K], labels [N, K]; optional `count = OUT` [N] valid
  detections per image, else rows scoring below the profile's score_threshold are padding)
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from harness.errors import UsageError
from harness.postprocess import PRE_NMS_TOP_K, Detections

# ultralytics' non_max_suppression keeps at most this many candidates (by score) before NMS (max_nms)
YOLO_PRE_NMS_TOP_K = 30000


class HeadLayout(ABC):
    name = ""
    post_axes: tuple[str, ...] = ()       # the post-processing noise axes that act on this layout
    # who does the post-processing steps the harness does not (the other post-processing axes), for a report
    post_processed_by = "its graph"
    fields: dict[str, tuple] = {}          # key -> (allowed values, or a type; required)

    def outputs(self, head: dict) -> list[str]:
        """The graph outputs the layout reads."""
        return []

    def check(self, head: dict, profile) -> None:
        """What would fail on every image fails once, before a batch is decoded (even an empty one)."""

    @abstractmethod
    def predictions(self, outputs: dict, geometries: list, profile, head: dict) -> list[Detections]:
        """A batch's outputs (the layout's, batch first) -> each image's Detections in stored-image pixels."""


class PerImageLayout(HeadLayout):
    """A layout the harness decodes image by image in model-input pixels, then maps to the stored image."""

    def predictions(self, outputs, geometries, profile, head):
        self.check(head, profile)
        names = self.outputs(head)
        found = []
        for k, geometry in enumerate(geometries):
            dets = self.decode({name: outputs[name][k] for name in names}, profile, head)
            found.append(Detections(geometry.to_image(dets.boxes), dets.scores, dets.labels))
        return found

    @abstractmethod
    def decode(self, outputs: dict, profile, head: dict) -> Detections:
        """One image's outputs (the layout's, batch dimension removed) -> Detections in model-input pixels."""


class FcosHead(PerImageLayout):
    name = "fcos"
    post_axes = ("nms", "box_decode", "points")
    fields = {"levels": (list, True), "points": (("stride", "spread"), False)}

    def outputs(self, head):
        return [level[key] for level in head["levels"] for key in ("cls_logits", "box_reg", "centerness")]

    def check(self, head, profile):
        from harness.postprocess import point_placement

        point_placement(head, profile)  # an unknown placement (HarnessError naming the known ones)

    def decode(self, outputs, profile, head):
        from harness.postprocess import decode_fcos, point_placement

        levels = [(level["stride"], outputs[level["cls_logits"]], outputs[level["box_reg"]],
                   outputs[level["centerness"]]) for level in head["levels"]]
        return decode_fcos(levels, profile, point_placement(head, profile))


class YoloHead(PerImageLayout):
    name = "yolo"
    post_axes = ("nms", "box_decode")
    fields = {"output": (str, True), "layout": (("channels-first", "anchors-first"), False),
              "box": (("xywh", "xyxy"), False), "objectness": (bool, False)}

    def outputs(self, head):
        return [head["output"]]

    def decode(self, outputs, profile, head):
        """As ultralytics' non_max_suppression (multi_label off): each anchor's best class, its score times
        the objectness where there is one, candidates above the score threshold, the best max_nms of them,
        per-class NMS, the first max_detections."""
        from harness.postprocess import NMS, box_convention
        from harness.plugins import lookup

        rows = outputs[head["output"]]
        rows = rows.T if head.get("layout", "channels-first") == "channels-first" else rows
        scores = rows[:, 5:] * rows[:, 4:5] if head.get("objectness", False) else rows[:, 4:]
        labels = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), labels]
        kept = np.nonzero(best > profile.score_threshold)[0]
        kept = kept[np.argsort(-best[kept], kind="stable")][:YOLO_PRE_NMS_TOP_K]
        boxes = box_convention(_xyxy(rows[kept, :4], head.get("box", "xywh"), profile), profile)
        keep = lookup(NMS, "nms", profile.nms)(boxes, best[kept].astype(np.float32), labels[kept].astype(np.int64),
                                               profile.iou_threshold)[: profile.max_detections]
        return Detections(boxes[keep], best[kept][keep].astype(np.float32), labels[kept][keep].astype(np.int64))


def _xyxy(boxes: np.ndarray, form: str, profile) -> np.ndarray:
    """float[K, 4] in the head's box form -> xyxy, in float16 when the profile's box_decode says so."""
    boxes = boxes.astype(np.float16 if profile.box_decode == "fp16" else np.float32)
    if form == "xyxy":
        return boxes
    centre, half = boxes[:, :2], boxes[:, 2:] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


class AnchorsHead(PerImageLayout):
    name = "anchors"
    post_axes = ("nms", "box_decode")
    fields = {"cls_logits": (str, True), "bbox_regression": (str, True), "strides": (list, True),
              "generator": (("anchors", "default-boxes"), False), "sizes": (list, False),
              "aspect_ratios": (list, False), "min_ratio": (float, False), "max_ratio": (float, False),
              "scales": (list, False), "steps": (list, False), "clip": (bool, False),
              "box_coder_weights": (list, False), "scores": (("sigmoid", "softmax"), False), "top_k": (int, False),
              "centerness": (str, False), "box_coder": (("deltas", "linear"), False)}

    def outputs(self, head):
        return [head["cls_logits"], head["bbox_regression"]] + ([head["centerness"]] if "centerness" in head else [])

    def check(self, head, profile):
        from harness.anchors import anchor_levels

        anchor_levels(head, profile.input_size)  # bad sizes or ratios: one line, before any batch

    def decode(self, outputs, profile, head):
        """As torchvision's RetinaNet.postprocess_detections (scores "sigmoid": per level, the best top_k
        above the threshold) or SSD.postprocess_detections (scores "softmax", class 0 the background: per
        class, the best top_k above the threshold); deltas decoded on their anchors by torchvision's
        BoxCoder; then the profile's box conventions and NMS, the first max_detections."""
        from harness.anchors import anchor_levels

        levels, coder = anchor_levels(head, profile.input_size)
        logits, deltas = outputs[head["cls_logits"]], outputs[head["bbox_regression"]]
        total = sum(len(anchors) for anchors in levels)
        if len(logits) != total or len(deltas) != total:
            raise UsageError(f"anchors head: {len(logits)} rows of {head['cls_logits']!r}, {len(deltas)} of "
                             f"{head['bbox_regression']!r}; the declared levels make {total} anchors at "
                             f"{profile.input_size} px")
        scores, top_k = np.asarray(logits, np.float32), head.get("top_k", PRE_NMS_TOP_K)
        candidates = _per_class_softmax(scores, levels, profile.score_threshold, top_k) \
            if head.get("scores", "sigmoid") == "softmax" else _per_level_sigmoid(
                scores, levels, profile.score_threshold, top_k,
                np.asarray(outputs[head["centerness"]], np.float32) if "centerness" in head else None)
        return _decoded(candidates, np.asarray(deltas, np.float32), levels, coder, profile)


def _per_level_sigmoid(logits, levels, threshold: float, top_k: int, centerness=None) -> list:
    """RetinaNet's selection: (anchor rows, scores, labels) of each level's best top_k sigmoid scores; with
    `centerness` FCOS's, whose score is sqrt(sigmoid(class) * sigmoid(centerness))."""
    import torch

    found, start = [], 0
    classes = logits.shape[-1]
    for anchors in levels:
        scores = torch.sigmoid(torch.from_numpy(logits[start:start + len(anchors)]))
        if centerness is not None:
            scores = torch.sqrt(scores * torch.sigmoid(torch.from_numpy(centerness[start:start + len(anchors)])))
        scores = scores.flatten()
        index = torch.where(scores > threshold)[0]
        best, order = scores[index].topk(min(top_k, len(index)))
        index = index[order]
        found.append((start + torch.div(index, classes, rounding_mode="floor"), best, index % classes))
        start += len(anchors)
    return found


def _per_class_softmax(logits, levels, threshold: float, top_k: int) -> list:
    """SSD's selection: for each class but the background (0), the best top_k softmax scores."""
    import torch

    scores = torch.softmax(torch.from_numpy(logits), dim=-1)
    found = []
    for label in range(1, scores.shape[-1]):
        index = torch.where(scores[:, label] > threshold)[0]
        best, order = scores[index, label].topk(min(top_k, len(index)))
        found.append((index[order], best, torch.full_like(best, label, dtype=torch.int64)))
    return found


def _decoded(candidates: list, deltas, levels, coder, profile) -> Detections:
    import torch
    from torchvision.models.detection._utils import BoxLinearCoder

    from harness.plugins import lookup
    from harness.postprocess import NMS, box_convention

    anchors = torch.cat(levels)
    rows = torch.cat([row for row, _, _ in candidates])
    dtype = torch.float16 if profile.box_decode == "fp16" else torch.float32
    decode = coder.decode if isinstance(coder, BoxLinearCoder) else coder.decode_single
    boxes = decode(torch.from_numpy(deltas)[rows].to(dtype), anchors[rows].to(dtype))
    boxes = box_convention(boxes.float().numpy(), profile)
    scores = torch.cat([score for _, score, _ in candidates]).numpy().astype(np.float32)
    labels = torch.cat([label for _, _, label in candidates]).numpy().astype(np.int64)
    keep = lookup(NMS, "nms", profile.nms)(boxes, scores, labels, profile.iou_threshold)[: profile.max_detections]
    return Detections(boxes[keep], scores[keep], labels[keep])


class PostprocessedHead(PerImageLayout):
    name = "postprocessed"
    # per detection row beside the boxes: an instance segmenter's mask probabilities [N, K, 1, M, M]
    # (harness.tasks.instances), a keypoint detector's keypoints [N, K, J, 3] (harness.tasks.keypoint_detect)
    fields = {"boxes": (str, True), "scores": (str, True), "labels": (str, True), "count": (str, False),
              "masks": (str, False), "keypoints": (str, False)}

    def outputs(self, head):
        return [head[key] for key in ("boxes", "scores", "labels", "count", "masks", "keypoints") if key in head]

    def decode(self, outputs, profile, head):
        scores = np.asarray(outputs[head["scores"]], np.float32).reshape(-1)
        valid = self.detection_rows(outputs, scores, profile, head)
        labels = np.asarray(outputs[head["labels"]]).reshape(-1).astype(np.int64)
        return Detections(np.asarray(outputs[head["boxes"]], np.float32).reshape(-1, 4)[valid], scores[valid],
                          labels[valid])

    @classmethod
    def per_detection(cls, outputs, key: str, image: int, profile, head) -> np.ndarray:
        """The rows of image `image`'s output `head[key]` (masks, keypoints) that belong to its detections, in
        decode's order."""
        scores = np.asarray(outputs[head["scores"]][image], np.float32).reshape(-1)
        rows = cls.detection_rows({name: outputs[name][image] for name in outputs}, scores, profile, head)
        return np.asarray(outputs[head[key]][image])[rows]

    @staticmethod
    def detection_rows(outputs, scores, profile, head) -> np.ndarray:
        """bool per row: the first `count`, or without one those scoring at least the profile's threshold."""
        return np.arange(len(scores)) < int(np.asarray(outputs[head["count"]]).reshape(-1)[0]) \
            if "count" in head else scores >= profile.score_threshold


# the user's own post-processing functions, imported only when named on the command line (--postprocess)
USER_POSTPROCESSING: dict = {}


class UserHead(HeadLayout):
    post_processed_by = "its --postprocess function"

    """`--postprocess package.module:function`: the user's own post-processing, called once per batch as
    function(outputs, geometries, profile) with every graph output ({name: array[N, ...]}), each image's
    harness.preprocess.Geometry (model-input pixels -> stored-image pixels: stored = (input - offset) /
    scale) and the side's Profile; it returns one (boxes float[K, 4] xyxy in stored-image pixels, scores
    float[K], labels int[K]) per image. The harness's NMS and box-decoding axes do not act on it."""

    name = "user"
    fields = {"function": (str, True), "outputs": (list, True)}

    def outputs(self, head):
        return list(head["outputs"])

    def predictions(self, outputs, geometries, profile, head):
        from harness.plugins import lookup

        function = lookup(USER_POSTPROCESSING, "post-processing", head["function"])
        made = function({name: outputs[name] for name in head["outputs"]}, list(geometries), profile)
        return _user_detections(made, len(geometries), head["function"])


def _user_detections(made, count: int, function: str) -> list[Detections]:
    """What a user's function returned, checked: one line naming the function and what is wrong."""
    from harness.errors import InputError

    if not isinstance(made, (list, tuple)) or len(made) != count:
        raise InputError(f"--postprocess {function}: returned {type(made).__name__}"
                         f"{f' of {len(made)}' if isinstance(made, (list, tuple)) else ''}; expected one "
                         f"(boxes, scores, labels) per image of the batch ({count})")
    found = []
    for k, item in enumerate(made):
        try:
            boxes, scores, labels = (np.asarray(part) for part in item)
            boxes, scores = boxes.astype(np.float32).reshape(-1, 4), scores.astype(np.float32).reshape(-1)
            labels = labels.reshape(-1)
        except (TypeError, ValueError) as err:
            raise InputError(f"--postprocess {function}: image {k}: expected (boxes [K, 4], scores [K], labels "
                             f"[K]) ({err})") from None
        if not (len(boxes) == len(scores) == len(labels)) or not np.isfinite(boxes).all() \
                or not np.isfinite(scores).all() or (labels.size and labels.dtype.kind not in "iu"):
            raise InputError(f"--postprocess {function}: image {k}: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels ({labels.dtype}); expected as many of each, finite, integer "
                             "labels")
        found.append(Detections(boxes, scores, labels.astype(np.int64)))
    return found


def user_head(function: str, output_names) -> dict:
    """The head of a model whose post-processing is the user's `function` (imported now: the user named it
    on the command line)."""
    from harness.plugins import load_user_function

    load_user_function(USER_POSTPROCESSING, "post-processing", function)
    return {"type": UserHead.name, "function": function, "outputs": list(output_names)}


LAYOUTS = {layout.name: layout for layout in (FcosHead(), YoloHead(), AnchorsHead(), PostprocessedHead(),
                                              UserHead())}


def head_layout(head: dict) -> HeadLayout:
    kind = (head or {}).get("type")
    if kind not in LAYOUTS:
        raise UsageError(f"detection head {kind!r}: declare one of {', '.join(LAYOUTS)} as the model's head "
                         "(a profile file's [head] table, e.g. {type = \"yolo\", output = \"output0\"}; "
                         "harness.heads says each layout's keys)")
    return LAYOUTS[kind]


def checked_head(head, output_names=None) -> dict:
    """A head table from a file, every key checked (one line naming the key and what is allowed; the
    caller names the file); `output_names`: the graph's outputs, which each named output must be one of."""
    if not isinstance(head, dict):
        raise UsageError(f"head must be a table, got {type(head).__name__}")
    layout = head_layout(head)
    if layout.name == UserHead.name:
        raise UsageError("a head of type 'user' names code; name your post-processing on the command line: "
                         "--postprocess package.module:function")
    for key, value in head.items():
        if key == "type":
            continue
        if key not in layout.fields:
            raise UsageError(f"head key {key!r} is not one of a {layout.name} head's: "
                             f"{', '.join(['type', *layout.fields])}")
        allowed, _ = layout.fields[key]
        ok = value in allowed if isinstance(allowed, tuple) else isinstance(value, allowed)
        if not ok:
            wanted = ", ".join(map(str, allowed)) if isinstance(allowed, tuple) else allowed.__name__
            raise UsageError(f"head {key} = {value!r}: expected {wanted}")
    missing = [key for key, (_, required) in layout.fields.items() if required and key not in head]
    if missing:
        raise UsageError(f"a {layout.name} head needs {', '.join(missing)}")
    if output_names is not None:
        unknown = [name for name in layout.outputs(head) if name not in output_names]
        if unknown:
            raise UsageError(f"head names {', '.join(map(repr, unknown))}, not outputs of the model "
                             f"(its outputs: {', '.join(output_names)})")
    return head
