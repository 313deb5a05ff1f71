"""Object detection: raw head outputs decoded by the harness (harness.heads: FCOS maps, YOLO-style dense
boxes; points, boxes, NMS: the post-processing noise axes), or a graph's own post-processed detections;
COCO AP through pycocotools; two predictions agree when their confident
detections pair up one-to-one by class and IoU."""
from __future__ import annotations

import numpy as np

from harness.tasks import DETECT, Evaluation, Task

class Detect(Task):
    name = DETECT
    primary_metric = "map"
    post_axes = ("nms", "box_decode", "points")
    evaluates_whole_set = True

    @property
    def significance_rule(self) -> str:
        from harness.noise.stats import MAP_RULE

        return MAP_RULE

    def post_axes_of(self, spec) -> tuple[str, ...]:
        """Detection's post-processing axes that act on the model's head layout (none on a graph that
        post-processes itself), and a subclass's own."""
        from harness.heads import head_layout

        acting = head_layout(spec.head).post_axes
        return tuple(axis for axis in self.post_axes if axis in acting or axis not in Detect.post_axes)

    def post_processed_by(self, spec, axis: str) -> str:
        from harness.heads import head_layout

        return f"{head_layout(spec.head).post_processed_by} (head {spec.head.get('type')!r})"

    def require_head(self, spec) -> None:
        from harness.heads import head_layout

        head_layout(spec.head)

    def predictions(self, outputs, geometries, profile, head) -> list:
        from harness.heads import head_layout

        return head_layout(head).predictions(outputs, geometries, profile, head)

    def encode_predictions(self, predictions) -> dict:
        return {"counts": np.array([len(p.scores) for p in predictions], np.int64),
                "boxes": np.concatenate([p.boxes.astype(np.float32).reshape(-1, 4) for p in predictions] or
                                        [np.zeros((0, 4), np.float32)]),
                "scores": np.concatenate([p.scores.astype(np.float32) for p in predictions] or [np.zeros(0, np.float32)]),
                "labels": np.concatenate([p.labels.astype(np.int64) for p in predictions] or [np.zeros(0, np.int64)])}

    def decode_predictions(self, arrays, count) -> list:
        from harness.postprocess import Detections
        from harness.store import BadPiece, checked_array

        counts = checked_array(arrays, "counts", np.int64, 1, count)
        if (counts < 0).any():
            raise BadPiece("negative detection count")
        total = int(counts.sum())
        boxes = checked_array(arrays, "boxes", np.float32, 2, total, 4)
        scores, labels = checked_array(arrays, "scores", np.float32, 1, total), \
            checked_array(arrays, "labels", np.int64, 1, total)
        ends = np.cumsum(counts)
        return [Detections(boxes[end - n:end], scores[end - n:end], labels[end - n:end])
                for n, end in zip(counts.tolist(), ends.tolist())]

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        from harness.metrics import coco_evaluation, image_truths

        metrics, evaluator = coco_evaluation(image_truths(samples), predictions, num_classes)
        return Evaluation(metrics, evaluator, len(samples))

    def change(self, baseline, candidate, rounds) -> dict:
        from harness.metrics import bootstrap_map_delta
        from harness.noise.stats import significant

        interval = bootstrap_map_delta(baseline.records, candidate.records, candidate.samples, rounds=rounds)
        return {} if interval is None else {"ci95": list(interval), "significant": significant(interval),
                                            "significance_test": "bootstrap", "bootstrap_rounds": rounds}

    def agreement(self, reference, candidate) -> np.ndarray:
        from harness.compare.outputs import DETECTION_AGREEMENT, detections_agree

        return np.array([detections_agree(r, c, **DETECTION_AGREEMENT) for r, c in zip(reference, candidate)],
                        dtype=bool)

    def flip_record(self, sample, reference, candidate, classes) -> dict:
        from harness.compare.outputs import prediction_label

        # counts, never class names: a sample's label is how many objects it holds, a prediction how many
        # confident detections
        return {"label": int(len(sample.box_labels)) if sample.box_labels is not None else None,
                "reference_pred": prediction_label(reference), "candidate_pred": prediction_label(candidate),
                "confidence": round(float(candidate.scores.max()) if len(candidate.scores) else 0.0, 6)}

    def accepts(self, dataset_task: str) -> bool:
        from harness.tasks import INSTANCES

        return dataset_task in (DETECT, INSTANCES)

    def benchmark(self):
        from harness.data import load_coco
        from harness.data.benchmark import DETECT_DIR

        return load_coco(DETECT_DIR / "instances.json", name="embedded-detect")

    def scene(self):
        from harness.data.synthetic import detection_scene

        return detection_scene
