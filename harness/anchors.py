"""torchvision's anchor generators and box coders for the `anchors` head layout (harness.heads): the anchors and
the decoding are the library's own, run on the declared levels, never re-derived."""
from __future__ import annotations

from functools import lru_cache

from harness.errors import UsageError


def anchor_levels(head: dict, input_size: int) -> tuple[list, object]:
    """(each level's anchors float32[H*W*A, 4] in model-input pixels, the box coder): torchvision's own
    AnchorGenerator (generator "anchors": RetinaNet's) or DefaultBoxGenerator ("default-boxes": SSD's) run
    on feature maps of the declared strides (a level's grid is ceil(S / stride), as stride-2 convolutions
    with padding make it) and its BoxCoder, so the anchors are the library's, not a re-derivation."""
    import json

    return _anchor_levels(json.dumps(head, sort_keys=True), input_size)


@lru_cache(maxsize=16)
def _anchor_levels(head_json: str, input_size: int):
    import json

    import torch
    from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder
    from torchvision.models.detection.image_list import ImageList

    head = json.loads(head_json)
    strides = head["strides"]
    weights = head.get("box_coder_weights", [1.0, 1.0, 1.0, 1.0])
    if len(weights) != 4 or not all(_positive(w) for w in weights):
        raise UsageError(f"anchors head: box_coder_weights = {weights!r}: expected four positive numbers")
    generator = _generator(head, len(strides))
    grids = [-(-input_size // stride) for stride in strides]
    maps = [torch.empty(1, 1, grid, grid) for grid in grids]
    anchors = generator(ImageList(torch.empty(1, 3, input_size, input_size), [(input_size, input_size)]), maps)[0]
    counts = [grid * grid * generator.num_anchors_per_location()[k] for k, grid in enumerate(grids)]
    coder = BoxLinearCoder(normalize_by_size=True) if head.get("box_coder", "deltas") == "linear" else \
        BoxCoder(weights=tuple(float(w) for w in weights))
    return list(anchors.split(counts)), coder


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _generator(head: dict, levels: int):
    """torchvision's anchor generator the head declares, its parameters checked (one line otherwise)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator

    ratios = head.get("aspect_ratios", [0.5, 1.0, 2.0] if head.get("generator") != "default-boxes" else None)
    if ratios is None or not ratios:
        raise UsageError("anchors head: a default-boxes generator needs aspect_ratios (one list per level)")
    ratios = ratios if isinstance(ratios[0], list) else [ratios] * levels
    if head.get("generator", "anchors") == "anchors":
        sizes = head.get("sizes", [])
        if len(sizes) != levels or len(ratios) != levels or not all(
                isinstance(level, list) and level and all(_positive(v) for v in level) for level in sizes + ratios):
            raise UsageError(f"anchors head: {levels} strides need as many `sizes` lists (and `aspect_ratios` "
                             "lists, or one list for every level) of positive numbers")
        return AnchorGenerator(tuple(tuple(level) for level in sizes), tuple(tuple(level) for level in ratios))
    if len(ratios) != levels or not all(all(_positive(v) for v in level) for level in ratios):
        raise UsageError(f"anchors head: {levels} strides need as many aspect_ratios lists of positive numbers")
    try:
        return DefaultBoxGenerator(ratios, min_ratio=head.get("min_ratio", 0.15), max_ratio=head.get("max_ratio", 0.9),
                                   scales=head.get("scales"), steps=head.get("steps"), clip=head.get("clip", True))
    except (ValueError, TypeError) as err:
        raise UsageError(f"anchors head: default boxes: {err}") from None
