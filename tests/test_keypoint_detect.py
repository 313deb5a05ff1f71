"""Keypoint detection (a model that finds the people itself, Keypoint R-CNN): a COCO person-keypoints file's
whole-image view, COCO keypoint AP equal to pycocotools run on the file itself, and label-free agreement by OKS.
Keypoint R-CNN's own keypoints end to end: tests/test_torchvision_detection.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from harness.data import evaluation_data, load_dataset
from harness.data.keypoints import COCO_PERSON_SIGMAS
from harness.tasks import get_task
from harness.tasks.keypoint_detect import KeypointDetections


@pytest.fixture(scope="module")
def person_file(tmp_path_factory, person_keypoints):
    return person_keypoints(tmp_path_factory.mktemp("people"), images=12)


def test_a_keypoints_file_is_seen_whole_image_by_image_by_a_keypoint_detector(person_file):
    """The top-down task sees one labelled person a sample; the keypoint detector one image a sample, with every
    person (one without a labelled keypoint too), the crowd region, and the image without people."""
    coco = json.loads(person_file.read_text())
    loaded = load_dataset(person_file)
    people = [a for a in coco["annotations"] if not a["iscrowd"]]
    assert len(loaded) == sum(a["num_keypoints"] > 0 for a in people)
    view = evaluation_data("keypoint-detect", loaded, None)
    assert [s.image_id for s in view.samples] == [image["id"] for image in coco["images"]]
    assert sum(len(s.boxes) for s in view.samples) == len(people)
    assert sum(len(s.crowd_boxes) for s in view.samples) == 1 and len(view.samples[-1].boxes) == 0
    first = view.samples[0]
    expected = [a for a in people if a["image_id"] == first.image_id]
    assert np.array_equal(first.keypoints, np.array([a["keypoints"] for a in expected], np.float32).reshape(-1, 17, 3))
    assert first.areas.tolist() == [a["area"] for a in expected] and first.sigmas == COCO_PERSON_SIGMAS
    assert len(evaluation_data("keypoint-detect", loaded, 3)) == 3


def _predictions(view) -> list[KeypointDetections]:
    """Each labelled person found with its keypoints moved by a few pixels (more for later ones), one missed,
    a false person on the empty image and one inside the crowd region (COCO ignores it)."""
    rng = np.random.default_rng(7)
    found = []
    for k, sample in enumerate(view.samples):
        keep = [p for p in range(len(sample.boxes)) if (sample.keypoints[p, :, 2] > 0).any() and (k, p) != (2, 0)]
        boxes = sample.boxes[keep] + rng.normal(0, 2, (len(keep), 4)).astype(np.float32)
        keypoints = sample.keypoints[keep].copy()
        keypoints[..., :2] += rng.normal(0, 1 + k, keypoints[..., :2].shape)
        keypoints[..., 2] = 1
        if len(sample.crowd_boxes):
            x0, y0, x1, y1 = sample.crowd_boxes[0]
            boxes = np.vstack([boxes, [[x0, y0, x1, y1]]])
            crowded = np.zeros((1, 17, 3), np.float32)
            crowded[0, :, :2] = ((x0 + x1) / 2, (y0 + y1) / 2)
            keypoints = np.concatenate([keypoints, crowded])
        if not len(sample.boxes):
            boxes, keypoints = np.array([[5, 5, 60, 90]], np.float32), np.full((1, 17, 3), 30, np.float32)
        scores = rng.uniform(0.1, 1.0, len(boxes)).astype(np.float32)
        found.append(KeypointDetections(boxes.astype(np.float32), scores, np.ones(len(boxes), np.int64),
                                        keypoints.astype(np.float32)))
    return found


def test_keypoint_ap_is_what_pycocotools_computes_on_the_file_itself(person_file):
    """The harness's keypoint AP (and person box AP) of detections against the loaded file equal pycocotools'
    COCOeval on the json file as COCO's keypoint challenge runs it, with the detections as a results list."""
    view = evaluation_data("keypoint-detect", load_dataset(person_file), None)
    predictions = _predictions(view)
    got = get_task("keypoint-detect").evaluate(view.samples, predictions, 1).metrics
    truth = COCO(str(person_file))
    for kind, key in (("keypoints", "ap"), ("bbox", "box_map")):
        results = [{"image_id": s.image_id, "category_id": 1, "score": float(score),
                    "keypoints": keypoints.ravel().tolist(), "bbox": [x0, y0, x1 - x0, y1 - y0]}
                   for s, p in zip(view.samples, predictions)
                   for (x0, y0, x1, y1), score, keypoints in zip(p.boxes.tolist(), p.scores, p.keypoints)]
        if kind == "bbox":
            results = [{k: v for k, v in r.items() if k != "keypoints"} for r in results]
        evaluator = COCOeval(truth, truth.loadRes(results), kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert abs(got[key] - evaluator.stats[0]) < 1e-9, (kind, got, evaluator.stats[:3])
        if kind == "keypoints":
            assert abs(got["ap50"] - evaluator.stats[1]) < 1e-9 and abs(got["ap75"] - evaluator.stats[2]) < 1e-9
    assert 0.1 < got["ap"] < 0.95, got  # the jitter costs some, the missed person too: neither 0 nor 1


def test_two_keypoint_predictions_agree_when_their_confident_people_pair_up_by_oks(person_file):
    view = evaluation_data("keypoint-detect", load_dataset(person_file), None)
    task = get_task("keypoint-detect")
    predictions = [KeypointDetections(p.boxes, np.full_like(p.scores, 0.9), p.labels, p.keypoints)
                   for p in _predictions(view) if len(p.scores) > 1][:4]
    assert task.agreement(predictions, predictions).all()
    moved = []
    for k, p in enumerate(predictions):
        keypoints = p.keypoints.copy()
        keypoints[0, 0, :2] += 25.0 if k == 0 else 0.01  # one nose 25 px away; a hundredth of a pixel elsewhere
        moved.append(KeypointDetections(p.boxes, p.scores, p.labels, keypoints))
    assert task.agreement(predictions, moved).tolist() == [False, True, True, True]
    unsure = [KeypointDetections(p.boxes, np.minimum(p.scores, 0.2), p.labels, p.keypoints + 40) for p in predictions]
    assert task.agreement(unsure, [KeypointDetections(p.boxes[:0], p.scores[:0], p.labels[:0], p.keypoints[:0])
                                   for p in predictions]).all(), "people below the score threshold are not compared"


def test_stored_keypoint_predictions_come_back_as_they_were(person_file):
    import io

    view = evaluation_data("keypoint-detect", load_dataset(person_file), None)
    task = get_task("keypoint-detect")
    predictions = _predictions(view)
    buffer = io.BytesIO()
    np.savez(buffer, **task.encode_predictions(predictions))
    back = task.decode_predictions(np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False), len(predictions))
    for a, b in zip(predictions, back):
        assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.boxes, b.boxes)


