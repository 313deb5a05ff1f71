"""Profile: the full system description of one side of a comparison (DESIGN.md, "The nouns").

A profile is flat on purpose: a SysNoise sweep varies exactly one field at a time, and every stage is a
pure function of its own fields (STAGE_FIELDS), which is what the stage caches key on.
Profiles are parsed here, at the edge (TOML or flags), and are frozen dataclasses everywhere else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# shorter-crop: the harness's own rounding (nearest pixel); torchvision-crop: torchvision's Resize(int) +
# CenterCrop exactly (the long side truncated, the crop offset rounded), the reference of its models
# topdown: the affine crop of one instance's box (keypoint models: the box padded by box_padding, made
# square, warped to the input by crop_convention)
# torchvision-detect: torchvision's detectors' GeneralizedRCNNTransform (normalise, resize the float tensor, pad)
GEOMETRIES = ("shorter-crop", "torchvision-crop", "torchvision-resize", "torchvision-detect", "letterbox", "squash",
              "topdown")
NORMALISING_GEOMETRIES = ("torchvision-detect",)  # their pixels come out normalised (float32)
# topdown crops: "legacy" maps the padded box's edges onto the input's (scale S / box, as mmpose's
# TopdownAffine and RTMPose); "udp" maps them onto the first and last pixel centres (scale (S - 1) / box, the
# unbiased data processing of Huang et al.)
CROP_CONVENTIONS = ("legacy", "udp")
# where the deployed system receives the image in `color`: "decode" at the stored resolution, before the
# resize (a camera ISP, a video decoder: the usual case); "model-input" after the resize (an NPU converting
# its input tensor)
COLOR_PLACEMENTS = ("decode", "model-input")


@dataclass(frozen=True)
class Profile:
    # pre-processing
    decoder: str = "pil"
    resize: str = "pil-bilinear"
    color: str = "rgb"
    color_at: str = "decode"
    geometry: str = "shorter-crop"
    input_size: int = 224
    resize_size: int | None = None  # shorter-crop, torchvision-crop: shorter side before the centre crop;
    # squash: both sides before the centre crop (default: input_size, no crop)
    crop_convention: str = "legacy"  # topdown
    box_padding: float = 1.25       # topdown: the box's side is scaled by this before the crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # pre-processing (text: harness.tokenization): the tokeniser implementation, a Unicode normal form applied
    # first, its own case and accent folding (None: the tokeniser folder's config), truncation and padding
    tokenizer: str = "fast"
    unicode: str = "none"
    lowercase: bool | None = None
    strip_accents: bool | None = None
    max_length: int = 64
    truncation_side: str = "right"
    padding_side: str = "right"
    padding: str = "longest"
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
    points: str | None = None  # detection point placement (postprocess.POINT_PLACEMENTS); None: the head's
    # post-processing (segmentation): logits to a class map at the label's resolution (postprocess.MASK_RESIZES)
    mask_resize: str = "logits-bilinear"
    # post-processing (instance segmentation): an instance's mask probabilities pasted onto the stored image
    # (harness.masks.MASK_PASTES), then thresholded
    mask_paste: str = "bilinear"
    mask_threshold: float = 0.5
    # post-processing (keypoints): SimCC bins to coordinates (postprocess.KEYPOINT_DECODES)
    keypoint_decode: str = "simcc-argmax"
    labels: tuple[str, ...] = field(default=(), compare=False)
    task: str | None = field(default=None, compare=False)  # a harness.tasks name: what the model is (a file's)
    head: dict = field(default_factory=dict, compare=False)  # a detector's head layout ([head]: harness.heads)
    inputs: dict = field(default_factory=dict, compare=False)  # an .onnx file's [inputs] (harness.onnx_inputs)

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise UsageError(f"profile geometry {self.geometry!r} is not one of {', '.join(GEOMETRIES)}")
        if self.color_at not in COLOR_PLACEMENTS:
            raise UsageError(f"profile color_at {self.color_at!r} is not one of {', '.join(COLOR_PLACEMENTS)}")
        if self.crop_convention not in CROP_CONVENTIONS:
            raise UsageError(f"profile crop_convention {self.crop_convention!r} is not one of "
                             f"{', '.join(CROP_CONVENTIONS)}")
        if self.geometry in NORMALISING_GEOMETRIES and self.color_at == "model-input":
            raise UsageError(f"profile color_at \"model-input\": geometry {self.geometry!r} hands the model normalised "
                             "floats, not an image a colour conversion could act on; convert at decode")
        if self.input_size <= 0:
            raise UsageError(f"profile input_size must be positive, got {self.input_size}")
        if self.geometry == "squash" and self.resize_size is not None and self.resize_size < self.input_size:
            raise UsageError(f"profile resize_size {self.resize_size}: a squash geometry crops its input_size "
                             f"({self.input_size}) from the squashed image, so it takes at least that")

    @property
    def crop_resize_size(self) -> int:
        """Shorter side before the centre crop; defaults to the ImageNet ratio 224/256."""
        return self.resize_size or int(round(self.input_size / 0.875))

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)

    @property
    def placement(self):
        """Where this profile's model runs (its model-stage fields as one value)."""
        from harness.placement import Placement

        return Placement(self.backend, self.device, self.precision)

    def stage_key(self, stage: str) -> tuple:
        return tuple(getattr(self, name) for name in STAGE_FIELDS[stage])

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data


