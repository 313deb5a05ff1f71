"""Semantic segmentation: per-pixel class logits over the model input; the harness maps them back to the
label map's resolution (the post-processing stage, with its variants); mIoU, pixel and mean class accuracy
from confusion matrices; two predictions agree when nearly every pixel does."""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from harness.tasks import SEGMENT, Evaluation, Task

HEAD_HELP = ("a segmenter's output is logits N x C x h x W over the model input (any h, w: it is resized); "
             "name it with head={'logits': OUTPUT} when the model has several outputs")
# two class maps of one image agree when at most this fraction of their pixels differ: a boundary moving by a
# pixel changes ~1 % of a small object's image, a lost or merged object far more
PIXEL_DISAGREEMENT = 0.01
MIOU_ROUNDS = 2000
# class colours of the overlays (matplotlib's tab10 after black for background), repeated past ten classes
PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # bootstrap rounds of a Δ mIoU interval: one matrix product a side, milliseconds


class Segment(Task):
    name = SEGMENT
    primary_metric = "miou"
    post_axes = ("mask_resize",)
    needs_whole_image = True

    @property
    def significance_rule(self) -> str:
        return (f"paired bootstrap over images ({MIOU_ROUNDS} seeded rounds of the summed confusion matrices): the "
                "95 % interval of Δ mIoU excludes 0")

    def predictions(self, outputs, geometries, profile, head) -> list:
        from harness.postprocess import label_map

        name = head.get("logits") or next(iter(outputs))
        if name not in outputs:
            raise HarnessError(f"segmentation output {name!r} is not among the model's outputs "
                               f"({', '.join(outputs)}); {HEAD_HELP}")
        logits = outputs[name]
        if logits.ndim != 4:
            raise HarnessError(f"segmentation output {name!r} has shape {logits.shape}; {HEAD_HELP}")
        return [label_map(logits[k], geometry, profile.input_size, profile.mask_resize)
                for k, geometry in enumerate(geometries)]

    def encode_predictions(self, predictions) -> dict:
        dtype = predictions[0].dtype if predictions else np.uint8
        return {"shapes": np.array([p.shape for p in predictions], np.int64).reshape(-1, 2),
                "pixels": np.concatenate([p.ravel() for p in predictions] or [np.zeros(0, dtype)])}

    def decode_predictions(self, arrays, count) -> list:
        from harness.store import BadPiece, checked_array

        shapes = checked_array(arrays, "shapes", np.int64, 2, count, 2)
        if (shapes < 0).any():
            raise BadPiece("negative label-map size")
        sizes = shapes.prod(axis=1)
        pixels = arrays["pixels"] if "pixels" in arrays.files else None
        if pixels is None or pixels.dtype not in (np.uint8, np.uint16) or pixels.shape != (int(sizes.sum()),):
            raise BadPiece("label-map pixels of the wrong type or count")
        ends = np.cumsum(sizes)
        return [pixels[end - size:end].reshape(shape) for size, end, shape in
                zip(sizes.tolist(), ends.tolist(), shapes.tolist())]

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        from harness.data.segmentation import read_label_map
        from harness.errors import InputError, UsageError
        from harness.metrics import confusion_matrix, segmentation_metrics

        records = np.zeros((len(samples), num_classes, num_classes), np.int64)
        for k, (sample, predicted) in enumerate(zip(samples, predictions)):
            truth = read_label_map(sample, num_classes)
            if truth.shape != predicted.shape:
                raise InputError(f"{sample.mask}: label map is {truth.shape[1]}x{truth.shape[0]}, its image "
                                 f"{predicted.shape[1]}x{predicted.shape[0]}")
            if predicted.size and int(predicted.max()) >= num_classes:
                raise UsageError(f"the model predicts class {int(predicted.max())} in {sample.id}, but its labels "
                                 f"name {num_classes} classes: its logits have more channels than the label list "
                                 "(--labels with one name per output channel, in channel order)")
            records[k] = confusion_matrix(truth, predicted, num_classes)
        return Evaluation(segmentation_metrics(records.sum(axis=0)), records, len(samples))

    def change(self, baseline, candidate, rounds) -> dict:
        from harness.metrics import bootstrap_miou_delta
        from harness.noise.stats import significant

        interval = bootstrap_miou_delta(baseline.records, candidate.records, MIOU_ROUNDS)
        return {} if interval is None else {"ci95": list(interval), "significant": significant(interval),
                                            "significance_test": "bootstrap", "bootstrap_rounds": MIOU_ROUNDS}

    def agreement(self, reference, candidate) -> np.ndarray:
        return np.array([r.shape == c.shape and np.mean(r != c) <= PIXEL_DISAGREEMENT
                         for r, c in zip(reference, candidate)], dtype=bool)

    def flip_record(self, sample, reference, candidate, classes) -> dict:
        from harness.data.segmentation import read_label_map
        from harness.preprocess import IGNORE_LABEL

        def present(label_map) -> list:
            return [classes[v] if v < len(classes) else int(v) for v in np.unique(label_map).tolist()
                    if v not in (0, IGNORE_LABEL)]

        # the classes in the label map and in each prediction (background left out), and the fraction of
        # pixels that changed class; no confidence: a class map has none
        label = present(read_label_map(sample, len(classes))) if sample.mask is not None else None  # unlabelled
        return {"label": label, "reference_pred": present(reference),
                "candidate_pred": present(candidate), "confidence": None,
                "changed_fraction": round(float(np.mean(reference != candidate)), 6)}

    def flip_overlay(self, sample, reference, candidate) -> np.ndarray | None:
        """The image, then the reference's and the candidate's class maps blended over it, side by side."""
        from PIL import Image

        try:
            with Image.open(sample.path) as image:
                rgb = np.asarray(image.convert("RGB").resize(reference.shape[::-1]), np.float32)
        except OSError:
            return None
        palette = np.asarray(PALETTE, np.float32)
        panels = [rgb]
        for label_map in (reference, candidate):
            colours = palette[label_map.astype(np.int64) % len(palette)]
            panels.append(np.where((label_map > 0)[..., None], 0.45 * rgb + 0.55 * colours, rgb))
        return side_by_side(panels)

    def benchmark(self):
        from harness.data.segmentation import load_segmentation
        from harness.data.benchmark import SEGMENT_DIR

        return load_segmentation(SEGMENT_DIR, name="embedded-segment")

    def scene(self):
        from harness.data.synthetic import segmentation_scene

        return segmentation_scene


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Equal-sized float RGB pictures scaled to a report thumbnail (nearest, so class edges stay sharp) and
    set side by side with white gaps: uint8."""
    from PIL import Image

    from harness.report.html import THUMBNAIL

    height, width = panels[0].shape[:2]
    scale = THUMBNAIL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = [np.asarray(Image.fromarray(np.clip(p, 0, 255).astype(np.uint8)).resize(size, Image.NEAREST))
             for p in panels]
    gap = np.full((size[1], 3, 3), 255, np.uint8)
    pieces = [small[0]]
    for picture in small[1:]:
        pieces += [gap, picture]
    return np.concatenate(pieces, axis=1)
