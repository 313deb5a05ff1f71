"""Datasets: one interface for an ImageNet-style class folder, a COCO detection set, a segmentation set
(images/, masks/ of PNG label maps, classes.txt), a plain folder of unlabelled images, and the embedded
benchmark (which is stored in these layouts).

A Dataset only lists samples and reads their bytes; decoding is a pre-processing stage (a profile
field), so decoders can be varied. A sample that cannot be read is counted by the run, not fatal.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import InputError
from harness.tasks import CLASSIFY, DETECT, INSTANCES, KEYPOINTS, SEGMENT
from harness.data.text import load_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNLABELED = "unlabeled"  # a folder of images without labels: metrics become agreement with the reference
TASKS = (CLASSIFY, DETECT, SEGMENT, KEYPOINTS, INSTANCES, UNLABELED)


def printable(text) -> str:
    """A file name as text every report, hash, terminal and database can hold: a byte that is not UTF-8
    (Python keeps it as a lone surrogate) is written as \\xNN. Sample ids and reported paths use it."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Sample:
    id: str                                  # path relative to the dataset root: stable across machines
    path: Path
    label: int | None = None                 # classify
    boxes: np.ndarray | None = None          # detect: float32[K, 4] xyxy stored-image pixels
    box_labels: np.ndarray | None = None     # detect: int64[K], 0-based
    mask: Path | None = None                 # segment: PNG label map, one class index per pixel (255: ignored)
    keypoints: np.ndarray | None = None      # keypoints: float32[J, 3] x, y, visibility of this instance
    image_id: int | None = None              # keypoints: the image this instance is in (COCO's image id)
    sigmas: tuple | None = None              # keypoints: the dataset's per-keypoint OKS sigmas
    area: float | None = None                # keypoints: the instance's area (COCO's "area": the OKS scale)
    # keypoint-detect (a whole image, every person in it): keypoints float32[P, J, 3] and each person's area
    areas: np.ndarray | None = None
    instance_masks: tuple | None = None      # instances: per box, its mask as a COCO RLE dict (harness.data.instances)
    crowd_boxes: np.ndarray | None = None    # detect, instances: float32[C, 4] xyxy of COCO crowd regions (iscrowd=1),
    crowd_labels: np.ndarray | None = None   # int64[C]: evaluation ignores the detections they match
    crowd_masks: tuple | None = None         # instances: per crowd region, its mask as a COCO RLE dict
    text: str | None = None                  # text tasks: the sample itself (its path is the file it came from)


