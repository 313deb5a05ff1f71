"""Datasets: one interface for an ImageNet-style class folder, a COCO detection set, a plain folder of
unlabelled images, and the embedded benchmark (which is stored in the first two layouts).

A Dataset only lists samples and reads their bytes; decoding is a pre-processing stage (a profile
field), so decoders can be varied. A sample that cannot be read is counted by the run, not fatal.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
TASKS = ("classify", "detect", "unlabeled")


@dataclass(frozen=True)
class Sample:
    id: str                                  # path relative to the dataset root: stable across machines
    path: Path
    label: int | None = None                 # classify
    boxes: np.ndarray | None = None          # detect: float32[K, 4] xyxy stored-image pixels
    box_labels: np.ndarray | None = None     # detect: int64[K], 0-based


@dataclass
class Dataset:
    name: str
    task: str                                # classify | detect | unlabeled
    root: Path
    classes: tuple[str, ...]
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, sample: Sample) -> bytes:
        return sample.path.read_bytes()

    def limit(self, count: int | None) -> "Dataset":
        if count is None:
            return self
        return Dataset(self.name, self.task, self.root, self.classes, self.samples[:count])

    def aligned_to(self, labels: tuple[str, ...]) -> "Dataset":
        """The same samples with labels re-indexed into a model's label map, matched by class name.

        A class folder is listed in sorted order and COCO by category id; neither need be the order the
        model was trained with. A model without names keeps the dataset's indices.
        """
        if not labels or not self.classes or tuple(labels) == self.classes:
            return self
        index = {name: k for k, name in enumerate(labels)}
        unknown = [name for name in self.classes if name not in index]
        if unknown:
            raise InputError(f"{self.root}: class(es) {', '.join(unknown[:5])} are not in the model's label map "
                             f"({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})")
        remap = np.array([index[name] for name in self.classes], np.int64)
        samples = [Sample(s.id, s.path, label=None if s.label is None else int(remap[s.label]), boxes=s.boxes,
                          box_labels=None if s.box_labels is None else remap[s.box_labels])
                   for s in self.samples]
        return Dataset(self.name, self.task, self.root, tuple(labels), samples)

    def fingerprint(self) -> str:
        """sha256 over (id, bytes) of every sample: the provenance hash of the data actually used."""
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(sample.id.encode())
            try:
                digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
            except OSError:
                digest.update(b"<unreadable>")
        return digest.hexdigest()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(root: Path, name: str | None = None) -> Dataset:
    """root/<class>/<image>: one sub-folder per class, classes in sorted order (torchvision ImageFolder)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    classes = tuple(p.name for p in class_dirs)
    samples = [Sample(str(path.relative_to(root)), path, label=index)
               for index, folder in enumerate(class_dirs) for path in _images_in(folder)]
    if not samples:
        raise InputError(f"{root}: class folders {', '.join(classes[:5])} hold no images")
    return Dataset(name or root.name, "classify", root, classes, samples)


def load_coco(annotation_file: Path, image_root: Path | None = None, name: str | None = None) -> Dataset:
    """COCO instances json; images in image_root (default: 'images' next to the json, else its folder)."""
    try:
        data = json.loads(annotation_file.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = data["images"]
        annotations = data.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{annotation_file}: not a COCO instances file ({type(err).__name__}: {err})") from None
    if image_root is None:
        image_root = annotation_file.parent / "images"
        if not image_root.is_dir():
            image_root = annotation_file.parent
    category_index = {c["id"]: k for k, c in enumerate(categories)}
    per_image: dict[int, list] = {image["id"]: [] for image in images}
    for ann in annotations:
        if ann.get("iscrowd", 0) or ann["image_id"] not in per_image:
            continue
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append(([x, y, x + w, y + h], category_index[ann["category_id"]]))
    samples = []
    for image in images:
        anns = per_image[image["id"]]
        boxes = np.array([a[0] for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([a[1] for a in anns], np.int64)
        samples.append(Sample(image["file_name"], image_root / image["file_name"], boxes=boxes, box_labels=labels))
    return Dataset(name or annotation_file.parent.name, "detect", annotation_file.parent,
                   tuple(c["name"] for c in categories), samples)


def load_unlabeled(root: Path, name: str | None = None) -> Dataset:
    """A flat folder of images without labels (production traffic): metrics become agreement only."""
    samples = [Sample(path.name, path) for path in _images_in(root)]
    if not samples:
        raise InputError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return Dataset(name or root.name, "unlabeled", root, (), samples)


def load_dataset(path: Path) -> Dataset:
    """Recognises the layout: a COCO json (or a folder holding instances.json), a class folder, or a flat
    folder of unlabelled images."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: dataset not found")
    if path.is_file():
        if path.suffix == ".json":
            return load_coco(path)
        raise InputError(f"{path}: a dataset is a folder or a COCO .json file")
    for candidate in ("instances.json", "annotations.json"):
        if (path / candidate).is_file():
            return load_coco(path / candidate)
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return load_image_folder(path)
    if _images_in(path):
        return load_unlabeled(path)
    raise InputError(f"{path}: neither class sub-folders, a COCO instances.json, nor images")


def embedded_benchmark(task: str) -> Dataset:
    """The committed evaluation split of the seeded generator (harness/data/benchmark.py)."""
    from harness.data.benchmark import CLASSIFY_DIR, DETECT_DIR

    if task == "detect":
        dataset = load_coco(DETECT_DIR / "instances.json", name="embedded-detect")
    else:
        dataset = load_image_folder(CLASSIFY_DIR, name="embedded-classify")
    return dataset
