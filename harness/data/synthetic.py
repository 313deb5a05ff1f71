"""Seeded generator of natural-looking scenes: the embedded benchmark's source.

No installable package ships labelled photos or ImageNet/COCO weights, so the harness makes its own
images. Each one is built to make system noise visible, as measured in a prototype:

- coloured 1/f-noise backgrounds, clutter (lines, blobs) and sensor noise, so the task is not trivial;
- high-frequency stripe and checker textures, so resize aliasing changes what the model sees;
- images stored 1.25-3x larger than the model input, so the resize method matters;
- JPEG quality 50-95 with 4:4:4, 4:2:2 and 4:2:0 chroma subsampling, where decoders differ.

Every sample is a pure function of (seed, split, index): the evaluation split is committed as JPEG bytes
(encoders change between Pillow versions), the training split is regenerated from the seed.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = (
    "circle", "square", "triangle", "star", "ring",
    "cross", "hexagon", "diamond", "crescent", "arrow",
)
SPLIT_IDS = {"train": 1, "eval": 2}
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges, as a camera gives


@dataclass(frozen=True)
class Scene:
    """One generated image. `boxes` are float32[K, 4] xyxy pixels of the stored image; `mask` (segmentation
    scenes) is uint8[H, W] at the stored resolution: 0 background, k + 1 where class k is visible;
    `keypoints` (keypoint scenes) float32[K, J, 3]: per figure and joint x, y and COCO's visibility (2
    visible, 1 hidden behind a later figure, 0 outside the image); `instance_masks` (detection scenes)
    bool[K, H, W]: each boxed object's visible pixels (coverage above half, after occlusion)."""

    jpeg: bytes
    labels: tuple[int, ...]
    boxes: np.ndarray
    quality: int
    subsampling: str
    mask: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    instance_masks: np.ndarray | None = None


def sample_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """`stream` keeps the scene makers of different tasks apart (0: the classification and detection
    scenes, whose committed bytes predate it)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index, stream] if stream else [seed, SPLIT_IDS[split], index])


def pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32[H, W, 3] in [0, 1]: 1/f noise per channel with a random tint."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    alpha = rng.uniform(0.9, 1.6)
    channels = []
    for _ in range(3):
        spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) / radius**alpha
        spectrum[0, 0] = 0
        field = np.fft.irfft2(spectrum, s=(height, width))
        field = (field - field.mean()) / (field.std() + 1e-8)
        channels.append(field)
    noise = np.stack(channels, axis=-1).astype(np.float32)
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    mix = rng.uniform(0.3, 0.9)  # how much the channels share one luminance field
    noise = mix * noise[..., :1] + (1 - mix) * noise
    return np.clip(base + rng.uniform(0.08, 0.22) * noise, 0.0, 1.0)


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32[H, W, 3] in [0, 1]: solid, stripes, checker, noise or gradient fill for an object."""
    color_a = rng.uniform(0, 1, size=3).astype(np.float32)
    color_b = np.clip(color_a + rng.uniform(-0.7, 0.7, size=3), 0, 1).astype(np.float32)
    kind = rng.choice(["solid", "stripes", "stripes", "checker", "checker", "noise", "gradient"])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        weight = np.zeros((height, width), np.float32)
    elif kind == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(2.2, 7.0)  # near the Nyquist limit of the model input after resize
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        weight = (np.sin(2 * math.pi * phase) > 0).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(2.0, 6.0)
        weight = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    elif kind == "noise":
        weight = rng.uniform(0, 1, size=(height, width)).astype(np.float32)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        weight = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    return color_a * (1 - weight[..., None]) + color_b * weight[..., None]


def _polygon(center: tuple[float, float], radii: list[float], angles: list[float]) -> list[tuple[float, float]]:
    cx, cy = center
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles)]


def draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, rot: float) -> None:
    """Draws class `name` filled with 255, centred at (cx, cy), circumradius r, rotated by rot radians."""
    def regular(n: int, offset: float = 0.0) -> list[tuple[float, float]]:
        return _polygon((cx, cy), [r] * n, [rot + offset + 2 * math.pi * k / n for k in range(n)])

    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "square":
        draw.polygon(regular(4, math.pi / 4), fill=255)
    elif name == "diamond":
        draw.polygon(_polygon((cx, cy), [r, 0.62 * r] * 2, [rot + k * math.pi / 2 for k in range(4)]), fill=255)
    elif name == "triangle":
        draw.polygon(regular(3, -math.pi / 2), fill=255)
    elif name == "hexagon":
        draw.polygon(regular(6), fill=255)
    elif name == "star":
        draw.polygon(_polygon((cx, cy), [r, 0.45 * r] * 5, [rot - math.pi / 2 + k * math.pi / 5 for k in range(10)]),
                     fill=255)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = 0.55 * r
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif name == "cross":
        arm = 0.33 * r
        corners = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm),
                   (arm, r), (-arm, r), (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners], fill=255)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.5 * r * math.cos(rot), cy + 0.5 * r * math.sin(rot)
        inner = 0.85 * r
        draw.ellipse([ox - inner, oy - inner, ox + inner, oy + inner], fill=0)
    elif name == "arrow":
        corners = [(-r, -0.25 * r), (0.15 * r, -0.25 * r), (0.15 * r, -0.7 * r), (r, 0),
                   (0.15 * r, 0.7 * r), (0.15 * r, 0.25 * r), (-r, 0.25 * r)]
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners], fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(CLASSES)}")


