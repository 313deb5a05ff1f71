"""The embedded benchmark: the seeded generator's evaluation split, committed as JPEG bytes.

It is stored in the two standard layouts the harness reads anyway (an ImageNet-style class folder, and a
COCO instances json + image folder), so the embedded benchmark goes through the very loaders a user's
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

from harness.data.synthetic import CLASSES, classification_scene, detection_scene
from harness.tasks import CLASSIFY, DETECT

SEED = 2026
ROOT = Path(__file__).parent / "benchmark"
CLASSIFY_DIR = ROOT / CLASSIFY
DETECT_DIR = ROOT / DETECT
EVAL_COUNTS = {CLASSIFY: 1000, DETECT: 120}
INPUT_SIZES = {CLASSIFY: 64, DETECT: 128}


def write_classification(root: Path, count: int) -> None:
    for index in range(count):
        scene = classification_scene(SEED, "eval", index, INPUT_SIZES[CLASSIFY])
        folder = root / CLASSES[scene.labels[0]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.jpg").write_bytes(scene.jpeg)


def write_detection(root: Path, count: int) -> None:
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        scene = detection_scene(SEED, "eval", index, INPUT_SIZES[DETECT])
        name = f"{index:05d}.jpg"
        (images_dir / name).write_bytes(scene.jpeg)
        width, height = Image.open(io.BytesIO(scene.jpeg)).size
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for label, (x0, y0, x1, y1) in zip(scene.labels, scene.boxes.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "instances.json").write_text(json.dumps(payload, indent=None, separators=(",", ":")))


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    write_classification(CLASSIFY_DIR, EVAL_COUNTS[CLASSIFY])
    write_detection(DETECT_DIR, EVAL_COUNTS[DETECT])


if __name__ == "__main__":
    main()
