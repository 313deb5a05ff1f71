"""The harness evaluates COCO AP with faster-coco-eval; pycocotools is the reference it must equal to 1e-9: on the
zoo detector's real predictions, and on constructed edge cases (crowd regions, images without truth or without
detections, more detections than the cut-off). Also: a COCO file's crowd regions reach the evaluation as
COCO's ignore regions, as pycocotools reads the same file."""
import contextlib
import io
import json

import numpy as np
import onnxruntime
import pytest

from harness.data import embedded_benchmark, load_coco
from harness.export import export
from harness.metrics import ImageTruth, coco_evaluate, coco_evaluation, image_truths, metrics_of
from harness.model import resolve_model
from harness.postprocess import Detections
from harness.preprocess import normalize, to_pixels
from harness.tasks import get_task


def _assert_same_evaluation(truth, detections, classes, masks=None):
    """Every precision, recall and score of the accumulated arrays (all IoU thresholds, areas, cut-offs),
    and the metrics, of both libraries."""
    faster = coco_evaluate(truth, detections, classes, masks=masks, library="faster-coco-eval")
    reference = coco_evaluate(truth, detections, classes, masks=masks, library="pycocotools")
    for key in ("precision", "recall", "scores"):
        assert faster.eval[key].shape == reference.eval[key].shape, key
        np.testing.assert_allclose(faster.eval[key], reference.eval[key], rtol=0, atol=1e-9, err_msg=key)
    assert metrics_of(faster) == pytest.approx(metrics_of(reference), abs=1e-9)
    return metrics_of(reference)


def _dets(boxes, scores, labels):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def test_equal_on_the_zoo_detectors_predictions():
    spec = resolve_model("fcos_tiny")
    dataset = embedded_benchmark(spec.task).aligned_to(spec.labels)
    exported = export(spec)
    session = onnxruntime.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    task, predictions = get_task(spec.task), []
    for start in range(0, len(dataset.samples), 32):
        samples = dataset.samples[start:start + 32]
        pixels, geometries = zip(*(to_pixels(dataset.read(s), spec.profile) for s in samples))
        outputs = session.run(None, {exported.input_name: normalize(np.stack(pixels), spec.profile)})
        named = dict(zip([o.name for o in session.get_outputs()], outputs))
        predictions.extend(task.predictions(named, list(geometries), spec.profile, spec.head))
    assert len(predictions) == len(dataset.samples) >= 100 and sum(len(p.scores) for p in predictions) > 1000
    metrics = _assert_same_evaluation(image_truths(dataset.samples), predictions, len(spec.labels))
    assert 0.05 < metrics["map"] < 0.95  # a real, non-trivial evaluation


def _as_masks(boxes, size: int = 300) -> tuple:
    from pycocotools import mask as coco_mask

    masks = []
    for x0, y0, x1, y1 in np.round(np.asarray(boxes, float).reshape(-1, 4)).astype(int):
        mask = np.zeros((size, size), np.uint8)
        mask[y0:y1, x0:x1] = 1
        masks.append(coco_mask.encode(np.asfortranarray(mask)))
    return tuple(masks)


@pytest.mark.parametrize("kind", ["bbox", "segm"])
def test_equal_on_crowds_empty_images_and_the_detection_cut_off(kind):
    from harness.masks import InstanceDetections

    rng = np.random.default_rng(3)
    box = np.array([[10, 10, 50, 50]], np.float32)
    crowd = np.array([[100, 100, 190, 190]], np.float32)
    truth = [
        ImageTruth(box, np.array([0]), crowd, np.array([0])),           # a hit, and a detection inside a crowd
        ImageTruth(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)),  # no truth: its detections are misses
        (box, np.array([1])),                                           # truth and no detection
        (box, np.array([0])),                                           # the true box ranked below 100 others
        ImageTruth(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), crowd, np.array([1])),  # only a crowd
    ]
    clutter = rng.uniform(200, 260, (120, 2))
    detections = [
        _dets([[10, 10, 50, 50], [110, 110, 150, 150], [120, 100, 180, 170]], [0.9, 0.95, 0.3], [0, 0, 0]),
        _dets([[5, 5, 40, 40]], [0.99], [1]),
        _dets([], [], []),
        _dets(np.vstack([np.hstack([clutter, clutter + 20]), [[10, 10, 50, 50]]]),
              np.concatenate([rng.uniform(0.5, 0.9, 120), [0.1]]), [0] * 121),
        _dets([[100, 100, 150, 150], [0, 0, 20, 20]], [0.8, 0.7], [1, 1]),
    ]
    if kind == "segm":  # the same boxes as masks; crowd regions carry theirs after the image's objects
        detections = [InstanceDetections(d.boxes, d.scores, d.labels, _as_masks(d.boxes)) for d in detections]
        masks = [_as_masks(np.vstack([t.boxes, t.crowd_boxes])) for t in (ImageTruth(*t) for t in truth)]
        _assert_same_evaluation(truth, detections, 2, masks=masks)
        return
    _assert_same_evaluation(truth, detections, 2)
    # the crowd ignores the two detections inside it: image 0 alone is one hit, no false positive
    assert coco_evaluation(truth[:1], detections[:1], 1)[0]["map"] == pytest.approx(1.0)
    assert coco_evaluation(truth[:1] + [(box, np.array([0]))], detections[:1] + [detections[3]], 1)[0]["ap50"] \
        == pytest.approx(51 / 101)  # the 2nd image's hit lies past the 100-detection cut-off: recall 0 to 0.5 of 101