def shape_alpha(name: str, size: int, r: float, rot: float) -> np.ndarray:
    """float32[size, size] coverage in [0, 1] of one shape centred in a size x size patch."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    centre = size * SUPERSAMPLE / 2
    draw_shape(ImageDraw.Draw(big), name, centre, centre, r * SUPERSAMPLE, rot)
    return np.asarray(big.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Alpha-composites patch onto canvas at (x0, y0); returns the visible coverage on the canvas."""
    height, width = canvas.shape[:2]
    ph, pw = alpha.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + pw, width), min(y0 + ph, height)
    coverage = np.zeros((height, width), np.float32)
    if cx1 <= cx0 or cy1 <= cy0:
        return coverage
    a = alpha[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
    region = canvas[cy0:cy1, cx0:cx1]
    region[:] = region * (1 - a) + patch[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] * a
    coverage[cy0:cy1, cx0:cx1] = a[..., 0]
    return coverage


def add_clutter(rng: np.random.Generator, canvas: np.ndarray, count: int, scale: float) -> None:
    """Lines and blobs that belong to no class: distractors and partial occluders."""
    height, width = canvas.shape[:2]
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    colors = []
    for k in range(count):
        color_index = k + 1
        colors.append(rng.uniform(0, 1, size=3))
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.7) * scale
            draw.line([x0, y0, x0 + length * math.cos(angle), y0 + length * math.sin(angle)],
                      fill=color_index, width=int(rng.integers(1, max(2, int(scale * 0.05)) + 1)))
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            # elongated, so a blob is never mistaken for an unlabelled circle
            rx = rng.uniform(0.03, 0.12) * scale
            ry = rx * rng.uniform(0.25, 0.6)
            if rng.random() < 0.5:
                rx, ry = ry, rx
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=color_index)
    index = np.asarray(layer)
    for k, color in enumerate(colors):
        canvas[index == k + 1] = color


