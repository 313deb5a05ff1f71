"""torchvision's detectors (`torchvision:retinanet_*|fcos_*|ssd*|fasterrcnn_*|maskrcnn_*|keypointrcnn_*`) as the
harness runs them.

Their input transform (GeneralizedRCNNTransform) is the harness's pre-processing (geometry
`torchvision-detect`, read from the model's own transform), so the exported graph starts at the backbone:
- single-stage detectors (RetinaNet, FCOS, SSD, SSDlite) end where their head does, and the harness decodes the
  raw outputs with the `anchors` head layout declared from the model's own anchor generator, box coder and
  thresholds (so the NMS and box-decoding axes apply; the decoding equals torchvision's postprocess_detections);
- two-stage ones (Faster, Mask and Keypoint R-CNN) cannot end before an NMS (the RPN's proposals feed the second
  stage), so the graph runs to their own post-processed detections (and mask probabilities, or keypoints),
  padded to detections_per_img with a count (the `postprocessed` head: compared as they are, the
  post-processing axes do not apply), one image a run; Mask R-CNN's masks are pasted onto the stored image by
  torchvision's own paste_masks_in_image (harness.tasks.instances); Keypoint R-CNN's keypoints (decoded from
  its heatmaps in the graph) are mapped back to it as torchvision's resize_keypoints does
  (harness.tasks.keypoint_detect).
"""
from __future__ import annotations

import math

import torch

from harness.errors import UsageError
from harness.model import ModelSpec
from harness.profile import Profile
from harness.tasks import DETECT, INSTANCES, KEYPOINT_DETECT

SINGLE_STAGE = ("RetinaNet", "FCOS", "SSD")
# each two-stage kind: its task and the per-detection output its roi_heads add beside boxes, scores and labels
TWO_STAGE = {"FasterRCNN": (DETECT, ()), "MaskRCNN": (INSTANCES, ("masks",)),
             "KeypointRCNN": (KEYPOINT_DETECT, ("keypoints",))}


class _Wrapped(torch.nn.Module):
    """A library model behind the forward the harness exports; its state_dict is the library model's own, so a
    checkpoint saved from torchvision loads as it is."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state, strict=strict, assign=assign)


class HeadOutputs(_Wrapped):
    """A single-stage detector on transformed images: its head's raw outputs, every level concatenated."""

    def __init__(self, model, names: tuple[str, ...]):
        super().__init__(model)
        self.names = names

    def forward(self, images):
        features = list(self.model.backbone(images).values())
        outputs = self.model.head(features)
        return tuple(outputs[name] for name in self.names)


class PaddedDetections(_Wrapped):
    """A two-stage detector on transformed images: each image's post-processed detections in input pixels
    (Mask R-CNN's with each one's mask probabilities, 28 x 28 over its box; Keypoint R-CNN's with each one's
    keypoints, x, y, 1 in input pixels), padded to detections_per_img rows,
    and how many rows are real. Exported at batch 1; in torch (the reference,
    BatchNorm re-estimation) a batch runs image by image, as the exported graph does."""

    def train(self, mode: bool = True):
        """Training mode reaches the backbone alone (torch's update_bn re-estimates its BatchNorm statistics):
        the RPN and box heads in training mode sample proposals against targets, which inference has none of."""
        super().train(mode)
        self.model.rpn.eval()
        self.model.roi_heads.eval()
        return self

    def forward(self, images):
        found = [self.detect(image[None]) for image in images]
        return tuple(torch.cat(parts) for parts in zip(*found))

    def detect(self, images):
        from torchvision.models.detection.image_list import ImageList

        image_list = ImageList(images, [(images.shape[-2], images.shape[-1])])
        features = self.model.backbone(images)
        proposals, _ = self.model.rpn(image_list, features)
        found = self.model.roi_heads(features, proposals, image_list.image_sizes)[0][0]
        rows = self.model.roi_heads.detections_per_img
        # cat-then-slice keeps the row count traced (the exporter folds a Python int to a constant)
        padded = [torch.cat([found[name], found[name].new_zeros(rows, *found[name].shape[1:])])[:rows][None]
                  for name in ("boxes", "scores", "labels", "masks", "keypoints") if name in found]
        return (*padded[:3], torch.ones_like(found["scores"]).sum().to(torch.int64).reshape(1), *padded[3:])