def test_a_keypoint_detector_without_its_keypoints_output_is_refused_before_any_work():
    """An .onnx file run as `--task keypoint-detect` must declare the postprocessed head with its keypoints output:
    without it, one line naming the model and the head it needs (not a failed reference after the export)."""
    from dataclasses import replace

    from harness.errors import UsageError
    from harness.model import ModelSpec
    from harness.profile import Profile

    spec = ModelSpec(name="people.onnx", task="keypoint-detect", profile=Profile(),
                     output_names=("boxes", "scores", "labels", "count", "keypoints"))
    with pytest.raises(UsageError, match=r"^people.onnx: keypoint detection takes no head None with outputs boxes, "
                                         r"scores, labels, count, keypoints; keypoint detectors must declare head="):
        get_task("keypoint-detect").require_head(spec)
    head = {"type": "postprocessed", **{name: name for name in spec.output_names}}
    get_task("keypoint-detect").require_head(replace(spec, head=head))
    with pytest.raises(UsageError, match="takes no head 'postprocessed'"):
        get_task("keypoint-detect").require_head(replace(spec, head={**head, "keypoints": "heatmaps"}))


def test_a_graph_that_post_processes_itself_says_why_no_post_processing_axis_varies_it():
    """Keypoint R-CNN's graph ends in its own NMS and box decoding: a sweep of those axes offers no variant and
    says why (in --list-axes and in the report's axis block); a head the harness decodes is varied."""
    from harness.model import resolve_model
    from harness.noise import AXES, unavailable

    people = resolve_model("torchvision:keypointrcnn_resnet50_fpn")
    for axis in ("nms", "box_decode"):
        assert AXES[axis].variants(people, "onnxruntime") == []
        assert unavailable(axis, people) == ("does not apply to torchvision:keypointrcnn_resnet50_fpn: its graph "
                                             "(head 'postprocessed') does this step, and what it makes is compared as "
                                             "it is")
    boxes = resolve_model("torchvision:ssdlite320_mobilenet_v3_large")
    assert unavailable("nms", boxes) is None and AXES["nms"].variants(boxes, "onnxruntime")
