"""Task metrics, as fractions in [0, 1]. COCO AP (boxes, masks, keypoints) is computed by pycocotools; only
its bootstrap resamples use MapResampler, which re-draws pycocotools' own per-image matches with the
envelope accumulate() draws (exact, and held equal to it by tests/test_metrics.py), because accumulate's
Python loop made the bootstrap 84 % of a detection sweep."""
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


def coco_evaluate(ground_truth: list[tuple[np.ndarray, np.ndarray]], detections: list[Detections],
                  num_classes: int, masks: list[tuple] | None = None):
    """pycocotools COCOeval after evaluate() + accumulate(), or None when there is nothing to evaluate.

    ground_truth: per image (boxes float[K, 4] xyxy pixels, labels int[K] 0-based); detections: per image,
    same coordinates. With `masks` (per image, one COCO RLE per ground-truth box) the evaluation is COCO's
    `segm` (mask IoU) of each detection's own RLE masks (harness.masks.InstanceDetections); else `bbox`.
    """
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, ((boxes, labels), dets) in enumerate(zip(ground_truth, detections), start=1):
        image_masks = masks[image_id - 1] if masks is not None else None
        height, width = image_masks[0]["size"] if image_masks else (0, 0)
        images.append({"id": image_id, "height": height, "width": width})
        for k, ((x0, y0, x1, y1), label) in enumerate(zip(np.asarray(boxes, float).reshape(-1, 4).tolist(), labels)):
            entry = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            if image_masks is not None:  # COCO's area of a segmented object is its mask's
                entry.update(segmentation=image_masks[k], area=float(coco_mask.area(image_masks[k])))
            annotations.append(entry)
        for k, ((x0, y0, x1, y1), score, label) in enumerate(zip(dets.boxes.tolist(), dets.scores.tolist(),
                                                                 dets.labels.tolist())):
            result = {"image_id": image_id, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                      "score": float(score)}
            if masks is not None:
                result["segmentation"] = dets.masks[k]
            results.append(result)
    if not annotations or not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1} for c in range(num_classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox" if masks is None else "segm")
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _map_of(evaluator, iou_index=None) -> float:
    """AP from accumulated precision (area 'all', 100 detections), as COCOeval.summarize computes it."""
    return _mean_precision(evaluator.eval["precision"][:, :, :, 0, -1], iou_index)


def _mean_precision(precision: np.ndarray, iou_index=None) -> float:
    """The mean of precision[T, R, K] over what was measured (-1: a category absent from truth and results)."""
    if iou_index is not None:
        precision = precision[iou_index]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def coco_metrics(ground_truth: list[tuple[np.ndarray, np.ndarray]], detections: list[Detections],
                 num_classes: int) -> dict[str, float]:
    """COCO bbox AP through pycocotools: {"map", "ap50", "ap75"} (AP@[.5:.95], AP@.5, AP@.75)."""
    return coco_evaluation(ground_truth, detections, num_classes)[0]


def coco_evaluation(ground_truth: list[tuple[np.ndarray, np.ndarray]], detections: list[Detections],
                    num_classes: int) -> tuple[dict[str, float], object]:
    """(coco_metrics, the accumulated COCOeval they come from: what a bootstrap resamples)."""
    evaluator = coco_evaluate(ground_truth, detections, num_classes)
    if not any(len(labels) for _, labels in ground_truth):
        return {"map": float("nan"), "ap50": float("nan"), "ap75": float("nan")}, evaluator
    return metrics_of(evaluator), evaluator


def instance_mask_evaluation(samples: list, predictions: list, num_classes: int) -> tuple[dict[str, float], object]:
    """COCO mask AP (`segm`) of InstanceDetections against samples with instance_masks: ({"mask_map",
    "mask_ap50", "mask_ap75"}, the accumulated COCOeval a bootstrap resamples)."""
    ground_truth = [(s.boxes, s.box_labels) for s in samples]
    evaluator = coco_evaluate(ground_truth, predictions, num_classes, masks=[s.instance_masks for s in samples])
    if not any(len(labels) for _, labels in ground_truth):
        values = {"map": float("nan"), "ap50": float("nan"), "ap75": float("nan")}
    else:
        values = metrics_of(evaluator)
    return {f"mask_{key}": value for key, value in values.items()}, evaluator


def metrics_of(evaluator) -> dict[str, float]:
    """{"map", "ap50", "ap75"} of an accumulated COCOeval (None: no detections at all -> zeros)."""
    if evaluator is None:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    return {"map": _map_of(evaluator), "ap50": _map_of(evaluator, 0), "ap75": _map_of(evaluator, 5)}


def resampled_map(evaluator, picks: np.ndarray) -> float:
    """mAP of a multiset of the evaluated images (indices may repeat), re-using the per-image matches
    of one evaluate()."""
    return MapResampler(evaluator).map(picks)


class MapResampler:
    """mAP (area 'all', the largest detection count) of any multiset of one COCOeval.evaluate()'s images,
    re-using its per-image matches: what COCOeval.accumulate() computes over those images, bit for bit.

    Written out rather than calling accumulate() on a re-indexed copy because accumulate() draws each
    precision envelope in a Python loop over the detections, ~50 ms for 120 images, and a bootstrap runs
    it twice per round: 2 x 200 rounds for every variant was most of a detection sweep. Here the envelope
    is a reversed running maximum, exact as the loop is; tests/test_metrics.py holds it equal to
    accumulate() on random resamples of box, mask and keypoint evaluations."""

    def __init__(self, evaluator):
        evaluated = evaluator._paramsEval
        categories, areas, images = len(evaluated.catIds), len(evaluated.areaRng), len(evaluated.imgIds)
        most = evaluated.maxDets[-1]
        self.recall_thresholds = np.asarray(evaluator.params.recThrs)
        self.iou_thresholds = len(evaluator.params.iouThrs)
        # per category, per image: (scores, matched ids [T, D], ignored [T, D], counted truths), or None
        self.records = [[None if e is None else (e["dtScores"][:most], e["dtMatches"][:, :most],
                                                 e["dtIgnore"][:, :most], int(np.count_nonzero(e["gtIgnore"] == 0)))
                         for e in evaluator.evalImgs[k * areas * images:k * areas * images + images]]
                        for k in range(categories)]

    def map(self, picks: np.ndarray) -> float:
        precision = -np.ones((self.iou_thresholds, len(self.recall_thresholds), len(self.records)))
        for k, per_image in enumerate(self.records):
            chosen = [per_image[i] for i in picks if per_image[i] is not None]
            truths = sum(record[3] for record in chosen)
            if not chosen or truths == 0:
                continue
            order = np.argsort(-np.concatenate([record[0] for record in chosen]), kind="mergesort")
            matched = np.concatenate([record[1] for record in chosen], axis=1)[:, order]
            ignored = np.concatenate([record[2] for record in chosen], axis=1)[:, order]
            hits = np.cumsum(np.logical_and(matched, np.logical_not(ignored)), axis=1).astype(float)
            misses = np.cumsum(np.logical_and(np.logical_not(matched), np.logical_not(ignored)), axis=1).astype(float)
            recall, exact = hits / truths, hits / (misses + hits + np.spacing(1))
            envelope = np.maximum.accumulate(exact[:, ::-1], axis=1)[:, ::-1]
            precision[:, :, k] = 0.0
            for t in range(self.iou_thresholds):
                at = np.searchsorted(recall[t], self.recall_thresholds, side="left")
                reached = at < envelope.shape[1]
                precision[t, reached, k] = envelope[t, at[reached]]
        return _mean_precision(precision)


def bootstrap_map_delta(reference_eval, candidate_eval, images: int, rounds: int, seed: int = 0
                        ) -> tuple[float, float] | None:
    """Paired bootstrap 95 % interval of Δ mAP (candidate - reference) over images, from `rounds` seeded
    resamples: the budget is rounds, never time, so two runs give the same interval on any machine."""
    if reference_eval is None or candidate_eval is None or images == 0 or rounds < 1:
        return None
    rng = np.random.default_rng(seed)
    reference, candidate = MapResampler(reference_eval), MapResampler(candidate_eval)
    deltas = []
    for _ in range(rounds):
        picks = rng.integers(0, images, images)
        deltas.append(candidate.map(picks) - reference.map(picks))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64[C, C] pixel counts, truth class by row, predicted class by column; truth pixels of
    IGNORE_LABEL are not counted (mmsegmentation's intersect-and-union, as one matrix)."""
    from harness.preprocess import IGNORE_LABEL

    counted = truth != IGNORE_LABEL
    pairs = truth[counted].astype(np.int64) * num_classes + predicted[counted].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray) -> dict[str, float]:
    """mIoU, pixel accuracy and mean class accuracy of a summed confusion matrix (mmsegmentation's mIoU,
    aAcc, mAcc): a class neither in the truth nor in the predictions has no IoU and is left out of the mean."""
    confusion = confusion.astype(np.float64)
    hits, truth, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    union = truth + predicted - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, accuracy = hits / union, hits / truth
    total = confusion.sum()
    nan = float("nan")
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else nan,
            "pixel_acc": float(hits.sum() / total) if total else nan,
            "mean_acc": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else nan}


