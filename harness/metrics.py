"""Task metrics, as fractions in [0, 1]. COCO AP (boxes, masks, keypoints) is computed by faster-coco-eval,
the C++ port of pycocotools' COCOeval, which tests/test_metrics.py holds equal to pycocotools (the reference,
`library="pycocotools"`) to 1e-9 on the zoo and on crowd regions, empty images and detection cut-offs:
pycocotools' Python evaluate() and accumulate() were most of a detection sweep's evaluation time. Only
the bootstrap resamples use MapResampler, which re-draws the evaluation's own per-image matches with the
envelope accumulate() draws (exact, and held equal to pycocotools' accumulate() by the same tests), because
accumulate's Python loop made the bootstrap 84 % of a detection sweep."""
from __future__ import annotations

import contextlib
import io
from typing import NamedTuple

import numpy as np

from harness.postprocess import Detections

COCO_LIBRARY = "faster-coco-eval"  # the evaluator the harness uses; "pycocotools" is the reference
NO_BOXES = np.zeros((0, 4), np.float32)
NO_LABELS = np.zeros(0, np.int64)


class ImageTruth(NamedTuple):
    """One image's ground truth for COCO evaluation: boxes float[K, 4] xyxy pixels and labels int[K]
    (0-based), and its crowd regions (COCO's iscrowd=1: a detection matched to one is ignored, neither
    a hit nor a false positive)."""

    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray = NO_BOXES
    crowd_labels: np.ndarray = NO_LABELS


def image_truths(samples) -> list[ImageTruth]:
    return [ImageTruth(s.boxes, s.box_labels, *((s.crowd_boxes, s.crowd_labels) if s.crowd_boxes is not None else ()))
            for s in samples]