def detector_spec(arch: str, builder, checkpoint, labels: tuple[str, ...], seed: int | None, build) -> ModelSpec:
    """The spec of a torchvision detector: profile, head and outputs read from the model itself (built on the
    meta device: shapes without weights); `build` makes the real model."""
    with torch.device("meta"):
        meta = builder(weights=None, weights_backbone=None).eval()  # `builder` holds a checkpoint's num_classes
    kind = type(meta).__name__
    if kind not in (*SINGLE_STAGE, *TWO_STAGE):
        raise UsageError(f"torchvision:{arch} is a {kind}: the harness takes torchvision's RetinaNet, FCOS, SSD, "
                         "Faster, Mask and Keypoint R-CNN")
    transform = meta.transform
    if transform.fixed_size:
        input_size, resize_size = transform.fixed_size[0], None
    else:  # eval resizes to the last min_size (the others are training's multi-scale choices)
        resize_size = transform.min_size[-1]
        input_size = math.ceil(resize_size / transform.size_divisible) * transform.size_divisible
    thresholds = meta if kind in SINGLE_STAGE else meta.roi_heads
    profile = Profile(resize="torch-bilinear", geometry="torchvision-detect", input_size=input_size,
                      resize_size=resize_size, mean=tuple(transform.image_mean), std=tuple(transform.image_std),
                      score_threshold=float(thresholds.score_thresh), iou_threshold=float(thresholds.nms_thresh),
                      max_detections=int(thresholds.detections_per_img))
    common = dict(name=f"torchvision:{arch}", task=DETECT, profile=profile, labels=labels, weights=checkpoint,
                  source=f"torchvision:{arch}", summary=f"torchvision {arch} ({kind})", random_seed=seed)
    if kind in TWO_STAGE:
        task, extra = TWO_STAGE[kind]
        names = ("boxes", "scores", "labels", "count", *extra)
        if kind == "KeypointRCNN":  # its samples' classes are keypoint names (a keypoints file's), in order
            common["labels"] = _keypoint_names(arch, meta)
        # the dynamo exporter cannot take their data-dependent shapes (it fails after ~5 s on each)
        return ModelSpec(**{**common, "task": task}, output_names=names, build=lambda: PaddedDetections(build()),
                         fixed_batch=1, exporters=("legacy",),
                         head={"type": "postprocessed", **{name: name for name in names}})
    names = ("cls_logits", "bbox_regression") + (("bbox_ctrness",) if kind == "FCOS" else ())
    return ModelSpec(**common, build=lambda: HeadOutputs(build(), names), output_names=names,
                     head=_anchors_head(meta, kind, input_size))


def _keypoint_names(arch: str, meta) -> tuple[str, ...]:
    """The keypoint names of a Keypoint R-CNN: its weights' (COCO's 17), or numbered for a checkpoint with
    another count."""
    import torchvision

    count = meta.roi_heads.keypoint_predictor.kps_score_lowres.out_channels
    names = tuple(torchvision.models.get_model_weights(arch).DEFAULT.meta.get("keypoint_names") or ())
    return names if len(names) == count else tuple(f"keypoint_{k}" for k in range(count))


def _anchors_head(meta, kind: str, input_size: int) -> dict:
    """The `anchors` head layout of a single-stage detector: its generator's parameters, its box coder and
    candidate count, on the levels its backbone makes at `input_size`."""
    grids = [level.shape[-1] for level in meta.backbone(torch.empty(1, 3, input_size, input_size,
                                                                    device="meta")).values()]
    generator = meta.anchor_generator
    head = {"type": "anchors", "cls_logits": "cls_logits", "bbox_regression": "bbox_regression",
            "strides": [_stride(input_size, grid) for grid in grids], "top_k": int(meta.topk_candidates)}
    if kind == "SSD":
        head.update(generator="default-boxes", scores="softmax", aspect_ratios=[list(r) for r in generator.aspect_ratios],
                    scales=[float(s) for s in generator.scales], clip=bool(generator.clip))
        if generator.steps is not None:
            head["steps"] = list(generator.steps)
    else:
        head.update(sizes=[list(level) for level in generator.sizes],
                    aspect_ratios=[[float(r) for r in level] for level in generator.aspect_ratios])
    if kind == "FCOS":
        head.update(centerness="bbox_ctrness", box_coder="linear")
    else:
        head["box_coder_weights"] = [float(w) for w in meta.box_coder.weights]
    return head


def _stride(input_size: int, grid: int) -> int:
    """A level's stride as the anchors head declares it (its grid is ceil(input / stride)): the power of two
    that makes `grid`, else the smallest stride that does (a last level of one cell: the input's side)."""
    for power in range(12):
        if -(-input_size // 2 ** power) == grid:
            return 2 ** power
    return -(-input_size // grid)
