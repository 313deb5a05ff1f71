"""A user's own detection post-processing, as `--postprocess harness_test_postprocess:ultralytics_style`
takes it: ultralytics' non_max_suppression (multi_label off, max_nms 30000, class offsets of 7680) on a
YOLO [N, 4 + C, A] output, then each box mapped to the stored image through the geometry the harness hands
over, as ultralytics' scale_boxes does (without its clipping)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision


def ultralytics_style(outputs, geometries, profile):
    found = []
    for rows, geometry in zip(torch.from_numpy(outputs["output0"]), geometries):
        rows = rows.T
        best, label = rows[:, 4:].max(1)
        keep = best > profile.score_threshold
        rows, best, label = rows[keep], best[keep], label[keep]
        order = best.argsort(descending=True)[:30000]
        rows, best, label = rows[order], best[order], label[order]
        boxes = torch.cat([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], 1)
        kept = torchvision.ops.nms(boxes + label[:, None].float() * 7680, best, profile.iou_threshold)
        kept = kept[: profile.max_detections]
        image = boxes[kept].numpy().copy()
        image[:, 0::2] = (image[:, 0::2] - geometry.offset_x) / geometry.scale_x
        image[:, 1::2] = (image[:, 1::2] - geometry.offset_y) / geometry.scale_y
        found.append((image, best[kept].numpy(), label[kept].numpy()))
    return found


def one_short(outputs, geometries, profile):
    """A broken one: a result for every image but the last."""
    return [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)) for _ in geometries[1:]]
