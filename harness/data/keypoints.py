"""COCO person-keypoint files: the keypoint names, each annotation's keypoints and the dataset of instances a
top-down model is evaluated on (one sample per labelled instance)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.data import Dataset, InputError, Sample, _coco_field, _CocoError, printable
from harness.tasks import KEYPOINTS

# COCO's person keypoint sigmas (pycocotools' defaults): a 17-keypoint file without its own "sigmas"
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                      0.087, 0.087, 0.089, 0.089)


def keypoint_names(categories: list, path: Path) -> tuple[str, ...] | None:
    """A person-keypoints file (one category with a "keypoints" list) -> its keypoint names, else None."""
    if not any("keypoints" in c for c in categories):
        return None
    if len(categories) != 1:
        raise _CocoError(f"{path}: a keypoints file has one category (with its 'keypoints'), found {len(categories)}")
    names = categories[0]["keypoints"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _CocoError(f"{path}: categories[0].keypoints must be a list of keypoint names")
    sigmas = categories[0].get("sigmas", COCO_PERSON_SIGMAS if len(names) == 17 else None)
    if sigmas is None or not isinstance(sigmas, list | tuple) or len(sigmas) != len(names) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in sigmas):
        raise _CocoError(f"{path}: categories[0].sigmas must give one positive OKS sigma per keypoint "
                         f"({len(names)}); only COCO's 17 person keypoints have defaults")
    return tuple(names)


def coco_keypoints(ann: dict, joints: tuple, path: Path, where: str) -> np.ndarray:
    values = _coco_field(ann, "keypoints", list, path, where)
    if len(values) != 3 * len(joints) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and math.isfinite(v) for v in values):
        raise _CocoError(f"{path}: {where}.keypoints must be {3 * len(joints)} finite numbers (x, y, v per "
                         f"keypoint), got {len(values)} values")
    keypoints = np.array(values, np.float32).reshape(-1, 3)
    if not np.isin(keypoints[:, 2], (0, 1, 2)).all():
        raise _CocoError(f"{path}: {where}.keypoints: visibility must be 0, 1 or 2")
    return keypoints


def keypoint_dataset(name: str, path: Path, image_root: Path, images: list, per_image: dict, crowds: dict,
                     category: dict):
    """One sample per labelled instance (a top-down model sees one box at a time): the image's bytes, the
    instance's box and keypoints; its id is `file_name#annotation id`. The dataset's `whole_images` are the other
    view: one sample per image with all its persons (those without a labelled keypoint too: COCO's evaluation
    ignores what matches them) and its crowd regions."""
    sigmas = tuple(float(v) for v in category.get("sigmas", COCO_PERSON_SIGMAS))
    samples, whole_images = [], []
    for image in images:
        people = per_image[image["id"]]
        areas = [float(ann.get("area") or (box[2] - box[0]) * (box[3] - box[1])) for box, _, _, ann in people]
        for (box, _, keypoints, ann), area in zip(people, areas):
            if not (keypoints[:, 2] > 0).any():  # nothing labelled: COCO's evaluation ignores it
                continue
            samples.append(Sample(f"{printable(image['file_name'])}#{ann['id']}", image_root / image["file_name"],
                                  boxes=np.array([box], np.float32), box_labels=np.zeros(1, np.int64),
                                  keypoints=keypoints, image_id=image["id"], sigmas=sigmas, area=area))
        regions = crowds[image["id"]]
        whole_images.append(Sample(
            printable(image["file_name"]), image_root / image["file_name"],
            boxes=np.array([p[0] for p in people], np.float32).reshape(-1, 4),
            box_labels=np.zeros(len(people), np.int64),
            keypoints=np.array([p[2] for p in people], np.float32).reshape(len(people), len(sigmas), 3),
            areas=np.array(areas, np.float32), image_id=image["id"], sigmas=sigmas,
            crowd_boxes=np.array([r[0] for r in regions], np.float32).reshape(-1, 4),
            crowd_labels=np.zeros(len(regions), np.int64)))
    if not samples:
        raise InputError(f"{path}: no annotation with a labelled keypoint")
    return Dataset(name, KEYPOINTS, path.parent, tuple(category["keypoints"]), samples, whole_images=whole_images)