def bootstrap_miou_delta(reference: np.ndarray, candidate: np.ndarray, rounds: int, seed: int = 0
                         ) -> tuple[float, float] | None:
    """Paired bootstrap 95 % interval of Δ mIoU over images from per-image confusion matrices [N, C, C]:
    each round sums the matrices of the resampled images (as weights, one matrix product per side)."""
    images = len(reference)
    if images == 0 or rounds < 1:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, images, size=(rounds, images))
    weights = np.zeros((rounds, images), np.float64)
    np.add.at(weights, (np.arange(rounds)[:, None], picks), 1.0)

    def miou(confusions):
        summed = weights @ confusions.reshape(images, -1).astype(np.float64)
        classes = confusions.shape[-1]
        summed = summed.reshape(rounds, classes, classes)
        hits = np.diagonal(summed, axis1=1, axis2=2)
        union = summed.sum(2) + summed.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmean(hits / union, axis=1)

    low, high = np.percentile(miou(candidate) - miou(reference), [2.5, 97.5])
    return float(low), float(high)


def coco_keypoint_evaluation(instances: list[tuple], predictions: list[np.ndarray], sigmas) -> tuple[dict, object]:
    """COCO keypoint AP (OKS) through pycocotools with the dataset's per-keypoint sigmas.

    instances: per sample (image id, box xyxy, keypoints float[J, 3] x/y/visibility, area); predictions: per
    sample float[J, 3] x, y, score in stored-image pixels, scored as an instance by the mean of its keypoint
    scores above KEYPOINT_SCORE_FLOOR (mmpose's bbox_keypoint rescoring with ground-truth boxes). Returns
    ({"ap", "ap50", "ap75"}, the accumulated COCOeval: what a bootstrap over images resamples)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted({image for image, *_ in instances})
    annotations, results = [], []
    for (image, (x0, y0, x1, y1), keypoints, area), predicted in zip(instances, predictions):
        annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": 1, "iscrowd": 0,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area,
                            "keypoints": np.asarray(keypoints, float).ravel().tolist(),
                            "num_keypoints": int((keypoints[:, 2] > 0).sum())})
        scores = predicted[:, 2]
        confident = scores[scores > KEYPOINT_SCORE_FLOOR]
        results.append({"image_id": image, "category_id": 1, "keypoints": np.asarray(predicted, float).ravel().tolist(),
                        "score": float(confident.mean()) if len(confident) else 0.0})
    if not annotations:
        return {"ap": float("nan"), "ap50": float("nan"), "ap75": float("nan")}, None
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": [{"id": i} for i in image_ids], "annotations": annotations,
                         "categories": [{"id": 1, "name": "instance"}]}
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, float)
        evaluator.evaluate()
        evaluator.accumulate()
    return {"ap": _map_of(evaluator), "ap50": _map_of(evaluator, 0), "ap75": _map_of(evaluator, 5)}, evaluator


KEYPOINT_SCORE_FLOOR = 0.2  # mmpose's keypoint_score_thr


def object_keypoint_similarity(truth: np.ndarray, predicted: np.ndarray, area: float, sigmas) -> float:
    """OKS of one prediction against one instance (COCO's formula) over the labelled keypoints:
    mean of exp(-d^2 / (2 area (2 sigma)^2))."""
    labelled = truth[:, 2] > 0
    if not labelled.any():
        return float("nan")
    variances = (2 * np.asarray(sigmas, float)) ** 2
    distances = ((truth[:, :2] - predicted[:, :2]) ** 2).sum(axis=1)
    return float(np.exp(-distances / variances / (area + np.spacing(1)) / 2)[labelled].mean())
