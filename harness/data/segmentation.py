"""Semantic segmentation sets: images with a PNG label map each (VOC, ADE20K, Cityscapes label ids) and the
class list."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data import Dataset, InputError, Sample, _images_in, printable
from harness.tasks import SEGMENT

SEGMENTATION_LAYOUT = "root/images/NAME.jpg, root/masks/NAME.png (one class index per pixel), root/classes.txt"


def load_segmentation(root: Path, name: str | None = None) -> Dataset:
    """A semantic segmentation set: images/ with a PNG label map of the same name in masks/ (VOC, ADE20K,
    Cityscapes label ids: mode L or P, value = class index, 255 ignored) and classes.txt, one name a line,
    in index order. An image without its label map is listed in `skipped`."""
    from harness.files import read_text

    classes = tuple(line.strip() for line in read_text(root / "classes.txt", "class list").splitlines()
                    if line.strip())
    if not classes:
        raise InputError(f"{root / 'classes.txt'}: no class names (one a line, in label-map index order)")
    skipped: list[dict] = []
    samples = []
    for path in _images_in(root / "images", skipped):
        mask = root / "masks" / f"{path.stem}.png"
        if not mask.is_file():
            skipped.append({"path": printable(path), "reason": f"no label map {printable(mask.name)} in masks/"})
            continue
        samples.append(Sample(printable(path.relative_to(root)), path, mask=mask))
    if not samples:
        raise InputError(f"{root}: no image with its label map (expected {SEGMENTATION_LAYOUT})")
    return Dataset(name or root.name, SEGMENT, root, classes, samples, skipped)


def read_label_map(sample: Sample, num_classes: int) -> np.ndarray:
    """The sample's label map as uint8/uint16[H, W]; InputError naming the file when it is not one (an
    RGB colour-coded map, a value that is no class)."""
    from PIL import Image

    from harness.preprocess import IGNORE_LABEL

    try:
        with Image.open(sample.mask) as image:
            if image.mode not in ("L", "P", "I;16", "I"):
                raise InputError(f"{sample.mask}: label map in mode {image.mode}; expected one class index per "
                                 "pixel (mode L or P, as VOC and ADE20K store them), not colours")
            labels = np.asarray(image)
    except OSError as err:
        raise InputError(f"{sample.mask}: not a readable label map ({err})") from None
    wrong = labels[(labels >= num_classes) & (labels != IGNORE_LABEL)]
    if wrong.size:
        raise InputError(f"{sample.mask}: value {int(wrong[0])} is no class (classes 0-{num_classes - 1}, "
                         f"{IGNORE_LABEL} ignored)")
    return labels