STAGE_FIELDS = {
    "pre": ("decoder", "resize", "color", "color_at", "geometry", "input_size", "resize_size", "crop_convention",
            "box_padding", "mean", "std", "tokenizer", "unicode", "lowercase", "strip_accents", "max_length",
            "truncation_side", "padding_side", "padding"),
    "model": ("backend", "device", "precision"),
    "post": ("nms", "box_decode", "score_threshold", "iou_threshold", "max_detections", "points", "mask_resize",
             "mask_paste", "mask_threshold", "keypoint_decode"),
}
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Profile))
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Profile)}


class FieldError(UsageError):
    """One profile field's value is wrong: `key` and the problem, placed in a file by the caller."""

    def __init__(self, key: str, problem: str, names_key: bool = False):
        super().__init__(problem if names_key else f"{key}: {problem}")
        self.key, self.problem = key, problem

    def located(self, source: str) -> str:
        return f"{source}: {self}"


# the stage registries a field's value is a name in (package.module:function: user code, see plugins.py)
REGISTRY_FIELDS = {"decoder": ("preprocess", "DECODERS"), "resize": ("preprocess", "RESIZERS"),
                   "color": ("preprocess", "COLORS"), "nms": ("postprocess", "NMS")}
MAX_INPUT_SIZE = 8192
# the text fields naming one of a fixed set (harness.tokenization's tuple of that name)
TEXT_CHOICES = {"tokenizer": "IMPLEMENTATIONS", "unicode": "UNICODE_FORMS", "truncation_side": "SIDES",
                "padding_side": "SIDES", "padding": "PADDINGS"}


def _registry(key: str) -> dict:
    import importlib

    module, name = REGISTRY_FIELDS[key]
    return getattr(importlib.import_module(f"harness.{module}"), name)