def _coco_api(library: str | None):
    """(COCO, COCOeval factory) of a COCO evaluation library (None: COCO_LIBRARY); faster-coco-eval keeps
    its per-image results (separate_eval) for MapResampler and prints nothing."""
    library = library or COCO_LIBRARY
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if library == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, lambda truth, results, kind: COCOeval_faster(truth, results, kind, separate_eval=True,
                                                                  print_function=lambda *_, **__: None)
    raise ValueError(f"unknown COCO evaluation library {library!r} (faster-coco-eval or pycocotools)")


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """logits float[N, C], labels int[N] -> fraction of samples whose label is among the k largest logits."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


def coco_evaluate(ground_truth: list[tuple], detections: list[Detections], num_classes: int,
                  masks: list[tuple] | None = None, library: str | None = None):
    """A COCOeval (faster-coco-eval's by default, pycocotools' with library="pycocotools") after evaluate()
    + accumulate(), or None when there is nothing to evaluate.

    ground_truth: per image an ImageTruth, or (boxes, labels) without crowd regions; detections: per image,
    same coordinates. With `masks` (per image, one COCO RLE per ground-truth box, then one per crowd box)
    the evaluation is COCO's `segm` (mask IoU) of each detection's own RLE masks
    (harness.masks.InstanceDetections); else `bbox`.
    """
    from pycocotools import mask as coco_mask

    COCO, COCOeval = _coco_api(library)
    images, annotations, results = [], [], []
    for image_id, (entry, dets) in enumerate(zip(ground_truth, detections), start=1):
        truth = ImageTruth(*entry)
        image_masks = masks[image_id - 1] if masks is not None else None
        height, width = image_masks[0]["size"] if image_masks else (0, 0)
        images.append({"id": image_id, "height": height, "width": width})
        crowd = [0] * len(truth.labels) + [1] * len(truth.crowd_labels)
        boxes = np.vstack([np.asarray(truth.boxes, float).reshape(-1, 4), np.asarray(truth.crowd_boxes, float).reshape(-1, 4)])
        for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes.tolist(), [*truth.labels, *truth.crowd_labels])):
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": crowd[k]}
            if image_masks is not None:  # COCO's area of a segmented object is its mask's
                annotation.update(segmentation=image_masks[k], area=float(coco_mask.area(image_masks[k])))
            annotations.append(annotation)
        for k, ((x0, y0, x1, y1), score, label) in enumerate(zip(dets.boxes.tolist(), dets.scores.tolist(),
                                                                 dets.labels.tolist())):
            result = {"image_id": image_id, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                      "score": float(score)}
            if masks is not None:
                result["segmentation"] = dets.masks[k]
            results.append(result)
    if not any(a["iscrowd"] == 0 for a in annotations) or not results:
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


def coco_metrics(ground_truth: list[tuple], detections: list[Detections], num_classes: int) -> dict[str, float]:
    """COCO bbox AP: {"map", "ap50", "ap75"} (AP@[.5:.95], AP@.5, AP@.75)."""
    return coco_evaluation(ground_truth, detections, num_classes)[0]


def coco_evaluation(ground_truth: list[tuple], detections: list[Detections], num_classes: int,
                    library: str | None = None) -> tuple[dict[str, float], object]:
    """(coco_metrics, the accumulated COCOeval they come from: what a bootstrap resamples)."""
    evaluator = coco_evaluate(ground_truth, detections, num_classes, library=library)
    if not any(len(ImageTruth(*truth).labels) for truth in ground_truth):
        return {"map": float("nan"), "ap50": float("nan"), "ap75": float("nan")}, evaluator
    return metrics_of(evaluator), evaluator


def instance_mask_evaluation(samples: list, predictions: list, num_classes: int, library: str | None = None
                             ) -> tuple[dict[str, float], object]:
    """COCO mask AP (`segm`) of InstanceDetections against samples with instance_masks: ({"mask_map",
    "mask_ap50", "mask_ap75"}, the accumulated COCOeval a bootstrap resamples)."""
    ground_truth = image_truths(samples)
    masks = [(*s.instance_masks, *(s.crowd_masks or ())) for s in samples]
    evaluator = coco_evaluate(ground_truth, predictions, num_classes, masks=masks, library=library)
    if not any(len(truth.labels) for truth in ground_truth):
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
        per_image = _per_image_results(evaluator, self.iou_thresholds)
        # per category, per image: (scores, matched ids [T, D], ignored [T, D], counted truths), or None
        self.records = [[None if e is None else (e["dtScores"][:most], e["dtMatches"][:, :most],
                                                 e["dtIgnore"][:, :most], int(np.count_nonzero(e["gtIgnore"] == 0)))
                         for e in per_image[k * areas * images:k * areas * images + images]]
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


def _per_image_results(evaluator, iou_thresholds: int) -> list:
    """evaluate()'s per (category, area, image) results, as pycocotools' evalImgs dicts. faster-coco-eval
    keeps them in C++; their pickle state is (detection matches [T x D], truth matches, detection scores,
    truth ignored [G], detection ignored [T x D]), the same per-image matches in the same order."""
    if not hasattr(evaluator, "_evalImgs_cpp"):
        return evaluator.evalImgs
    results = []
    for evaluation in evaluator._evalImgs_cpp:
        matches, _, scores, truth_ignored, ignored = evaluation.__getstate__()[:5]
        results.append({"dtScores": np.asarray(scores, float),
                        "dtMatches": np.asarray(matches, float).reshape(iou_thresholds, len(scores)),
                        "dtIgnore": np.asarray(ignored, bool).reshape(iou_thresholds, len(scores)),
                        "gtIgnore": np.asarray(truth_ignored, bool)})
    return results


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


def coco_keypoint_evaluation(instances: list[tuple], predictions: list[np.ndarray], sigmas,
                             library: str | None = None) -> tuple[dict, object]:
    """COCO keypoint AP (OKS) with the dataset's per-keypoint sigmas.

    instances: per sample (image id, box xyxy, keypoints float[J, 3] x/y/visibility, area); predictions: per
    sample float[J, 3] x, y, score in stored-image pixels, scored as an instance by the mean of its keypoint
    scores above KEYPOINT_SCORE_FLOOR (mmpose's bbox_keypoint rescoring with ground-truth boxes). Returns
    ({"ap", "ap50", "ap75"}, the accumulated COCOeval: what a bootstrap over images resamples)."""
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
    return _keypoint_cocoeval(image_ids, annotations, results, sigmas, library)


def coco_person_keypoint_evaluation(images: list, predictions: list, library: str | None = None) -> tuple[dict, object]:
    """COCO keypoint AP of a model that finds the people itself (Keypoint R-CNN), as COCO's keypoint challenge
    scores it. images: whole-image samples (harness.data.keypoints' `whole_images`: every person's box,
    keypoints and area, crowd regions); predictions: per image, its detections with keypoints float[K, J, 3] in
    stored-image pixels, each scored by its detection score (torchvision's COCO evaluation does the same).
    People without a labelled keypoint and crowd regions are COCO's ignored regions."""
    annotations, results = [], []
    for sample, predicted in zip(images, predictions):
        for (x0, y0, x1, y1), keypoints, area in zip(sample.boxes.tolist(), sample.keypoints, sample.areas.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": sample.image_id, "category_id": 1,
                                "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area,
                                "keypoints": np.asarray(keypoints, float).ravel().tolist(),
                                "num_keypoints": int((keypoints[:, 2] > 0).sum())})
        for x0, y0, x1, y1 in sample.crowd_boxes.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": sample.image_id, "category_id": 1,
                                "iscrowd": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "keypoints": [0.0] * sample.keypoints.shape[1] * 3, "num_keypoints": 0})
        for keypoints, score in zip(predicted.keypoints, predicted.scores.tolist()):
            results.append({"image_id": sample.image_id, "category_id": 1,
                            "keypoints": np.asarray(keypoints, float).ravel().tolist(), "score": score})
    return _keypoint_cocoeval([s.image_id for s in images], annotations, results,
                              images[0].sigmas if images else (), library)


def _keypoint_cocoeval(image_ids: list, annotations: list, results: list, sigmas, library: str | None
                       ) -> tuple[dict, object]:
    """pycocotools' keypoint evaluation (OKS with `sigmas`) of COCO-format ground truth and results."""
    COCO, COCOeval = _coco_api(library)
    if not any(not a["iscrowd"] for a in annotations):
        return {"ap": float("nan"), "ap50": float("nan"), "ap75": float("nan")}, None
    if not results:  # nothing found where people are: AP 0 (as metrics_of says of a detector finding nothing)
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}, None
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
