"""Keypoints, top-down (the RTMPose line): each sample is one instance, cropped around its box by the
pre-processing (geometry "topdown"); a SimCC head classifies each keypoint's x and y into bins, decoded
by the harness (argmax, sub-bin refinements: the keypoint_decode axis) and mapped back to the stored
image; COCO keypoint AP (OKS with the dataset's sigmas) through pycocotools, images bootstrapped."""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from harness.tasks import KEYPOINTS, Evaluation, Task

HEAD_HELP = ("models must declare head={'type': 'simcc', 'split_ratio': 2.0, 'x': OUTPUT, 'y': OUTPUT} with "
             "outputs N x K x bins (harness.postprocess.decode_simcc)")
# two predictions of one instance agree when their OKS (the dataset's sigmas and the instance's area) is at
# least this: a keypoint moved by about a tenth of its sigma-scaled tolerance
OKS_AGREEMENT = 0.95


class Keypoints(Task):
    name = KEYPOINTS
    primary_metric = "ap"
    post_axes = ("keypoint_decode",)
    evaluates_whole_set = True

    @property
    def significance_rule(self) -> str:
        return ("paired bootstrap over images, a fixed number of seeded rounds: the 95 % interval of Δ keypoint AP "
                "(OKS) excludes 0")

    def predictions(self, outputs, geometries, profile, head) -> list:
        from harness.postprocess import decode_simcc

        if head.get("type") != "simcc" or head.get("x") not in outputs or head.get("y") not in outputs:
            raise HarnessError(f"keypoint post-processing for head {head.get('type')!r} with outputs "
                               f"{', '.join(outputs)} is not available; " + HEAD_HELP)
        simcc_x, simcc_y = outputs[head["x"]], outputs[head["y"]]
        predictions = []
        for k, geometry in enumerate(geometries):
            decoded = decode_simcc(simcc_x[k], simcc_y[k], head["split_ratio"], profile.keypoint_decode)
            decoded[:, :2] = geometry.points_to_image(decoded[:, :2])
            predictions.append(decoded)
        return predictions

    def encode_predictions(self, predictions) -> dict:
        return {"keypoints": np.stack(predictions).astype(np.float32) if predictions
                else np.zeros((0, 0, 3), np.float32)}

    def decode_predictions(self, arrays, count) -> list:
        from harness.store import checked_array

        return list(checked_array(arrays, "keypoints", np.float32, 3, count))

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        from harness.metrics import coco_keypoint_evaluation

        sigmas = samples[0].sigmas if samples else ()
        metrics, evaluator = coco_keypoint_evaluation(
            [(s.image_id, s.boxes[0].tolist(), s.keypoints, s.area) for s in samples], predictions, sigmas)
        return Evaluation(metrics, evaluator, len({s.image_id for s in samples}))

    def change(self, baseline, candidate, rounds) -> dict:
        from harness.metrics import bootstrap_map_delta
        from harness.noise.stats import significant

        interval = bootstrap_map_delta(baseline.records, candidate.records, candidate.samples, rounds=rounds)
        return {} if interval is None else {"ci95": list(interval), "significant": significant(interval),
                                            "significance_test": "bootstrap", "bootstrap_rounds": rounds}

    def agreement(self, reference, candidate) -> np.ndarray:
        from harness.metrics import object_keypoint_similarity

        agree = []
        for r, c in zip(reference, candidate):
            # label-free: the reference's own keypoints, all counted, at the area of their extent
            extent = np.ptp(r[:, :2], axis=0)
            truth = np.concatenate([r[:, :2], np.full((len(r), 1), 2.0)], axis=1)
            sigmas = np.full(len(r), 0.07)  # a sample without its dataset's sigmas: COCO's median
            agree.append(object_keypoint_similarity(truth, c, float(extent.prod()) or 1.0, sigmas) >= OKS_AGREEMENT)
        return np.array(agree, dtype=bool)

    def flip_record(self, sample, reference, candidate, classes) -> dict:
        from harness.metrics import object_keypoint_similarity

        def oks(predicted):
            return round(object_keypoint_similarity(sample.keypoints, predicted, sample.area, sample.sigmas), 4)

        # each side's OKS against the labelled keypoints, and the keypoint that moved most (pixels)
        moved = np.hypot(*(reference[:, :2] - candidate[:, :2]).T)
        worst = int(moved.argmax())
        return {"label": int((sample.keypoints[:, 2] > 0).sum()), "reference_pred": oks(reference),
                "candidate_pred": oks(candidate), "confidence": round(float(candidate[:, 2].mean()), 6),
                "moved_most": {"keypoint": classes[worst] if worst < len(classes) else worst,
                               "pixels": round(float(moved[worst]), 2)}}

    def flip_overlay(self, sample, reference, candidate) -> np.ndarray | None:
        """The instance's box region with the labelled keypoints (white), the reference's (green) and the
        candidate's (red)."""
        from PIL import Image, ImageDraw

        from harness.report.html import THUMBNAIL

        x0, y0, x1, y1 = sample.boxes[0].tolist()
        pad = 0.15 * max(x1 - x0, y1 - y0)
        try:
            with Image.open(sample.path) as image:
                crop = image.convert("RGB").crop((int(x0 - pad), int(y0 - pad), int(x1 + pad), int(y1 + pad)))
        except OSError:
            return None
        scale = THUMBNAIL / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
        draw = ImageDraw.Draw(crop)
        for points, colour in ((sample.keypoints, (255, 255, 255)), (reference, (0, 200, 0)), (candidate, (230, 0, 0))):
            for x, y, *_ in points.tolist():
                cx, cy = (x - int(x0 - pad)) * scale, (y - int(y0 - pad)) * scale
                draw.ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=colour)
        return np.asarray(crop)

    def benchmark(self):
        from harness.data import load_coco
        from harness.data.benchmark import KEYPOINTS_DIR

        return load_coco(KEYPOINTS_DIR / "keypoints.json", name="embedded-keypoints")

    def scene(self):
        from harness.data.synthetic import keypoint_scene

        return keypoint_scene
