"""The metric code against independent, hand-computed answers."""
import numpy as np
import pytest

from harness.metrics import classification_metrics, coco_metrics, topk_accuracy
from harness.postprocess import Detections


def test_top1_and_top5_by_hand():
    logits = np.array([
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # predicts 1, label 1: top-1 hit
        [0.8, 0.1, 0.05, 0.03, 0.02, 0.0],  # predicts 0, label 2: ranked 3rd, a top-5 hit
        [0.0, 0.0, 0.0, 0.0, 0.2, 0.8],   # predicts 5, label 5: hit
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],   # label 5 is ranked 6th: misses top-5 too
    ])
    labels = np.array([1, 2, 5, 5])
    assert topk_accuracy(logits, labels, 1) == 0.5
    assert classification_metrics(logits, labels) == {"top1": 0.5, "top5": 0.75}


def _dets(boxes, scores, labels):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def test_coco_map_perfect_and_empty():
    truth = [(np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32), np.array([0, 1]))]
    perfect = [_dets([[10, 10, 50, 50], [60, 60, 90, 100]], [0.9, 0.8], [0, 1])]
    assert coco_metrics(truth, perfect, 2) == pytest.approx({"map": 1.0, "ap50": 1.0, "ap75": 1.0})
    assert coco_metrics(truth, [_dets([], [], [])], 2) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0}


def test_coco_map_known_answer():
    # One class, two objects. The top-scoring detection hits object A exactly; the second is shifted on
    # object B to IoU = 0.6 (40x40 boxes offset by 10 px: 40*30 / (2*1600 - 1200) = 0.6).
    # Below IoU 0.6 both match: AP = 1. From 0.65 up only A matches: precision 1 at recall 0.5, so the
    # 101-point interpolated AP is 51/101 (recall 0, 0.01, ..., 0.50).
    truth = [(np.array([[0, 0, 40, 40], [100, 100, 140, 140]], np.float32), np.array([0, 0]))]
    dets = [_dets([[0, 0, 40, 40], [110, 100, 150, 140]], [0.9, 0.8], [0, 0])]
    result = coco_metrics(truth, dets, 1)
    thresholds = np.linspace(0.5, 0.95, 10)
    per_threshold = [1.0 if t <= 0.6 + 1e-9 else 51 / 101 for t in thresholds]
    assert result["ap50"] == pytest.approx(1.0)
    assert result["ap75"] == pytest.approx(51 / 101)
    assert result["map"] == pytest.approx(np.mean(per_threshold))


def _accumulated_by_pycocotools(evaluator, picks: np.ndarray) -> float:
    """The independent expectation: pycocotools' own accumulate() on a copy of the evaluation re-indexed to
    the picked images (area 'all', the largest detection count), and summarize()'s mean."""
    import contextlib
    import copy
    import io

    params, evaluated = evaluator.params, evaluator._paramsEval
    categories, areas, images = len(evaluated.catIds), len(evaluated.areaRng), len(evaluated.imgIds)
    clone = copy.copy(evaluator)
    clone.evalImgs = [evaluator.evalImgs[k * areas * images + i] for k in range(categories) for i in picks]
    clone.params, clone._paramsEval = copy.copy(params), copy.copy(evaluated)
    for p in (clone.params, clone._paramsEval):
        p.imgIds, p.areaRng, p.areaRngLbl, p.maxDets = list(range(len(picks))), [p.areaRng[0]], ["all"], [p.maxDets[-1]]
    with contextlib.redirect_stdout(io.StringIO()):
        clone.accumulate()
    precision = clone.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def _random_evaluation(kind: str, rng: np.random.Generator, images: int = 24, library: str = "pycocotools"):
    """A COCO evaluation of random truths and noisy detections: 4 classes, class 3 only ever detected
    (never in the truth), tied scores, misses and false positives."""
    from pycocotools import mask as coco_mask

    from harness.masks import InstanceDetections
    from harness.metrics import coco_evaluate, coco_keypoint_evaluation

    if kind == "keypoints":
        instances, predictions = [], []
        for image in range(images):
            for _ in range(rng.integers(1, 3)):
                x, y = rng.uniform(0, 60, 2)
                keypoints = np.column_stack([x + rng.uniform(0, 30, 5), y + rng.uniform(0, 30, 5), rng.integers(0, 3, 5)])
                instances.append((image + 1, [x, y, x + 30, y + 30], keypoints, 900.0))
                predicted = keypoints.copy()
                predicted[:, :2] += rng.normal(0, rng.choice([0.5, 3.0, 12.0]), (5, 2))
                predicted[:, 2] = rng.choice([0.3, 0.6, 0.9], 5)
                predictions.append(predicted)
        return coco_keypoint_evaluation(instances, predictions, [0.05, 0.06, 0.07, 0.08, 0.09], library=library)[1]
    truth, detections, masks = [], [], []
    for _ in range(images):
        boxes = rng.uniform(0, 40, (rng.integers(0, 4), 2))
        boxes = np.hstack([boxes, boxes + rng.uniform(8, 24, boxes.shape)]).astype(np.float32)
        labels = rng.integers(0, 3, len(boxes))
        kept = rng.random(len(boxes)) < 0.8
        found = boxes[kept] + rng.normal(0, 1.5, (int(kept.sum()), 4)).astype(np.float32)
        spurious = np.hstack([rng.uniform(0, 40, (2, 2)), rng.uniform(48, 64, (2, 2))]).astype(np.float32)
        predicted = np.vstack([found, spurious])
        predicted_labels = np.concatenate([labels[kept], rng.integers(0, 4, 2)])
        scores = rng.choice([0.2, 0.5, 0.5, 0.7, 0.95], len(predicted)).astype(np.float32)
        rle = [coco_mask.encode(np.asfortranarray(_box_mask(b))) for b in predicted]
        truth.append((boxes, labels))
        masks.append([coco_mask.encode(np.asfortranarray(_box_mask(b))) for b in boxes])
        detections.append(InstanceDetections(predicted, scores, predicted_labels.astype(np.int64), tuple(rle)))
    return coco_evaluate(truth, detections, 4, masks=masks if kind == "segm" else None, library=library)


