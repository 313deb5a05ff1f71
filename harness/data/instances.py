"""COCO instance segmentation: each annotation's "segmentation" (polygons, uncompressed or compressed RLE),
checked and turned into pycocotools' compressed RLE at its image's size, the form COCO's `segm` evaluation
reads."""
from __future__ import annotations

import math
from pathlib import Path

from harness.data import _CocoError

MAX_POLYGON_POINTS = 100_000


def is_instance_set(annotations: list) -> bool:
    """An instance segmentation set: every annotation that counts (not a crowd) carries a non-empty
    "segmentation". Box-only files, and converters that write "segmentation": [], are detection sets."""
    counted = [a for a in annotations if isinstance(a, dict) and not a.get("iscrowd", 0)]
    return bool(counted) and all(a.get("segmentation") for a in counted)


def compressed_counts_total(counts: bytes) -> int | None:
    """The pixel total of a COCO compressed RLE string (pycocotools' rleFrString, read in Python), or None
    when the string is malformed. pycocotools' C decoder trusts the string and writes past the mask when the
    runs overrun it, so a file's RLE is summed here before pycocotools ever sees it."""
    total, position, runs = 0, 0, []
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            c = counts[position] - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        total += value
    return total


def coco_segmentation(ann: dict, image: dict, path: Path, where: str) -> dict:
    """An annotation's segmentation as a compressed RLE dict ({"size": [H, W], "counts": bytes}) at its
    image's size; one line naming the file, the annotation and the problem otherwise."""
    from pycocotools import mask as coco_mask

    height, width = image.get("height"), image.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise _CocoError(f"{path}: {where}: a segmentation needs its image's integer 'width' and 'height'")
    if "segmentation" not in ann:  # a crowd region in a segmented set (the others were checked to have one)
        raise _CocoError(f"{path}: {where} has no 'segmentation' (every annotation of an instance set needs its mask)")
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        polygons = segmentation
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and len(p) <= 2 * MAX_POLYGON_POINTS
                   and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
                   for p in polygons):
            raise _CocoError(f"{path}: {where}.segmentation: polygons must be lists of at least 3 finite x, y pairs")
        return coco_mask.merge(coco_mask.frPyObjects([[float(v) for v in p] for p in polygons], height, width))
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise _CocoError(f"{path}: {where}.segmentation must be a list of polygons or an RLE with size and counts")
    if segmentation["size"] != [height, width]:
        raise _CocoError(f"{path}: {where}.segmentation: RLE size {segmentation['size']!r} is not its image's "
                         f"[height, width] [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts) or \
                sum(counts) != height * width:
            raise _CocoError(f"{path}: {where}.segmentation: RLE counts must be non-negative integers summing to "
                             f"{height} x {width} pixels")
        return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if not isinstance(counts, str) or compressed_counts_total(counts.encode("ascii", "replace")) != height * width:
        raise _CocoError(f"{path}: {where}.segmentation: compressed RLE counts are malformed or do not cover "
                         f"{height} x {width} pixels")
    return {"size": [height, width], "counts": counts.encode("ascii")}