@dataclass
class Dataset:
    name: str
    task: str                                # classify | detect | unlabeled
    root: Path
    classes: tuple[str, ...]
    samples: list[Sample] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # files seen and not used: {"path", "reason"}
    # a keypoints file's other view: one sample per image with every person in it (what a model that finds the
    # people itself, Keypoint R-CNN, is evaluated on; harness.tasks.keypoint_detect)
    whole_images: list[Sample] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, sample: Sample) -> bytes:
        return sample.path.read_bytes() if sample.text is None else sample.text.encode("utf-8")

    def limit(self, count: int | None) -> "Dataset":
        if count is None:
            return self
        return Dataset(self.name, self.task, self.root, self.classes, self.samples[:count], self.skipped)

    def aligned_to(self, labels: tuple[str, ...]) -> "Dataset":
        """The same samples with labels re-indexed into a model's label map, matched by class name.

        A class folder is listed in sorted order and COCO by category id; neither need be the order the
        model was trained with. A model without names keeps the dataset's indices.
        """
        if not labels or not self.classes or tuple(labels) == self.classes:
            return self
        if self.task in (SEGMENT, KEYPOINTS):  # label-map values and keypoint rows are positions: never re-indexed
            where = "classes.txt" if self.task == SEGMENT else "the category's keypoints"
            raise InputError(f"{self.root}: {where} ({', '.join(self.classes[:10])}) does not list the model's "
                             f"in its order ({', '.join(labels[:10])})")
        index = {name: k for k, name in enumerate(labels)}
        if all(name not in index for name in self.classes) and imagenet_labels(labels):
            index = {synset: k for k, synset in enumerate(imagenet_synsets())}  # folders named n01440764, ...
        unknown = [name for name in self.classes if name not in index]
        if unknown:
            listed = ", ".join(unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            raise InputError(f"{self.root}: {len(unknown)} of its {len(self.classes)} class folders are not in the "
                             f"model's label map: {listed} (the model's: {', '.join(labels[:10])}"
                             f"{', ...' if len(labels) > 10 else ''})")
        remap = np.array([index[name] for name in self.classes], np.int64)
        samples = [dataclasses.replace(s, label=None if s.label is None else int(remap[s.label]),
                                       box_labels=None if s.box_labels is None else remap[s.box_labels])
                   for s in self.samples]
        return Dataset(self.name, self.task, self.root, tuple(labels), samples, self.skipped)

    def fingerprint(self) -> str:
        """sha256 over (id, bytes) of every sample: the provenance hash of the data actually used."""
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(sample.id.encode())
            try:
                digest.update(hashlib.sha256(self.read(sample)).digest())
            except OSError:
                digest.update(b"<unreadable>")
        return digest.hexdigest()


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The ImageNet-1k WordNet ids in class-index order (imagenet_synsets.txt says its source)."""
    text = (Path(__file__).with_name("imagenet_synsets.txt")).read_text()
    return tuple(line for line in text.split() if line.startswith("n"))


def imagenet_labels(labels) -> bool:
    """Whether a label map is torchvision's ImageNet-1k categories, in class-index order: a dataset laid out
    as the real ImageNet validation set (a folder per WordNet id) then maps onto it."""
    from torchvision.models import ResNet18_Weights

    return tuple(labels) == tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _images_in(folder: Path, skipped: list[dict]) -> list[Path]:
    """The image files of `folder`, sorted; every other entry that is not a folder goes to `skipped` with
    its reason (an unknown suffix, a broken or looping link), so no file is passed over without a word."""
    images = []
    for path in sorted(folder.iterdir()):
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as err:  # a symlink loop: ELOOP
            skipped.append({"path": printable(path), "reason": f"cannot be followed ({err.strerror or err})"})
            continue
        if is_dir:
            continue
        if not is_file:
            reason = "a broken or looping link" if path.is_symlink() else "not a regular file"
            skipped.append({"path": printable(path), "reason": reason})
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"path": printable(path), "reason": f"suffix {path.suffix or '(none)'!r} is not an image "
                                                         f"suffix ({', '.join(sorted(IMAGE_SUFFIXES))})"})
        else:
            images.append(path)
    return images


def load_image_folder(root: Path, name: str | None = None) -> Dataset:
    """root/<class>/<image>: one sub-folder per class, classes in sorted order (torchvision ImageFolder)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    classes = tuple(p.name for p in class_dirs)
    skipped: list[dict] = []
    samples = [Sample(printable(path.relative_to(root)), path, label=index)
               for index, folder in enumerate(class_dirs) for path in _images_in(folder, skipped)]
    _images_in(root, skipped)  # files beside the class folders are not samples either
    if not samples:
        raise InputError(f"{root}: class folders {', '.join(classes[:5])} hold no images")
    return Dataset(name or root.name, CLASSIFY, root, classes, samples, skipped)


class _CocoError(InputError):
    pass


def _coco_list(data: dict, key: str, path: Path, required: bool = True) -> list:
    value = data.get(key, None if required else [])
    if value is None:
        raise _CocoError(f"{path}: no {key!r} list (a COCO instances file has images, annotations, categories)")
    if not isinstance(value, list):
        raise _CocoError(f"{path}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _coco_field(entry, key: str, kind, path: Path, where: str):
    if not isinstance(entry, dict):
        raise _CocoError(f"{path}: {where} must be an object, got {type(entry).__name__}")
    if key not in entry:
        raise _CocoError(f"{path}: {where} has no {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _CocoError(f"{path}: {where}.{key} must be {names}, got {type(value).__name__} {value!r}"[:300])
    return value


def _coco_box(ann: dict, image: dict, path: Path, where: str) -> list[float]:
    box = _coco_field(ann, "bbox", list, path, where)
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise _CocoError(f"{path}: {where}.bbox must be four numbers [x, y, width, height], got {box!r}"[:300])
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise _CocoError(f"{path}: {where}.bbox {box!r} holds a value that is not finite")
    if w < 0 or h < 0:
        raise _CocoError(f"{path}: {where}.bbox {box!r} has a negative width or height")
    width, height = image.get("width"), image.get("height")
    limit_x = 2 * width if isinstance(width, (int, float)) and width > 0 else MAX_COCO_COORDINATE
    limit_y = 2 * height if isinstance(height, (int, float)) and height > 0 else MAX_COCO_COORDINATE
    if not (-limit_x <= x and x + w <= limit_x and -limit_y <= y and y + h <= limit_y):
        raise _CocoError(f"{path}: {where}.bbox {box!r} lies far outside its image "
                         f"({width if width else '?'}x{height if height else '?'})")
    return [x, y, x + w, y + h]


MAX_COCO_COORDINATE = 100_000  # pixels, for images whose size the file does not state


def _coco_categories(categories: list, path: Path) -> list:
    """The categories, each with an int id (once) and a str name, in id order (as COCO tools number them)."""
    seen: set[int] = set()
    for k, category in enumerate(categories):
        where = f"categories[{k}]"
        category_id = _coco_field(category, "id", int, path, where)
        _coco_field(category, "name", str, path, where)
        if category_id in seen:
            raise InputError(f"{path}: {where}: category id {category_id} appears twice")
        seen.add(category_id)
    return sorted(categories, key=lambda c: c["id"])


def load_coco(annotation_file: Path, image_root: Path | None = None, name: str | None = None) -> Dataset:
    """COCO instances json; images in image_root (default: 'images' next to the json, else its folder).

    Every field the harness uses is checked before any work (one line naming the file, the entry and the
    problem): ids, names, boxes (finite, non-negative size, near their image), references between
    them, and file names that stay inside the image folder."""
    import json

    from harness.files import read_text

    try:
        data = json.loads(read_text(annotation_file, "COCO instances file"))
    except ValueError as err:
        raise InputError(f"{annotation_file}: not a COCO instances file (invalid JSON: {err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{annotation_file}: not a COCO instances file (a JSON object with images, "
                         f"annotations, categories), got {type(data).__name__}")
    images, categories = _coco_list(data, "images", annotation_file), _coco_list(data, "categories", annotation_file)
    annotations = _coco_list(data, "annotations", annotation_file, required=False)
    if not images:
        raise InputError(f"{annotation_file}: the 'images' list is empty")
    if not categories:
        raise InputError(f"{annotation_file}: the 'categories' list is empty")
    if image_root is None:
        image_root = annotation_file.parent / "images"
        if not image_root.is_dir():
            image_root = annotation_file.parent
    from harness.data.instances import coco_segmentation, is_instance_set
    from harness.data.keypoints import coco_keypoints, keypoint_dataset, keypoint_names

    categories = _coco_categories(categories, annotation_file)
    joints = keypoint_names(categories, annotation_file)
    category_index = {category["id"]: k for k, category in enumerate(categories)}
    by_id: dict[int, dict] = {}
    names: set[str] = set()
    root = image_root.resolve()
    for k, image in enumerate(images):
        where = f"images[{k}]"
        image_id = _coco_field(image, "id", int, annotation_file, where)
        file_name = _coco_field(image, "file_name", str, annotation_file, where)
        if image_id in by_id:
            raise InputError(f"{annotation_file}: {where}: image id {image_id} appears twice")
        if file_name in names:
            raise InputError(f"{annotation_file}: {where}: file_name {file_name!r} appears twice")
        if not file_name or os.path.isabs(file_name) or \
                not (root / file_name).resolve().is_relative_to(root):
            raise InputError(f"{annotation_file}: {where}: file_name {file_name!r} points outside the image folder "
                             f"{image_root}")
        by_id[image_id] = image
        names.add(file_name)
    per_image: dict[int, list] = {image_id: [] for image_id in by_id}
    crowds: dict[int, list] = {image_id: [] for image_id in by_id}
    segmented = not joints and is_instance_set(annotations)
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        _coco_field(ann, "id", int, annotation_file, where)
        image_id = _coco_field(ann, "image_id", int, annotation_file, where)
        category_id = _coco_field(ann, "category_id", int, annotation_file, where)
        if image_id not in by_id:
            raise InputError(f"{annotation_file}: {where}: image_id {image_id} is not in 'images'")
        if category_id not in category_index:
            raise InputError(f"{annotation_file}: {where}: category_id {category_id} is not in 'categories'")
        box = _coco_box(ann, by_id[image_id], annotation_file, where)
        crowd = bool(ann.get("iscrowd", 0))
        # a crowd region of a keypoints file has no keypoints to score (COCO's are all zero): its box is ignored
        keypoints = coco_keypoints(ann, joints, annotation_file, where) if joints and not crowd else None
        mask = coco_segmentation(ann, by_id[image_id], annotation_file, where) if segmented else None
        (crowds if crowd else per_image)[image_id].append((box, category_index[category_id],
                                                           keypoints if joints else mask, ann))
    if joints:
        return keypoint_dataset(name or annotation_file.parent.name, annotation_file, image_root, images, per_image,
                                crowds, categories[0])
    samples = [_coco_sample(image, image_root, per_image[image["id"]], crowds[image["id"]], segmented)
               for image in images]
    return Dataset(name or annotation_file.parent.name, INSTANCES if segmented else DETECT, annotation_file.parent,
                   tuple(c["name"] for c in categories), samples)


def _coco_sample(image: dict, image_root: Path, objects: list, crowds: list, segmented: bool) -> Sample:
    """A detection or instance sample: its objects' and crowd regions' (box, label, mask, annotation)."""
    return Sample(printable(image["file_name"]), image_root / image["file_name"],
                  boxes=np.array([a[0] for a in objects], np.float32).reshape(-1, 4),
                  box_labels=np.array([a[1] for a in objects], np.int64),
                  instance_masks=tuple(a[2] for a in objects) if segmented else None,
                  crowd_boxes=np.array([a[0] for a in crowds], np.float32).reshape(-1, 4),
                  crowd_labels=np.array([a[1] for a in crowds], np.int64),
                  crowd_masks=tuple(a[2] for a in crowds) if segmented else None)


def load_unlabeled(root: Path, name: str | None = None) -> Dataset:
    """A flat folder of images without labels (production traffic): metrics become agreement only."""
    skipped: list[dict] = []
    samples = [Sample(printable(path.name), path) for path in _images_in(root, skipped)]
    if not samples:
        raise InputError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return Dataset(name or root.name, UNLABELED, root, (), samples, skipped)


def load_dataset(path: Path) -> Dataset:
    """Recognises the layout: a COCO json (or a folder holding instances.json), a class folder, a flat
    folder of unlabelled images, or texts in JSON lines (.jsonl)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: dataset not found")
    if path.is_file() and path.suffix in (".json", ".jsonl"):  # COCO, or text in JSON lines (harness.data.text)
        return load_coco(path) if path.suffix == ".json" else load_text(path)
    if not path.is_dir():
        raise InputError(f"{path}: a dataset is a folder or a COCO .json file")
    for candidate in ("instances.json", "annotations.json", "keypoints.json"):
        if (path / candidate).is_file():
            return load_coco(path / candidate)
    from harness.data.segmentation import SEGMENTATION_LAYOUT, load_segmentation

    if (path / "masks").is_dir() and (path / "images").is_dir():
        return load_segmentation(path)
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return load_image_folder(path)
    if _images_in(path, []):
        return load_unlabeled(path)
    raise InputError(f"{path}: neither class sub-folders, a COCO instances.json, a segmentation set "
                     f"({SEGMENTATION_LAYOUT}), nor images")


def embedded_benchmark(task: str) -> Dataset:
    """The committed evaluation split of the seeded generator (harness/data/benchmark.py)."""
    from harness.tasks import get_task

    return get_task(task).benchmark()


def evaluation_data(task: str, loaded: Dataset | None, limit: int | None) -> Dataset:
    """What a model of `task` is evaluated on: the user's dataset (`loaded`), else the task's embedded benchmark,
    as the task sees its samples (a keypoints file's persons, or its whole images), its first `limit`."""
    from harness.tasks import get_task

    return get_task(task).view(loaded if loaded is not None else embedded_benchmark(task)).limit(limit)
