"""Instance segmentation: detection plus one mask per detection (a YOLACT-style head: prototypes and
per-point coefficients, harness.masks); COCO mask AP (`segm`) through pycocotools, box AP beside it; two
predictions agree when their confident masks pair up one-to-one by class and mask IoU."""
from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from harness.tasks import INSTANCES, Evaluation
from harness.tasks.detect import Detect

HEAD_HELP = ("instance segmenters must declare head={'type': 'fcos', 'prototypes': OUTPUT, 'levels': [{'stride': 8, "
             "'cls_logits': OUTPUT, 'box_reg': OUTPUT, 'centerness': OUTPUT, 'mask_coeff': OUTPUT}, ...]}: "
             "prototypes N x K x h x w over the input, mask coefficients N x K x H x W per level")
MASK_AGREEMENT = {"score_threshold": 0.3, "iou": 0.5}  # as detections agree, with mask IoU for box IoU
_OVERLAY_ALPHA = 0.55


class Instances(Detect):
    name = INSTANCES
    primary_metric = "mask_map"
    post_axes = (*Detect.post_axes, "mask_paste")
    needs_whole_image = True

    def post_axes_of(self, spec) -> tuple[str, ...]:
        """A graph's own masks (Mask R-CNN) are pasted by torchvision's paste: the mask_paste axis is the
        prototype pipeline's and does not apply to them."""
        axes = super().post_axes_of(spec)
        return tuple(axis for axis in axes if axis != "mask_paste") if "masks" in spec.head else axes

    def post_processed_by(self, spec, axis: str) -> str:
        if axis == "mask_paste":
            return "torchvision's own paste_masks_in_image (its graph's per-box masks)"
        return super().post_processed_by(spec, axis)

    def predictions(self, outputs, geometries, profile, head) -> list:
        from harness.masks import InstanceDetections, paste_masks
        from harness.postprocess import decode_fcos_points, point_placement

        if head.get("type") == "postprocessed" and "masks" in head:
            return _pasted_box_masks(outputs, geometries, profile, head)
        if head.get("type") != "fcos" or "prototypes" not in head or \
                not all("mask_coeff" in level for level in head.get("levels", ())):
            raise HarnessError(f"instance segmentation needs a head with prototypes and mask coefficients; {HEAD_HELP}")
        placement = point_placement(head, profile)
        predictions = []
        for k, geometry in enumerate(geometries):
            levels = [(level["stride"], outputs[level["cls_logits"]][k], outputs[level["box_reg"]][k],
                       outputs[level["centerness"]][k]) for level in head["levels"]]
            detections, points = decode_fcos_points(levels, profile, placement)
            coefficients = np.concatenate([outputs[level["mask_coeff"]][k].reshape(
                outputs[level["mask_coeff"]].shape[1], -1) for level in head["levels"]], axis=1).T
            boxes = geometry.to_image(detections.boxes)
            masks = paste_masks(coefficients[points], outputs[head["prototypes"]][k], boxes, geometry,
                                profile.input_size, profile.mask_paste, profile.mask_threshold)
            predictions.append(InstanceDetections(boxes, detections.scores, detections.labels, tuple(masks)))
        return predictions

    def encode_predictions(self, predictions) -> dict:
        arrays = super().encode_predictions(predictions)
        rles = [rle for p in predictions for rle in p.masks]
        arrays["mask_sizes"] = np.array([rle["size"] for rle in rles], np.int64).reshape(-1, 2)
        arrays["mask_lengths"] = np.array([len(rle["counts"]) for rle in rles], np.int64)
        arrays["mask_counts"] = np.frombuffer(b"".join(rle["counts"] for rle in rles), np.uint8)
        return arrays

    def decode_predictions(self, arrays, count) -> list:
        from harness.masks import InstanceDetections
        from harness.store import BadPiece, checked_array

        detections = super().decode_predictions(arrays, count)
        total = sum(len(d.scores) for d in detections)
        sizes = checked_array(arrays, "mask_sizes", np.int64, 2, total, 2)
        lengths = checked_array(arrays, "mask_lengths", np.int64, 1, total)
        if (sizes < 0).any() or (lengths < 0).any():
            raise BadPiece("negative mask size or length")
        counts = checked_array(arrays, "mask_counts", np.uint8, 1, int(lengths.sum())).tobytes()
        ends = np.cumsum(lengths).tolist()
        rles = [{"size": size, "counts": counts[end - length:end]}
                for size, length, end in zip(sizes.tolist(), lengths.tolist(), ends)]
        out, start = [], 0
        for d in detections:
            out.append(InstanceDetections(d.boxes, d.scores, d.labels, tuple(rles[start:start + len(d.scores)])))
            start += len(d.scores)
        return out

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        from harness.metrics import coco_evaluation, image_truths, instance_mask_evaluation

        metrics, evaluator = instance_mask_evaluation(samples, predictions, num_classes)
        box_metrics, _ = coco_evaluation(image_truths(samples), predictions, num_classes)
        return Evaluation({**metrics, "box_map": box_metrics["map"]}, evaluator, len(samples))

    def agreement(self, reference, candidate) -> np.ndarray:
        from harness.compare.outputs import detections_agree
        from harness.masks import mask_iou

        return np.array([detections_agree(r, c, **MASK_AGREEMENT, overlaps=lambda a, b, r=r, c=c: mask_iou(
            [r.masks[i] for i in a], [c.masks[j] for j in b])) for r, c in zip(reference, candidate)], dtype=bool)

    def flip_overlay(self, sample, reference, candidate) -> np.ndarray | None:
        """The image, then the reference's and the candidate's confident masks blended over it, side by side."""
        from harness.masks import decode_masks
        from harness.tasks.segment import PALETTE, side_by_side

        rgb = _stored_rgb(sample)
        if rgb is None:
            return None
        panels = [rgb]
        for prediction in (reference, candidate):
            blend = rgb.copy()
            confident = np.nonzero(prediction.scores >= MASK_AGREEMENT["score_threshold"])[0]
            if len(confident):
                masks = decode_masks([prediction.masks[i] for i in confident])
                for mask, label in zip(masks, prediction.labels[confident]):
                    colour = np.asarray(PALETTE[1 + int(label) % (len(PALETTE) - 1)], np.float32)
                    blend[mask] = (1 - _OVERLAY_ALPHA) * rgb[mask] + _OVERLAY_ALPHA * colour
            panels.append(blend)
        return side_by_side(panels)

    def benchmark(self):
        from harness.data import load_coco
        from harness.data.benchmark import DETECT_DIR

        return load_coco(DETECT_DIR / "instances.json", name="embedded-instances")


