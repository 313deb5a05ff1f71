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