def finish(rng: np.random.Generator, canvas: np.ndarray) -> tuple[bytes, int, str]:
    """Sensor noise, 8-bit quantisation and JPEG encoding at a random quality and subsampling."""
    sigma = rng.uniform(0.005, 0.03)
    pixels = np.clip(canvas + rng.normal(0, sigma, canvas.shape), 0, 1)
    image = Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), "RGB")
    quality = int(rng.integers(50, 96))
    subsampling = int(rng.integers(0, 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue(), quality, SUBSAMPLING[subsampling]


def _place_object(rng, canvas, label: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Draws one object; returns its visible coverage on the canvas."""
    patch_size = int(math.ceil(2 * r + 4))
    x0, y0 = int(round(cx - patch_size / 2)), int(round(cy - patch_size / 2))
    rot = rng.uniform(-0.35, 0.35)  # bounded, so square and diamond stay different classes
    alpha = shape_alpha(CLASSES[label], patch_size, r, rot)
    contrast = rng.uniform(0.55, 1.0)
    patch = texture(rng, patch_size, patch_size)
    return paste(canvas, patch, alpha * contrast, x0, y0)


def classification_scene(seed: int, split: str, index: int, input_size: int = 64) -> Scene:
    """One object of one class, roughly centred, on a cluttered background."""
    rng = sample_rng(seed, split, index)
    label = int(rng.integers(0, len(CLASSES)))
    short = int(round(input_size * rng.uniform(1.25, 3.0)))
    long = int(round(short * rng.uniform(1.0, 1.3)))
    width, height = (long, short) if rng.random() < 0.5 else (short, long)
    canvas = pink_noise(rng, height, width)
    add_clutter(rng, canvas, int(rng.integers(1, 5)), short)
    r = short * rng.uniform(0.16, 0.36)
    cx = width / 2 + rng.uniform(-0.12, 0.12) * short
    cy = height / 2 + rng.uniform(-0.12, 0.12) * short
    coverage = _place_object(rng, canvas, label, cx, cy, r)
    if rng.random() < 0.4:  # occluders in front of the object
        add_clutter(rng, canvas, int(rng.integers(1, 3)), short)
    ys, xs = np.nonzero(coverage > 0.5)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    jpeg, quality, subsampling = finish(rng, canvas)
    return Scene(jpeg, (label,), box, quality, subsampling)


def _scatter_objects(rng, canvas, count: int, crowded: bool, radius: tuple[float, float]):
    """Draws `count` objects on a square canvas (radius a fraction of its side); in a crowded scene most
    later objects take an earlier one's class and overlap it, so NMS (and a mask) must keep both apart.
    Returns their labels and visible coverages (later objects occlude earlier ones)."""
    side = canvas.shape[0]
    labels, coverages, placed = [], [], []
    for k in range(count):
        r = side * rng.uniform(*radius)
        if crowded and k > 0 and rng.random() < 0.6:
            # same class as an earlier object and overlapping it: NMS has to keep both
            ref = int(rng.integers(0, len(labels)))
            label = labels[ref]
            bx, by, span = placed[ref]
            angle = rng.uniform(0, 2 * math.pi)
            dist = (span + r) * rng.uniform(0.45, 0.8)
            cx, cy = bx + dist * math.cos(angle), by + dist * math.sin(angle)
            r = max(r, 0.6 * span)
        else:
            label = int(rng.integers(0, len(CLASSES)))
            cx, cy = rng.uniform(r, side - r), rng.uniform(r, side - r)
        cx, cy = float(np.clip(cx, r, side - r)), float(np.clip(cy, r, side - r))
        coverage = _place_object(rng, canvas, label, cx, cy, r)
        for earlier in coverages:  # later objects occlude earlier ones
            earlier *= 1 - coverage
        labels.append(label)
        coverages.append(coverage)
        placed.append((cx, cy, r))
    return labels, coverages


def square_background(rng, input_size: int) -> np.ndarray:
    """A square 1/f-noise canvas 1.25-3x the model input with 1-5 pieces of clutter (multi-object scenes)."""
    side = int(round(input_size * rng.uniform(1.25, 3.0)))
    canvas = pink_noise(rng, side, side)
    add_clutter(rng, canvas, int(rng.integers(1, 6)), side)
    return canvas


def detection_scene(seed: int, split: str, index: int, input_size: int = 128) -> Scene:
    """1-8 objects with tight boxes; about a third of scenes are crowded with same-class overlaps."""
    rng = sample_rng(seed, split, index)
    canvas = square_background(rng, input_size)
    crowded = rng.random() < 0.35
    count = int(rng.integers(4, 9)) if crowded else int(rng.integers(1, 5))
    labels, coverages = _scatter_objects(rng, canvas, count, crowded, (0.05, 0.17))
    kept_labels, boxes, masks = [], [], []
    for label, coverage in zip(labels, coverages):
        visible = coverage > 0.5
        ys, xs = np.nonzero(visible)
        if len(xs) < 20:  # hidden behind later objects: not a labelled object any more
            continue
        kept_labels.append(label)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks.append(visible)
    jpeg, quality, subsampling = finish(rng, canvas)
    return Scene(jpeg, tuple(kept_labels), np.array(boxes, np.float32).reshape(-1, 4), quality, subsampling,
                 instance_masks=np.array(masks, bool).reshape(-1, *canvas.shape[:2]))


def segmentation_scene(seed: int, split: str, index: int, input_size: int = 64) -> Scene:
    """1-5 objects of the ten classes with a label map at the stored resolution: the class whose shape covers
    more than half a pixel, after occlusion; clutter is background."""
    rng = sample_rng(seed, split, index, stream=3)
    canvas = square_background(rng, input_size)
    side = canvas.shape[0]
    crowded = rng.random() < 0.35
    count = int(rng.integers(3, 6)) if crowded else int(rng.integers(1, 4))
    labels, coverages = _scatter_objects(rng, canvas, count, crowded, (0.08, 0.24))
    mask = np.zeros((side, side), np.uint8)
    for label, coverage in zip(labels, coverages):
        mask[coverage > 0.5] = label + 1
    present = sorted(set(int(v) - 1 for v in np.unique(mask) if v))
    jpeg, quality, subsampling = finish(rng, canvas)
    return Scene(jpeg, tuple(present), np.zeros((0, 4), np.float32), quality, subsampling, mask=mask)


# a stick figure's keypoints (the RTMPose line: top-down keypoints of each instance), the left/right pairs a
# horizontal flip swaps, and the limbs drawn between them
KEYPOINTS = ("head", "neck", "left_elbow", "right_elbow", "left_hand", "right_hand", "pelvis", "left_knee",
             "right_knee", "left_foot", "right_foot")
FLIP_PAIRS = ((2, 3), (4, 5), (7, 8), (9, 10))
LIMBS = ((0, 1), (1, 2), (2, 4), (1, 3), (3, 5), (1, 6), (6, 7), (7, 9), (6, 8), (8, 10))
# OKS falloff per keypoint (COCO's run 0.025-0.107: tighter for the head, wider for the body)
KEYPOINT_SIGMAS = (0.05, 0.08, 0.07, 0.07, 0.06, 0.06, 0.1, 0.087, 0.087, 0.089, 0.089)


def _toward(angle: float) -> np.ndarray:
    """Unit vector `angle` radians from straight down, positive toward the image's right."""
    return np.array([math.sin(angle), math.cos(angle)])


def figure_pose(rng, cx: float, cy: float, height: float) -> np.ndarray:
    """float64[K, 2] keypoints of a figure `height` tall centred at (cx, cy), facing the viewer (its left
    limbs on the image's right), leaning, with random arm and leg angles."""
    lean = rng.uniform(-0.2, 0.2)
    pelvis = np.array([cx, cy]) - 0.05 * height * _toward(lean)
    neck = pelvis - 0.32 * height * _toward(lean)
    points = {0: neck - 0.13 * height * _toward(lean), 1: neck, 6: pelvis}
    for side, sign in ((0, 1.0), (1, -1.0)):
        arm = lean + sign * rng.uniform(0.3, 2.6)
        elbow = neck + 0.17 * height * _toward(arm)
        hand = elbow + 0.15 * height * _toward(arm + sign * rng.uniform(-0.6, 0.9))
        leg = lean + sign * rng.uniform(0.08, 0.45)
        knee = pelvis + 0.24 * height * _toward(leg)
        foot = knee + 0.24 * height * _toward(leg + sign * rng.uniform(-0.3, 0.2))
        points.update({2 + side: elbow, 4 + side: hand, 7 + side: knee, 9 + side: foot})
    return np.array([points[k] for k in range(len(KEYPOINTS))])


def _draw_figure(rng, canvas: np.ndarray, points: np.ndarray, height: float) -> np.ndarray:
    """Draws a textured stick figure (limbs, round joints, a head) through `points`; returns its coverage."""
    side = canvas.shape[0]
    big = Image.new("L", (side * SUPERSAMPLE, side * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    scaled = points * SUPERSAMPLE
    width = max(SUPERSAMPLE, int(rng.uniform(0.045, 0.075) * height * SUPERSAMPLE))
    for a, b in LIMBS:
        draw.line([tuple(scaled[a]), tuple(scaled[b])], fill=255, width=width)
    for x, y in scaled:
        draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
    head = 0.085 * height * SUPERSAMPLE
    x, y = scaled[0]
    draw.ellipse([x - head, y - head, x + head, y + head], fill=255)
    alpha = np.asarray(big.resize((side, side), Image.BOX), dtype=np.float32) / 255.0
    return paste(canvas, texture(rng, side, side), alpha * rng.uniform(0.6, 1.0), 0, 0)


def keypoint_scene(seed: int, split: str, index: int, input_size: int = 64) -> Scene:
    """1-3 stick figures with their keypoints and tight boxes; later figures may hide earlier ones' joints."""
    rng = sample_rng(seed, split, index, stream=4)
    canvas = square_background(rng, input_size)
    side = canvas.shape[0]
    poses, coverages = [], []
    for _ in range(int(rng.integers(1, 4))):
        height = side * rng.uniform(0.4, 0.85)
        cx, cy = rng.uniform(0.2, 0.8) * side, rng.uniform(0.4, 0.6) * side
        pose = figure_pose(rng, cx, cy, height)
        coverage = _draw_figure(rng, canvas, pose, height)
        for earlier in coverages:
            earlier *= 1 - coverage
        poses.append(pose)
        coverages.append(coverage)
    boxes, keypoints = [], []
    for k, (pose, coverage) in enumerate(zip(poses, coverages)):
        ys, xs = np.nonzero(coverage > 0.5)
        if len(xs) < 20:  # hidden behind later figures
            continue
        inside = (pose >= 0).all(axis=1) & (pose < side).all(axis=1)
        hidden = np.zeros(len(pose), bool)
        for later in coverages[k + 1:]:
            cells = np.clip(pose.astype(int), 0, side - 1)
            hidden |= later[cells[:, 1], cells[:, 0]] > 0.5
        visibility = np.where(inside, np.where(hidden, 1, 2), 0)
        keypoints.append(np.concatenate([pose, visibility[:, None]], axis=1))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    jpeg, quality, subsampling = finish(rng, canvas)
    return Scene(jpeg, (0,) * len(boxes), np.array(boxes, np.float32).reshape(-1, 4), quality, subsampling,
                 keypoints=np.array(keypoints, np.float32).reshape(-1, len(KEYPOINTS), 3))
