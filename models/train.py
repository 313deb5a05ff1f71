"""Training recipes of the zoo (`harness zoo train NAME`): deterministic, minutes on 2 CPU cores.

Every zoo model is trained through the reference pipeline it declares (ModelSpec.profile): the training
split is generated from the seed, JPEG-encoded exactly like the committed evaluation split, decoded by
Pillow and resized by Pillow bilinear from the larger stored image. The only augmentation is a
horizontal flip, applied to the pre-processed pixels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.benchmark import SEED
from harness.data.synthetic import FLIP_PAIRS, classification_scene, detection_scene, keypoint_scene, segmentation_scene
from harness.model import ModelSpec
from harness.preprocess import IGNORE_LABEL, label_map_to_input, normalize, to_pixels
from harness.tasks import DETECT, INSTANCES, KEYPOINTS, SEGMENT


@dataclass(frozen=True)
class Recipe:
    train_count: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    seed: int = 0
    grad_clip: float | None = None  # max gradient norm
    init_from: str | None = None  # a zoo model whose weights start this one (missing modules stay initialised)
    trainable: tuple[str, ...] = ()  # when set, the only top-level modules that train (the rest frozen)


RECIPES = {
    "resnet_tiny": Recipe(train_count=12000, epochs=14, batch_size=128, lr=3e-3),
    "mobilenetv2_tiny": Recipe(train_count=12000, epochs=14, batch_size=128, lr=4e-3),
    "fcos_tiny": Recipe(train_count=6000, epochs=24, batch_size=32, lr=1e-3, weight_decay=1e-4, grad_clip=5.0),
    "deeplabv3_tiny": Recipe(train_count=4000, epochs=16, batch_size=32, lr=3e-3, weight_decay=1e-4),
    "simcc_tiny": Recipe(train_count=2500, epochs=24, batch_size=64, lr=3e-3, weight_decay=1e-4),
    "yolact_tiny": Recipe(train_count=4000, epochs=12, batch_size=32, lr=3e-3, weight_decay=1e-4, grad_clip=5.0,
                          init_from="fcos_tiny", trainable=("coeff_out", "proto_in", "proto_out")),
}
SCENES = {DETECT: detection_scene, INSTANCES: detection_scene, SEGMENT: segmentation_scene, KEYPOINTS: keypoint_scene}
# FCOS size ranges (max l/t/r/b distance, model-input pixels) of the levels at strides 8, 16, 32
FCOS_RANGES = ((0.0, 16.0), (16.0, 32.0), (32.0, math.inf))
CENTER_RADIUS = 1.5


def _instance_crops(scene, index: int, profile) -> list:
    """A keypoint scene's figures, each cropped around its box jittered as mmpose's RandomBBoxTransform does
    (centre shifted up to 0.1 of the side, scaled 0.85-1.15): pixels and keypoints at the model input."""
    rng = np.random.default_rng([SEED, index])
    crops = []
    for box, points in zip(scene.boxes, scene.keypoints):
        side = max(box[2] - box[0], box[3] - box[1])
        centre = (box[:2] + box[2:]) / 2 + rng.uniform(-0.1, 0.1, 2) * side
        half = (box[2:] - box[:2]) / 2 * rng.uniform(0.85, 1.15)
        pixels, geometry = to_pixels(scene.jpeg, profile, np.concatenate([centre - half, centre + half]))
        moved = points.copy()
        moved[:, 0] = points[:, 0] * geometry.scale_x + geometry.offset_x
        moved[:, 1] = points[:, 1] * geometry.scale_y + geometry.offset_y
        crops.append((pixels, moved, None))
    return crops


def _make_samples(args) -> list:
    """One training scene's samples: the image with its labels, or for a keypoint scene each figure's crop."""
    task, index, profile = args
    scene = SCENES.get(task, classification_scene)(SEED, "train", index, profile.input_size)
    if task == KEYPOINTS:
        return _instance_crops(scene, index, profile)
    pixels, geometry = to_pixels(scene.jpeg, profile)
    if task == SEGMENT:  # the label map at the model input: the target of every pixel
        return [(pixels, label_map_to_input(scene.mask, profile), None)]
    boxes = scene.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * geometry.scale_x + geometry.offset_x
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * geometry.scale_y + geometry.offset_y
    labels = np.array(scene.labels, np.int64)
    if task == INSTANCES:
        return [(pixels, (labels, _masks_at_prototypes(scene.instance_masks, geometry, profile.input_size)), boxes)]
    return [(pixels, labels, boxes)]


def _masks_at_prototypes(masks: np.ndarray, geometry, input_size: int) -> np.ndarray:
    """bool[K, H, W] stored-image masks -> uint8[K, S, S] (S: the prototypes' side): the fraction of each
    prototype pixel an instance covers, x 255, placed by the image's geometry (letterbox padding empty)."""
    import cv2

    from harness.models.yolact import PROTO_STRIDE

    side = input_size // PROTO_STRIDE
    factor = side / input_size
    x0, y0 = round(geometry.offset_x * factor), round(geometry.offset_y * factor)
    width = max(1, round(masks.shape[2] * geometry.scale_x * factor))
    height = max(1, round(masks.shape[1] * geometry.scale_y * factor))
    out = np.zeros((len(masks), side, side), np.uint8)
    for k, mask in enumerate(masks):
        small = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        out[k, y0:y0 + height, x0:x0 + width] = np.round(small * 255)[:side - y0, :side - x0]
    return out


def training_split(spec: ModelSpec, count: int, workers: int = 2):
    """Pre-processed uint8 pixels [N, S, S, 3] with labels (label maps at the model input for a segmenter,
    keypoints for a keypoint model, whose samples are the scenes' figures) and boxes in model-input pixels."""
    jobs = [(spec.task, index, spec.profile) for index in range(count)]
    if count < 512:  # a few samples: not worth forking a process that may hold runtime threads
        made = [_make_samples(job) for job in jobs]
    else:
        with get_context("fork").Pool(workers) as pool:
            made = pool.map(_make_samples, jobs, chunksize=64)
    made = [sample for samples in made for sample in samples]
    pixels = np.stack([m[0] for m in made])
    return pixels, [m[1] for m in made], [m[2] for m in made]


def fcos_targets(points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
    """FCOS assignment for one image: (class int64[P] with -1 = background, ltrb/stride float[P, 4],
    centerness float[P], the assigned box's index int64[P]). A point takes the smallest box that contains it, within CENTER_RADIUS strides
    of the box centre, whose size falls in the point's level range."""
    count = points.shape[0]
    if boxes.shape[0] == 0:
        return (torch.full((count,), -1, dtype=torch.long), torch.zeros(count, 4), torch.zeros(count),
                torch.zeros(count, dtype=torch.long))
    px, py = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=2)
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    radius = strides[:, None] * CENTER_RADIUS
    near_centre = ((px - centre_x).abs() < radius) & ((py - centre_y).abs() < radius)
    low = torch.tensor([FCOS_RANGES[int(math.log2(s)) - 3][0] for s in strides.tolist()])
    high = torch.tensor([FCOS_RANGES[int(math.log2(s)) - 3][1] for s in strides.tolist()])
    largest = ltrb.max(dim=2).values
    ok = (ltrb.min(dim=2).values > 0) & near_centre & (largest >= low[:, None]) & (largest <= high[:, None])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(count, -1).clone()
    area[~ok] = math.inf
    best_area, best = area.min(dim=1)
    positive = torch.isfinite(best_area)
    target_cls = torch.where(positive, labels[best], torch.full_like(best, -1))
    target_ltrb = ltrb[torch.arange(count), best].clamp(min=1e-3)
    lr, tb = target_ltrb[:, [0, 2]], target_ltrb[:, [1, 3]]
    centerness = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
    centerness = torch.where(positive, centerness, torch.zeros_like(centerness))
    return target_cls, target_ltrb / strides[:, None], centerness, best


def fcos_loss(outputs, targets, num_classes: int) -> torch.Tensor:
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    cls_logits, box_reg, centerness = outputs
    target_cls, target_ltrb, target_ctr = (torch.stack(t) for t in list(zip(*targets))[:3])
    positive = target_cls >= 0
    num_pos = max(1.0, float(positive.sum()))
    one_hot = F.one_hot(target_cls.clamp(min=0), num_classes).float() * positive[..., None]
    loss_cls = sigmoid_focal_loss(cls_logits, one_hot, reduction="sum") / num_pos
    pred = torch.exp(box_reg[positive].clamp(max=8.0))
    goal = target_ltrb[positive]
    as_boxes = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], dim=1)  # noqa: E731
    weight = target_ctr[positive]
    loss_box = (generalized_box_iou_loss(as_boxes(pred), as_boxes(goal), reduction="none") * weight).sum() \
        / max(float(weight.sum()), 1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(centerness[positive], weight, reduction="sum") / num_pos
    return loss_cls + loss_box + loss_ctr


SIMCC_SIGMA = 2.0  # bins: the Gaussian that smooths a SimCC target (RTMPose's ~5 bins at 4x the input)


def _flipped_keypoints(points: torch.Tensor, size: int) -> torch.Tensor:
    """Keypoints of horizontally flipped crops: x mirrored about the input's width, left and right swapped."""
    flipped = points.clone()
    flipped[..., 0] = size - points[..., 0]
    for left, right in FLIP_PAIRS:
        flipped[:, [left, right]] = flipped[:, [right, left]]
    return flipped


def simcc_loss(outputs, points: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each axis' bins against a Gaussian around the keypoint's bin (RTMPose's KL loss up to
    a constant), over labelled keypoints (visibility > 0)."""
    from harness.models.simcc import SPLIT_RATIO

    labelled = points[..., 2] > 0
    loss = torch.zeros(())
    for logits, coordinate in zip(outputs, (points[..., 0], points[..., 1])):
        bins = torch.arange(logits.shape[-1], dtype=torch.float32)
        target = torch.exp(-0.5 * ((bins - coordinate[..., None] * SPLIT_RATIO) / SIMCC_SIGMA) ** 2)
        target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
        per_point = -(target * torch.log_softmax(logits, -1)).sum(-1)
        loss = loss + (per_point * labelled).sum() / labelled.sum().clamp(min=1)
    return loss


def train(spec: ModelSpec, recipe: Recipe, steps: int | None = None, log=print, train_count: int | None = None):
    """Trains spec.build() by the recipe; `steps` stops early (the determinism test runs a few)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(spec, recipe, steps, log, train_count)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(spec: ModelSpec, recipe: Recipe, steps: int | None, log, train_count: int | None):
    from harness.models.fcos import STRIDES
    from harness.postprocess import fcos_points, point_placement

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    started = time.perf_counter()
    pixels, labels, boxes = training_split(spec, train_count or recipe.train_count)
    log(f"generated {len(pixels)} training samples in {time.perf_counter() - started:.0f}s")
    # channels_last: depthwise and 3x3 conv backward run 2-8x faster on CPU; the weights are the same
    model = _initial_model(spec, recipe).to(memory_format=torch.channels_last)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = max(1, len(pixels) // recipe.batch_size)
    total = recipe.epochs * per_epoch if steps is None else steps
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=max(total, 1), pct_start=0.15)
    size = spec.profile.input_size
    anchors = None
    if spec.task in (DETECT, INSTANCES):
        levels = tuple((s, size // s, size // s) for s in STRIDES)
        anchors = tuple(torch.from_numpy(a) for a in fcos_points(levels, size, point_placement(spec.head)))
    step = 0
    model.train()
    while step < total:
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, per_epoch * recipe.batch_size, recipe.batch_size):
            if step >= total:
                break
            index = order[start:start + recipe.batch_size].numpy()
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = torch.from_numpy(normalize(pixels[index], spec.profile))
            batch[flip] = batch[flip].flip(-1)
            batch = batch.contiguous(memory_format=torch.channels_last)
            loss = _loss(spec, model, batch, index, flip, labels, boxes, anchors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:  # one crowded batch must not derail the detector
                torch.nn.utils.clip_grad_norm_(trained, recipe.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            if step % 100 == 0 or step == total:
                log(f"step {step}/{total} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    return model.to(memory_format=torch.contiguous_format).eval()


def _initial_model(spec: ModelSpec, recipe: Recipe) -> torch.nn.Module:
    """spec.build(), started from the recipe's `init_from` weights with all but its `trainable` modules frozen."""
    from harness.model import resolve_model

    model = spec.build()
    if recipe.init_from:
        start = torch.load(resolve_model(recipe.init_from).weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(start, strict=False)
        if unexpected or any(not key.startswith(recipe.trainable) for key in missing):
            raise ValueError(f"{recipe.init_from} weights do not fit {spec.name}: {unexpected or missing}")
    if recipe.trainable:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(tuple(f"{module}." for module in recipe.trainable)))
    return model


def _loss(spec: ModelSpec, model, batch, index, flip, labels, boxes, anchors) -> torch.Tensor:
    """One batch's training loss for the spec's task (flipped samples' targets flipped with them)."""
    size = spec.profile.input_size
    if spec.task == KEYPOINTS:
        points = torch.from_numpy(np.stack([labels[i] for i in index]))
        points[flip] = _flipped_keypoints(points[flip], size)
        return simcc_loss(model(batch), points)
    if spec.task == SEGMENT:
        target = torch.from_numpy(np.stack([labels[i] for i in index])).long()
        target[flip] = target[flip].flip(-1)
        return F.cross_entropy(model(batch), target, ignore_index=IGNORE_LABEL)
    if spec.task not in (DETECT, INSTANCES):
        target = torch.from_numpy(np.array([labels[i][0] for i in index]))
        return F.cross_entropy(model(batch), target, label_smoothing=0.1)
    from harness.models.fcos import OUTPUT_NAMES, flatten_levels

    targets, masks = [], []
    for k, i in enumerate(index):
        b = torch.from_numpy(boxes[i]).clone()
        if flip[k]:
            b[:, [0, 2]] = size - b[:, [2, 0]]
        classes = labels[i][0] if spec.task == INSTANCES else labels[i]
        targets.append(fcos_targets(*anchors, b, torch.from_numpy(classes)))
        if spec.task == INSTANCES:
            mask = torch.from_numpy(labels[i][1]).float() / 255
            masks.append((mask.flip(-1) if flip[k] else mask, b))
    outputs = model(batch)
    if spec.task == DETECT:
        return fcos_loss(flatten_levels(outputs), targets, len(spec.labels))
    detector_maps = len(OUTPUT_NAMES)
    return yolact_mask_loss(outputs[detector_maps:-1], outputs[-1], targets, masks, size)


def yolact_mask_loss(coefficient_maps, prototypes, targets, masks, input_size: int) -> torch.Tensor:
    """YOLACT's mask loss: for every positive point, binary cross-entropy between sigmoid(coefficients .
    prototypes) and its assigned instance's mask at the prototypes' resolution, over the pixels inside that
    instance's box, divided by the box's area there; the mean over positive points."""
    coefficients = torch.cat([c.flatten(2) for c in coefficient_maps], dim=2).transpose(1, 2)  # [N, P, K]
    side = prototypes.shape[-1]
    grid = (torch.arange(side, dtype=torch.float32) + 0.5) * (input_size / side)
    total, count = torch.zeros(()), 0
    for k, ((target_cls, _, _, assigned), (mask, image_boxes)) in enumerate(zip(targets, masks)):
        positive = torch.nonzero(target_cls >= 0)[:, 0]
        if len(positive) == 0:
            continue
        logits = coefficients[k, positive] @ prototypes[k].flatten(1)  # [P+, S*S]
        box = image_boxes[assigned[positive]]
        inside = ((grid[None, :] >= box[:, 0:1]) & (grid[None, :] < box[:, 2:3]))[:, None, :] & \
            ((grid[None, :] >= box[:, 1:2]) & (grid[None, :] < box[:, 3:4]))[:, :, None]
        goal = mask[assigned[positive]].flatten(1)
        loss = F.binary_cross_entropy_with_logits(logits, goal, reduction="none") * inside.flatten(1)
        total = total + (loss.sum(1) / inside.flatten(1).sum(1).clamp(min=1)).sum()
        count += len(positive)
    return total / max(count, 1)


def reproduce(name: str, out: Path | None = None, log=print) -> Path:
    """Trains zoo model `name` by its recipe and writes its weights (default: the shipped file)."""
    from harness.model import resolve_model

    from harness.models.train_text import TEXT_RECIPES, reproduce_text

    spec = resolve_model(name)
    if name in TEXT_RECIPES:
        return reproduce_text(spec, out, log)
    model = train(spec, RECIPES[name], log=log)
    path = out or spec.weights
    save(model, path)
    log(f"wrote {path}")
    return path


def save(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
