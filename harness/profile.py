"""Profile: the full system description of one side of a comparison (DESIGN.md, "The nouns").

A profile is flat on purpose: a SysNoise sweep varies exactly one field at a time, and every stage is a
pure function of its own fields (STAGE_FIELDS), which is what the stage caches key on.
Profiles are parsed here, at the edge (TOML or flags), and are frozen dataclasses everywhere else.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InputError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GEOMETRIES = ("shorter-crop", "letterbox", "squash")


@dataclass(frozen=True)
class Profile:
    # pre-processing
    decoder: str = "pil"
    resize: str = "pil-bilinear"
    color: str = "rgb"
    geometry: str = "shorter-crop"
    input_size: int = 224
    resize_size: int | None = None  # shorter-crop: shorter side before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # model inference
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    # post-processing (detection)
    nms: str = "torchvision-batched"
    box_decode: str = "clip"
    score_threshold: float = 0.05
    iou_threshold: float = 0.6
    max_detections: int = 100
    labels: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise UsageError(f"profile geometry {self.geometry!r} is not one of {', '.join(GEOMETRIES)}")
        if self.input_size <= 0:
            raise UsageError(f"profile input_size must be positive, got {self.input_size}")

    @property
    def crop_resize_size(self) -> int:
        """Shorter side before the centre crop; defaults to the ImageNet ratio 224/256."""
        return self.resize_size or int(round(self.input_size / 0.875))

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)

    def stage_key(self, stage: str) -> tuple:
        return tuple(getattr(self, name) for name in STAGE_FIELDS[stage])

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data


STAGE_FIELDS = {
    "pre": ("decoder", "resize", "color", "geometry", "input_size", "resize_size", "mean", "std"),
    "model": ("backend", "device", "precision"),
    "post": ("nms", "box_decode", "score_threshold", "iou_threshold", "max_detections"),
}
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Profile))


def profile_from_mapping(data: dict, base: Profile, source: str) -> Profile:
    """Overlays `data` (flat or in [pre]/[model]/[post] tables) on `base`; `source` names it in errors."""
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in STAGE_FIELDS:
            flat.update(value)
        else:
            flat[key] = value
    changes = {}
    types = {f.name: f.type for f in dataclasses.fields(Profile)}
    for key, value in flat.items():
        if key not in types:
            raise UsageError(f"{source}: unknown profile key {key!r}; known: {', '.join(FIELD_NAMES)}")
        if key in ("mean", "std", "labels"):
            value = tuple(value)
        if key in ("mean", "std") and (len(value) != 3 or not all(isinstance(v, (int, float)) for v in value)):
            raise UsageError(f"{source}: {key} must be three numbers, got {list(value)}")
        changes[key] = value
    return base.replace(**changes)


def load_profile(path: Path, base: Profile) -> Profile:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: profile file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    return profile_from_mapping(data.get("profile", data), base, str(path))