def _box_mask(box: np.ndarray, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = np.clip(np.round(box).astype(int), 0, size)
    mask[y0:y1, x0:x1] = 1
    return mask


@pytest.mark.parametrize("library", ["faster-coco-eval", "pycocotools"])
@pytest.mark.parametrize("kind", ["bbox", "segm", "keypoints"])
def test_resampled_map_is_pycocotools_accumulate_bit_for_bit(kind, library):
    """The bootstrap's resampled mAP, from either library's per-image matches, against pycocotools'
    accumulate() of pycocotools' own evaluation of the same data."""
    from harness.metrics import resampled_map

    evaluator = _random_evaluation(kind, np.random.default_rng(7), library=library)
    reference = _random_evaluation(kind, np.random.default_rng(7))
    rng = np.random.default_rng(8)
    images = len(evaluator._paramsEval.imgIds)
    assert 0.1 < _accumulated_by_pycocotools(reference, np.arange(images)) < 0.9  # neither trivial nor empty
    for size in (images, images, images, 1, 3, 2 * images):
        picks = rng.integers(0, images, size)
        assert resampled_map(evaluator, picks) == _accumulated_by_pycocotools(reference, picks), picks


def test_resampled_map_reuses_the_matches_and_bootstraps_a_known_delta():
    from harness.metrics import bootstrap_map_delta, coco_evaluate, resampled_map

    truth = [(np.array([[0, 0, 40, 40]], np.float32), np.array([0])) for _ in range(10)]
    hits = [_dets([[0, 0, 40, 40]], [0.9], [0]) for _ in range(10)]
    half = [_dets([[0, 0, 40, 40]], [0.9], [0]) if k < 5 else _dets([[60, 60, 99, 99]], [0.9], [0]) for k in range(10)]
    perfect, mixed = coco_evaluate(truth, hits, 1), coco_evaluate(truth, half, 1)
    assert resampled_map(mixed, np.arange(10)) == pytest.approx(coco_metrics(truth, half, 1)["map"])
    assert resampled_map(mixed, np.array([0, 0, 1, 2])) == pytest.approx(1.0)   # only hits, one repeated
    assert resampled_map(mixed, np.array([5, 6, 6])) == pytest.approx(0.0)      # only misses
    low, high = bootstrap_map_delta(perfect, mixed, 10, rounds=100)
    assert -1.0 <= low < high < 0  # half the images lost: a clearly negative Δ
    assert bootstrap_map_delta(perfect, perfect, 10, rounds=30) == (0.0, 0.0)