def test_a_coco_files_crowd_regions_are_evaluated_as_pycocotools_reads_the_file(tmp_path):
    """The loader keeps iscrowd annotations as ignore regions (it dropped them, which turned every detection
    on a crowd into a false positive); the harness's evaluation equals pycocotools on the file itself."""
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for k in range(3):
        Image.new("RGB", (200, 200)).save(tmp_path / "images" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"{k}.png", "width": 200, "height": 200})
        annotations.append({"id": 2 * k + 1, "image_id": k + 1, "category_id": 7, "bbox": [10, 10, 40, 40],
                            "area": 1600, "iscrowd": 0})
        annotations.append({"id": 2 * k + 2, "image_id": k + 1, "category_id": 7, "bbox": [100, 100, 90, 90],
                            "area": 8100, "iscrowd": 1})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "thing"}]}))
    data = load_coco(path)
    assert [len(s.boxes) for s in data.samples] == [1, 1, 1] and [len(s.crowd_boxes) for s in data.samples] == [1] * 3
    detections = [_dets([[10, 10, 50, 50], [110, 110, 170, 170]], [0.6, 0.9], [0, 0]) for _ in data.samples]
    ours = coco_evaluation(image_truths(data.samples), detections, 1)[0]
    results = [{"image_id": k + 1, "category_id": 7, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
               for k, d in enumerate(detections) for (x0, y0, x1, y1), score in zip(d.boxes.tolist(), d.scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(path))
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-12) == pytest.approx(1.0)
    assert ours["ap75"] == pytest.approx(evaluator.stats[2], abs=1e-12)


def test_a_segmented_coco_files_crowd_masks_are_ignore_regions_as_pycocotools_reads_them(tmp_path):
    """An instance set whose crowd region is an uncompressed RLE (as COCO stores crowds): mask AP of detections,
    one on the object and one inside the crowd, equals pycocotools' `segm` evaluation of the file itself."""
    from PIL import Image
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from harness.masks import InstanceDetections
    from harness.metrics import instance_mask_evaluation

    (tmp_path / "images").mkdir()
    crowd = np.zeros((40, 40), np.uint8)
    crowd[20:38, 20:38] = 1
    runs, value, count = [], 0, 0
    for pixel in crowd.flatten(order="F"):  # COCO's uncompressed RLE: column-major runs, zeros first
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    images, annotations = [], []
    for k in range(2):
        Image.new("RGB", (40, 40)).save(tmp_path / "images" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"{k}.png", "width": 40, "height": 40})
        annotations.append({"id": 2 * k + 1, "image_id": k + 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                            "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]})
        annotations.append({"id": 2 * k + 2, "image_id": k + 1, "category_id": 1, "bbox": [20, 20, 18, 18],
                            "area": 324, "iscrowd": 1, "segmentation": {"size": [40, 40], "counts": runs}})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    data = load_coco(path)
    assert data.task == "instances" and [len(s.crowd_masks) for s in data.samples] == [1, 1]
    hit, inside = np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8)
    hit[2:12, 2:12], inside[22:34, 22:34] = 1, 1
    masks = tuple(coco_mask.encode(np.asfortranarray(m)) for m in (hit, inside))
    predictions = [InstanceDetections(np.array([[2, 2, 12, 12], [22, 22, 34, 34]], np.float32),
                                      np.array([0.6, 0.9], np.float32), np.array([0, 0]), masks) for _ in images]
    ours = instance_mask_evaluation(data.samples, predictions, 1)[0]
    results = [{"image_id": k + 1, "category_id": 1, "segmentation": {**m, "counts": m["counts"].decode()},
                "score": float(s)} for k in range(2) for m, s in zip(masks, (0.6, 0.9))]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(path))
        evaluator = COCOeval(truth, truth.loadRes(results), "segm")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert ours["mask_map"] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert ours["mask_map"] > 0.9  # the detection inside the crowd is ignored, not a false positive above the hit
