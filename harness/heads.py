"""Detection head layouts: how one image's raw outputs become Detections in model-input pixels. The
decoding and NMS are the harness's (harness.postprocess), so the post-processing noise axes apply, except
to a graph that post-processes itself.

A model declares its layout as `head` (a ModelSpec's, or a profile file's `[head]` table):
- fcos: per-level class, box-distance and centerness maps (the zoo's detectors)
  `{type = "fcos", levels = [{stride = 8, cls_logits = OUT, box_reg = OUT, centerness = OUT}, ...]}`
- yolo: dense decoded boxes as YOLOv5/v8/11 exports end: `[N, 4+C, A]` (layout "channels-first",
  ultralytics v8 and later) or `[N, A, 4+C]` / `[N, A, 5+C]` with objectness ("anchors-first", YOLOv5);
  boxes "xywh" (centre, size) or "xyxy" in input pixels, class scores already probabilities
  `{type = "yolo", output = OUT, layout = "channels-first", box = "xywh", objectness = false}`
- postprocessed: the graph ran its own NMS: `{type = "postprocessed", boxes = OUT, scores = OUT, labels = OUT}`
  (boxes [N, K, 4] xyxy input pixels, scores [N, K], labels [N, K]; optional `count = OUT` [N] valid
  detections per image, else rows scoring below the profile's score_threshold are padding)
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from harness.errors import UsageError
from harness.postprocess import Detections

# ultralytics' non_max_suppression keeps at most this many candidates (by score) before NMS (max_nms)
YOLO_PRE_NMS_TOP_K = 30000


class HeadLayout(ABC):
    name = ""
    post_axes: tuple[str, ...] = ()       # the post-processing noise axes that act on this layout
    fields: dict[str, tuple] = {}          # key -> (allowed values, or a type; required)

    def outputs(self, head: dict) -> list[str]:
        """The graph outputs the layout reads."""
        return []

    def check(self, head: dict, profile) -> None:
        """What would fail on every image fails once, before a batch is decoded (even an empty one)."""

    @abstractmethod
    def decode(self, outputs: dict, profile, head: dict) -> Detections:
        """One image's outputs (the layout's, batch dimension removed) -> Detections in model-input pixels."""


class FcosHead(HeadLayout):
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


class YoloHead(HeadLayout):
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


class PostprocessedHead(HeadLayout):
    name = "postprocessed"
    fields = {"boxes": (str, True), "scores": (str, True), "labels": (str, True), "count": (str, False)}

    def outputs(self, head):
        return [head[key] for key in ("boxes", "scores", "labels", "count") if key in head]

    def decode(self, outputs, profile, head):
        boxes = np.asarray(outputs[head["boxes"]], np.float32).reshape(-1, 4)
        scores = np.asarray(outputs[head["scores"]], np.float32).reshape(-1)
        labels = np.asarray(outputs[head["labels"]]).reshape(-1).astype(np.int64)
        valid = np.arange(len(scores)) < int(np.asarray(outputs[head["count"]]).reshape(-1)[0]) \
            if "count" in head else scores >= profile.score_threshold
        return Detections(boxes[valid], scores[valid], labels[valid])


LAYOUTS = {layout.name: layout for layout in (FcosHead(), YoloHead(), PostprocessedHead())}


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
