"""The embedded benchmark: the seeded generator's evaluation split, committed as JPEG bytes.

It is stored in the standard layouts the harness reads anyway (an ImageNet-style class folder, a COCO
instances json + image folder, images + PNG label maps), so the embedded benchmark goes through the very loaders a user's
data does. The training split is never stored: recipes regenerate it from the seed.

Regenerate (only when the generator changes on purpose; the bytes are the benchmark):
    python -m harness.data.benchmark
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from harness.data.synthetic import (CLASSES, KEYPOINT_SIGMAS, KEYPOINTS as JOINTS, LIMBS, classification_scene,
                                    detection_scene, keypoint_scene, segmentation_scene)
from harness.tasks import CLASSIFY, DETECT, KEYPOINTS, SEGMENT

SEED = 2026
ROOT = Path(__file__).parent / "benchmark"
CLASSIFY_DIR = ROOT / CLASSIFY
DETECT_DIR = ROOT / DETECT
SEGMENT_DIR = ROOT / SEGMENT
KEYPOINTS_DIR = ROOT / KEYPOINTS
EVAL_COUNTS = {CLASSIFY: 1000, DETECT: 120, SEGMENT: 150, KEYPOINTS: 120}
INPUT_SIZES = {CLASSIFY: 64, DETECT: 128, SEGMENT: 64, KEYPOINTS: 64}


def write_classification(root: Path, count: int) -> None:
    for index in range(count):
        scene = classification_scene(SEED, "eval", index, INPUT_SIZES[CLASSIFY])
        folder = root / CLASSES[scene.labels[0]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.jpg").write_bytes(scene.jpeg)


def _coco_image(images_dir: Path, index: int, jpeg: bytes) -> dict:
    """Writes image `index` and returns its COCO images entry (ids from 1)."""
    name = f"{index:05d}.jpg"
    (images_dir / name).write_bytes(jpeg)
    width, height = Image.open(io.BytesIO(jpeg)).size
    return {"id": index + 1, "file_name": name, "width": width, "height": height}


def write_detection(root: Path, count: int) -> None:
    """images/ + instances.json as COCO's: each object's box and its visible pixels as a compressed RLE
    "segmentation" with their count as "area" (so the split serves detection and instance segmentation)."""
    import numpy as np
    from pycocotools import mask as coco_mask

    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        scene = detection_scene(SEED, "eval", index, INPUT_SIZES[DETECT])
        images.append(_coco_image(images_dir, index, scene.jpeg))
        for label, (x0, y0, x1, y1), mask in zip(scene.labels, scene.boxes.tolist(), scene.instance_masks):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "iscrowd": 0,
                "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")},
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "instances.json").write_text(json.dumps(payload, indent=None, separators=(",", ":")))


def write_segmentation(root: Path, count: int) -> None:
    """images/NAME.jpg with masks/NAME.png (mode L, 0 background, k + 1 shape class k) and classes.txt."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = segmentation_scene(SEED, "eval", index, INPUT_SIZES[SEGMENT])
        (root / "images" / f"{index:05d}.jpg").write_bytes(scene.jpeg)
        Image.fromarray(scene.mask, "L").save(root / "masks" / f"{index:05d}.png", optimize=True)
    (root / "classes.txt").write_text("\n".join(("background", *CLASSES)) + "\n")


def write_keypoints(root: Path, count: int) -> None:
    """images/ + keypoints.json in COCO's person-keypoints layout: one category with its keypoint names,
    skeleton and (an addition COCO files lack) the per-keypoint OKS sigmas."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        scene = keypoint_scene(SEED, "eval", index, INPUT_SIZES[KEYPOINTS])
        images.append(_coco_image(images_dir, index, scene.jpeg))
        for (x0, y0, x1, y1), points in zip(scene.boxes.tolist(), scene.keypoints):
            flat = [round(float(v), 2) for v in points.ravel()]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                "keypoints": flat, "num_keypoints": int((points[:, 2] > 0).sum())})
    category = {"id": 1, "name": "figure", "keypoints": list(JOINTS), "skeleton": [[a + 1, b + 1] for a, b in LIMBS],
                "sigmas": list(KEYPOINT_SIGMAS)}
    payload = {"images": images, "annotations": annotations, "categories": [category]}
    (root / "keypoints.json").write_text(json.dumps(payload, indent=None, separators=(",", ":")))


WRITERS = {CLASSIFY: (write_classification, CLASSIFY_DIR), DETECT: (write_detection, DETECT_DIR),
           SEGMENT: (write_segmentation, SEGMENT_DIR), KEYPOINTS: (write_keypoints, KEYPOINTS_DIR)}


def main(tasks: tuple[str, ...] = tuple(WRITERS)) -> None:
    """Writes the splits of `tasks` afresh (`python -m harness.data.benchmark segment` writes one)."""
    for task in tasks:
        write, root = WRITERS[task]
        shutil.rmtree(root, ignore_errors=True)
        write(root, EVAL_COUNTS[task])


if __name__ == "__main__":
    import sys

    main(tuple(sys.argv[1:]) or tuple(WRITERS))