def _pasted_box_masks(outputs, geometries, profile, head) -> list:
    """A graph's own detections with a mask each (Mask R-CNN's [N, K, 1, M, M] probabilities over each box),
    pasted onto the stored image as torchvision's transform.postprocess does (paste_masks_in_image, at the boxes
    mapped to the stored image), kept above mask_threshold as its evaluation keeps them (> 0.5)."""
    import torch
    from pycocotools import mask as coco_mask
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from harness.heads import PostprocessedHead, head_layout
    from harness.masks import InstanceDetections

    found = []
    for k, (detections, geometry) in enumerate(zip(head_layout(head).predictions(outputs, geometries, profile, head),
                                                   geometries)):
        probabilities = PostprocessedHead.per_detection(outputs, "masks", k, profile, head).astype(np.float32)
        pasted = paste_masks_in_image(torch.from_numpy(probabilities), torch.from_numpy(detections.boxes),
                                      (geometry.height, geometry.width))[:, 0].numpy() > profile.mask_threshold
        rles = coco_mask.encode(np.asfortranarray(pasted.transpose(1, 2, 0).astype(np.uint8))) \
            if len(probabilities) else []
        found.append(InstanceDetections(detections.boxes, detections.scores, detections.labels, tuple(rles)))
    return found


def _stored_rgb(sample) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(sample.path) as image:
            return np.asarray(image.convert("RGB"), np.float32)
    except OSError:
        return None