def _number(key: str, value, kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False):
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise FieldError(key, f"expected {'an integer' if kind is int else 'a number'}, got "
                              f"{type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise FieldError(key, f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise FieldError(key, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise FieldError(key, f"must be <= {high}, got {value!r}")
    return value


def checked_field(key: str, value, allow_code: bool = False):
    """A profile field's value from a file or a flag, type- and range-checked (FieldError otherwise).

    A registry field naming `package.module:function` is imported only with `allow_code` (the user passed
    --allow-code for this file); without it the file is refused, so a file never runs code by itself."""
    from harness.plugins import is_code_reference, load_user_function

    if key not in FIELD_TYPES:
        raise FieldError(key, f"unknown profile key {key!r}; known: {', '.join(FIELD_NAMES)}", names_key=True)
    if key in ("mean", "std"):
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise FieldError(key, f"must be three numbers, got {value!r}")
        low = 0.0 if key == "std" else None  # a zero std divides by zero
        return tuple(float(_number(key, v, float, low, low_open=True)) for v in value)
    if key in MODEL_FACT_FIELDS:
        return _model_fact(key, value)
    if key in ("input_size", "max_detections"):
        return _number(key, value, int, 1, MAX_INPUT_SIZE if key == "input_size" else 100000)
    if key in ("lowercase", "strip_accents"):
        if value is not None and not isinstance(value, bool):
            raise FieldError(key, f"expected true or false, got {type(value).__name__} {value!r}")
        return value
    if key == "max_length":
        return _number(key, value, int, 2, MAX_INPUT_SIZE)
    if key == "resize_size":
        return None if value is None else _number(key, value, int, 1, MAX_INPUT_SIZE)
    if key in ("score_threshold", "iou_threshold", "mask_threshold"):
        return float(_number(key, value, float, 0.0, 1.0))
    if key == "box_padding":
        return float(_number(key, value, float, 0.0, 10.0, low_open=True))
    if not isinstance(value, str) or not value:
        raise FieldError(key, f"expected a name (string), got {type(value).__name__} {value!r}")
    if key in REGISTRY_FIELDS:
        registry = _registry(key)
        if is_code_reference(value):
            if not allow_code:
                raise FieldError(key, f"{value!r} names code to import; a file runs no code unless you pass "
                                      "--allow-code (README, Trust)")
            load_user_function(registry, key, value)
        elif value not in registry:
            known = [k for k in registry if not is_code_reference(k)]
            raise FieldError(key, f"{value!r} is not one of {', '.join(known)} (or package.module:function)")
    elif key == "geometry" and value not in GEOMETRIES:
        raise FieldError(key, f"{value!r} is not one of {', '.join(GEOMETRIES)}")
    elif key == "crop_convention" and value not in CROP_CONVENTIONS:
        raise FieldError(key, f"{value!r} is not one of {', '.join(CROP_CONVENTIONS)}")
    elif key == "color_at" and value not in COLOR_PLACEMENTS:
        raise FieldError(key, f"{value!r} is not one of {', '.join(COLOR_PLACEMENTS)}")
    elif key == "precision":
        from harness.backends import PRECISIONS

        if value not in PRECISIONS:
            raise FieldError(key, f"{value!r} is not one of {', '.join(PRECISIONS)}")
    elif key in TEXT_CHOICES:
        from harness import tokenization

        allowed = getattr(tokenization, TEXT_CHOICES[key])
        if value not in allowed:
            raise FieldError(key, f"{value!r} is not one of {', '.join(allowed)}")
    elif key == "box_decode":
        from harness.postprocess import BOX_DECODES

        if value not in BOX_DECODES:
            raise FieldError(key, f"{value!r} is not one of {', '.join(BOX_DECODES)}")
    elif key == "points":
        from harness.postprocess import POINT_PLACEMENTS

        if value not in POINT_PLACEMENTS:
            raise FieldError(key, f"{value!r} is not one of {', '.join(POINT_PLACEMENTS)}")
    elif key in ("mask_resize", "keypoint_decode", "mask_paste"):
        from harness.masks import MASK_PASTES
        from harness.postprocess import KEYPOINT_DECODES, MASK_RESIZES

        allowed = {"mask_resize": MASK_RESIZES, "keypoint_decode": KEYPOINT_DECODES, "mask_paste": MASK_PASTES}[key]
        if value not in allowed:
            raise FieldError(key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


MODEL_FACT_FIELDS = ("labels", "head", "inputs", "task")  # what the model is, not how one side processes it


def _model_fact(key: str, value):
    """labels, head, inputs, task: checked by the module that owns each."""
    if key == "labels":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise FieldError(key, f"must be a list of class names (strings), got {type(value).__name__} {value!r}")
        return tuple(value)
    if key == "head":
        from harness.heads import checked_head

        try:
            return checked_head(value)
        except UsageError as err:
            raise FieldError(key, str(err), names_key=True) from None
    if key == "inputs":
        from harness.onnx_inputs import checked_inputs_table

        try:
            return checked_inputs_table(value)
        except UsageError as err:
            raise FieldError(key, str(err)) from None
    if key == "task":
        from harness.tasks import registry

        if value not in registry():
            raise FieldError(key, f"{value!r} is not one of {', '.join(registry())}")
        return value


def flatten_profile(data: dict) -> dict:
    """Profile keys from a flat table or from its [pre]/[model]/[post] tables."""
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in STAGE_FIELDS:
            flat.update(value)
        else:
            flat[key] = value
    return flat


def profile_from_mapping(data: dict, base: Profile, source: str, allow_code: bool = False) -> Profile:
    """Overlays `data` (flat or in [pre]/[model]/[post] tables) on `base`; `source` names it in errors."""
    changes = {}
    for key, value in flatten_profile(data).items():
        try:
            changes[key] = checked_field(key, value, allow_code)
        except FieldError as err:
            raise UsageError(err.located(source)) from None
    return base.replace(**changes)


def load_profile(path: Path, base: Profile, allow_code: bool = False) -> Profile:
    from harness.files import read_toml

    data, _ = read_toml(path, "profile file")
    table = data.get("profile", data)
    if not isinstance(table, dict):
        raise UsageError(f"{path}: profile must be a table, got {type(table).__name__}")
    return profile_from_mapping(table, base, str(path), allow_code)
