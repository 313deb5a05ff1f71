"""Keypoint detection (COCO's keypoint challenge, the Keypoint R-CNN line): a model finds the people in a whole
image itself and gives each one its keypoints. Its samples are whole images (a keypoints file's other view:
every person, crowd regions); its graph's own detections and keypoints (the `postprocessed` head with a
`keypoints` output: float[N, D, J, 3] in model-input pixels) are mapped back to the stored image; COCO
keypoint AP (OKS with the dataset's sigmas, each person scored by its detection score) through the COCO
evaluator, person box AP beside it; two predictions agree when their confident people pair up one-to-one by
OKS. The top-down task (harness.tasks.keypoints) is the other keypoint family: one person a sample, its box
given."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.errors import HarnessError
from harness.postprocess import Detections
from harness.tasks import KEYPOINT_DETECT, KEYPOINTS, Evaluation
from harness.tasks.detect import Detect

HEAD_HELP = ("keypoint detectors must declare head={'type': 'postprocessed', 'boxes': OUTPUT, 'scores': OUTPUT, "
             "'labels': OUTPUT, 'count': OUTPUT, 'keypoints': OUTPUT} with keypoints N x D x J x 3 (x, y, "
             "visibility) in model-input pixels")
# the OKS at which two predictions of one person agree (the top-down task's threshold), at a score threshold
# and one-to-one pairing as detections agree
PERSON_AGREEMENT = {"score_threshold": 0.3, "iou": 0.95}
# OKS sigmas of a label-free comparison when the keypoints are not COCO's 17 (COCO's median sigma)
_MEDIAN_SIGMA = 0.07


@dataclass(frozen=True)
class KeypointDetections(Detections):
    """An image's detected people: Detections with each one's keypoints float32[K, J, 3] (x, y in stored-image
    pixels, the graph's visibility)."""

    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.float32))


class KeypointDetect(Detect):
    name = KEYPOINT_DETECT
    primary_metric = "ap"

    def view(self, dataset):
        """A keypoints file's whole images (each person of an image is a sample of the top-down view)."""
        from harness.data import Dataset

        if dataset.whole_images is None:
            return dataset
        return Dataset(dataset.name, dataset.task, dataset.root, dataset.classes, dataset.whole_images,
                       dataset.skipped)

    def accepts(self, dataset_task: str) -> bool:
        return dataset_task == KEYPOINTS

    def require_head(self, spec) -> None:
        from harness.errors import UsageError
        from harness.heads import PostprocessedHead

        if spec.head.get("type") != PostprocessedHead.name or spec.head.get("keypoints") not in spec.output_names:
            raise UsageError(f"{spec.name}: keypoint detection takes no head {spec.head.get('type')!r} with outputs "
                             f"{', '.join(spec.output_names)}; {HEAD_HELP}")

    def predictions(self, outputs, geometries, profile, head) -> list:
        from harness.heads import PostprocessedHead, head_layout

        found = []
        detected = head_layout(head).predictions(outputs, geometries, profile, head)
        for image, (detections, geometry) in enumerate(zip(detected, geometries)):
            keypoints = np.asarray(PostprocessedHead.per_detection(outputs, "keypoints", image, profile, head),
                                   np.float32)
            if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
                raise HarnessError(f"output {head['keypoints']!r} holds {keypoints.shape} an image's detections; "
                                   + HEAD_HELP)
            found.append(KeypointDetections(detections.boxes, detections.scores, detections.labels,
                                            geometry.points_to_image(keypoints)))
        return found

    def encode_predictions(self, predictions) -> dict:
        arrays = super().encode_predictions(predictions)
        joints = max((p.keypoints.shape[1] for p in predictions), default=0)
        arrays["keypoints"] = np.concatenate([p.keypoints.astype(np.float32).reshape(-1, joints, 3)
                                              for p in predictions] or [np.zeros((0, 0, 3), np.float32)])
        return arrays

    def decode_predictions(self, arrays, count) -> list:
        from harness.store import checked_array

        detections = super().decode_predictions(arrays, count)
        keypoints = checked_array(arrays, "keypoints", np.float32, 3, sum(len(d.scores) for d in detections))
        ends = np.cumsum([len(d.scores) for d in detections]).tolist()
        return [KeypointDetections(d.boxes, d.scores, d.labels, keypoints[end - len(d.scores):end])
                for d, end in zip(detections, ends)]

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        """Keypoint AP, and person box AP of the same detections (every detection is a person: the one class)."""
        from harness.metrics import coco_evaluation, coco_person_keypoint_evaluation, image_truths

        metrics, evaluator = coco_person_keypoint_evaluation(samples, predictions)
        people = [Detections(p.boxes, p.scores, np.zeros(len(p.scores), np.int64)) for p in predictions]
        box_metrics, _ = coco_evaluation(image_truths(samples), people, 1)
        return Evaluation({**metrics, "box_map": box_metrics["map"]}, evaluator, len(samples))

    def agreement(self, reference, candidate) -> np.ndarray:
        from harness.compare.outputs import detections_agree

        return np.array([detections_agree(r, c, **PERSON_AGREEMENT, overlaps=lambda a, b, r=r, c=c: _oks_matrix(
            r.keypoints[a], r.boxes[a], c.keypoints[b])) for r, c in zip(reference, candidate)], dtype=bool)

    def benchmark(self):
        from harness.tasks.keypoints import Keypoints

        return self.view(Keypoints().benchmark())

    def scene(self):
        from harness.data.synthetic import keypoint_scene

        return keypoint_scene


def _oks_matrix(reference: np.ndarray, boxes: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """OKS of every candidate person against every reference person, label-free: all of the reference's
    keypoints counted, each person's area its box's, COCO's person sigmas for 17 keypoints (else the median)."""
    from harness.data.keypoints import COCO_PERSON_SIGMAS
    from harness.metrics import object_keypoint_similarity

    joints = reference.shape[1] if reference.ndim == 3 else 0
    sigmas = COCO_PERSON_SIGMAS if joints == len(COCO_PERSON_SIGMAS) else (_MEDIAN_SIGMA,) * joints
    areas = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    truths = [np.concatenate([r[:, :2], np.full((joints, 1), 2.0)], axis=1) for r in reference]
    return np.array([[object_keypoint_similarity(truth, c, float(area) or 1.0, sigmas) for c in candidate]
                     for truth, area in zip(truths, areas)]).reshape(len(reference), len(candidate))
