"""Task metrics, as fractions in [0, 1]. Detection AP is computed by pycocotools, never re-implemented."""
from __future__ import annotations

import contextlib
import io

import numpy as np

from harness.postprocess import Detections


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """logits float[N, C], labels int[N] -> fraction of samples whose label is among the k largest logits."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


def coco_metrics(ground_truth: list[tuple[np.ndarray, np.ndarray]], detections: list[Detections],
                 num_classes: int, image_sizes: list[tuple[int, int]] | None = None) -> dict[str, float]:
    """COCO bbox AP through pycocotools.

    ground_truth: per image (boxes float[K, 4] xyxy pixels, labels int[K] 0-based);
    detections: per image, same coordinates. Returns {"map", "ap50", "ap75"} (AP@[.5:.95], AP50, AP75).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, ((boxes, labels), dets) in enumerate(zip(ground_truth, detections), start=1):
        width, height = image_sizes[image_id - 1] if image_sizes else (0, 0)
        images.append({"id": image_id, "width": width, "height": height})
        for (x0, y0, x1, y1), label in zip(np.asarray(boxes, float).reshape(-1, 4).tolist(), labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for (x0, y0, x1, y1), score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
            results.append({"image_id": image_id, "category_id": int(label) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    if not annotations:
        return {"map": float("nan"), "ap50": float("nan"), "ap75": float("nan")}
    if not results:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1} for c in range(num_classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"map": float(max(stats[0], 0.0)), "ap50": float(max(stats[1], 0.0)), "ap75": float(max(stats[2], 0.0))}
