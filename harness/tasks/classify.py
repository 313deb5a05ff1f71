"""Image classification: logits rows; top-1/top-5 accuracy; a prediction is its argmax."""
from __future__ import annotations

import numpy as np

from harness.tasks import CLASSIFY, Evaluation, Task


class Classify(Task):
    name = CLASSIFY
    primary_metric = "top1"

    @property
    def significance_rule(self) -> str:
        from harness.noise.stats import ACCURACY_RULE

        return ACCURACY_RULE

    def predictions(self, outputs, geometries, profile, head) -> list:
        name, logits = next(iter(outputs.items()))  # a classifier's first output holds its logits
        return list(class_scores(name, logits))

    def encode_predictions(self, predictions) -> dict:
        return {"rows": np.stack([np.asarray(p, np.float32) for p in predictions]) if predictions
                else np.zeros((0, 0), np.float32)}

    def decode_predictions(self, arrays, count) -> list:
        from harness.store import checked_array

        rows = checked_array(arrays, "rows", np.float32, 2, count)
        return list(rows)

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        from harness.metrics import classification_metrics

        logits, labels = np.asarray(predictions), np.array([s.label for s in samples])
        correct = logits.argmax(1) == labels if len(logits) else np.zeros(0, bool)
        return Evaluation(classification_metrics(logits, labels), correct, len(samples))

    def change(self, baseline, candidate, rounds) -> dict:
        from harness.noise.stats import accuracy_change

        return accuracy_change(baseline.records, candidate.records)

    def agreement(self, reference, candidate) -> np.ndarray:
        return np.asarray(reference).argmax(axis=1) == np.asarray(candidate).argmax(axis=1)

    def flip_record(self, sample, reference, candidate, classes) -> dict:
        from harness.compare.outputs import prediction_label, softmax

        def name(index):
            return classes[index] if isinstance(index, int) and 0 <= index < len(classes) else index

        confidence = float(softmax(np.asarray(candidate, np.float64))[prediction_label(candidate)])
        return {"label": name(sample.label) if sample.label is not None else None,
                "reference_pred": name(prediction_label(reference)),
                "candidate_pred": name(prediction_label(candidate)), "confidence": round(confidence, 6)}

    def divergence(self, reference, candidate) -> float:
        from harness.compare.outputs import mean_kl

        return mean_kl(np.asarray(reference), np.asarray(candidate))

    def benchmark(self):
        from harness.data import load_image_folder
        from harness.data.benchmark import CLASSIFY_DIR

        return load_image_folder(CLASSIFY_DIR, name="embedded-classify")

    def scene(self):
        from harness.data.synthetic import classification_scene

        return classification_scene


def class_scores(name: str, logits) -> np.ndarray:
    """float32[N, classes]: the logits as they are, or [N, classes, 1, 1] (a classifier ending in a 1x1
    convolution) flattened; any other layout is refused, never scored as a classifier's by guessing (a
    detector's [N, 84, 8400] or a segmenter's [N, classes, H, W] would otherwise get an accuracy)."""
    from harness.errors import UsageError

    array = np.asarray(logits)
    if array.ndim > 2 and all(size == 1 for size in array.shape[2:]):
        array = array.reshape(array.shape[:2])
    if array.ndim != 2:
        raise UsageError(f"output {name!r} is {'x'.join(map(str, array.shape))}: not a classifier's logits "
                         "(N x classes, or N x classes x 1 x 1); the model is not a classifier, or its logits "
                         "are not its first output")
    return array.astype(np.float32)
