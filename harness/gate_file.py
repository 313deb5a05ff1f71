"""The gate file (`harness validate --config gate.toml`): read, and every field checked (types, ranges, names)
before any work starts, each problem one line naming the file, the line, the key and what is allowed; and
the commented starter file `--init` writes."""
from __future__ import annotations

import json

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError
from harness.model import ModelRequest
from harness.profile import MODEL_FACT_FIELDS  # the model's own facts: top-level keys, never a [[profiles]] entry's
TOP_KEYS = {"model": str, "checkpoint": str, "profile": str, "task": str, "labels": str, "input_shape": str,
            "inputs": dict, "postprocess": str,
            "calibration": str, "dataset": str, "limit": int, "batch_size": int, "threads": int, "profiles": list,
            "thresholds": dict, "tokenizer": str}
THRESHOLDS = {
    "max_metric_drop": "largest allowed drop of the primary metric (top1 or mAP), as a fraction: 0.01 = 1 point",
    "min_top1_agreement": "smallest allowed share of samples whose prediction matches the reference",
    "max_output_error": "largest allowed max abs difference of the raw model outputs",
    "max_sysnoise_delta": "per noise axis, the largest allowed drop at its worst variant: {resize = 0.02, ...}",
    "min_op_snr_db": "every observable tensor's SNR vs the tensor reference must stay at or above this (dB)",
    "require_requested_execution": "each profile's backend ran what it asked, as its runtime reports it: every "
                                   "compute op in the asked precision (int8: at least one), every node on the "
                                   "asked device or execution provider (default true)",
    "min_int8_share": "for int8 profiles, the smallest allowed share of compute ops that really ran int8",
}
# checks every gate runs unless its file turns them off
DEFAULT_THRESHOLDS = {"require_requested_execution": True}


class GateError(UsageError):
    """A gate file problem: names the file, the line or key, and what is allowed."""


@dataclass
class Gate:
    path: Path
    model: str | None
    dataset: Path | None
    limit: int | None
    batch_size: int
    threads: int | None
    profiles: list[dict]
    thresholds: dict
    text: str = field(repr=False, default="")
    allow_code: bool = False                   # --allow-code: the file's code names are honoured
    request: ModelRequest = field(default_factory=ModelRequest)  # the model as its keys describe it
    calibration: Path | None = None            # INT8 calibration images (training data)


def _line_of(text: str, key: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line) or line.strip() in (f"[{key}]", f"[[{key}]]"):
            return f"line {number}"
    return "key"


def _fail(gate_path: Path, text: str, key: str, problem: str) -> GateError:
    return GateError(f"{gate_path}: {_line_of(text, key.split('.')[-1])} ({key}): {problem}")


def _check_type(path, text, key, value, kind) -> None:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise _fail(path, text, key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")


def _check_range(path, text, key, value, low=None, high=None) -> None:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path, text, key, f"must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else \
            f">= {low}" if low is not None else f"<= {high}"
        raise _fail(path, text, key, f"must be {bounds}, got {value!r}")


# (low, high) of every number a gate holds; fractions are metric units (DESIGN.md)
TOP_RANGES = {"limit": (1, None), "batch_size": (1, 4096), "threads": (1, 1024)}
THRESHOLD_RANGES = {"max_metric_drop": (0.0, 1.0), "min_top1_agreement": (0.0, 1.0), "max_output_error": (0.0, None),
                    "max_sysnoise_delta": (0.0, 1.0), "min_op_snr_db": (-200.0, 400.0), "min_int8_share": (0.0, 1.0)}


def _check_threshold(path, text, key, value) -> None:
    from harness.noise import AXES

    name = key.split(".")[1]
    if name == "max_sysnoise_delta" and key.count(".") == 1:
        _check_type(path, text, key, value, dict)
        if not value:
            raise _fail(path, text, key, f"no axis: name at least one of {', '.join(AXES)}, e.g. {{ resize = 0.02 }}")
        for axis, limit in value.items():
            if axis not in AXES:
                raise _fail(path, text, f"{key}.{axis}", f"unknown noise axis; allowed: {', '.join(AXES)}")
            _check_threshold(path, text, f"{key}.{axis}", limit)
        return
    if name == "require_requested_execution":
        _check_type(path, text, key, value, bool)
        return
    _check_type(path, text, key, value, float)
    _check_range(path, text, key, value, *THRESHOLD_RANGES[name])


def _check_profile(path, text, where: str, profile, allow_code: bool) -> dict:
    from harness.backends import get_backend
    from harness.errors import UnknownName
    from harness.profile import FIELD_NAMES, FieldError, checked_field

    if not isinstance(profile, dict):
        raise _fail(path, text, "profiles", f"{where} must be a table ([[profiles]])")
    checked = {}
    for key, value in profile.items():
        if key == "name":
            _check_type(path, text, f"{where}.name", value, str)
            checked[key] = value
            continue
        if key not in FIELD_NAMES or key in MODEL_FACT_FIELDS:
            raise _fail(path, text, f"{where}.{key}", "unknown profile key; allowed: name, "
                        + ", ".join(n for n in FIELD_NAMES if n not in MODEL_FACT_FIELDS))
        if key == "backend":  # an alias (ort, ov, trt) names its backend
            try:
                checked[key] = get_backend(str(value)).name if isinstance(value, str) else value
            except UnknownName:
                raise _fail(path, text, f"{where}.{key}", f"{value!r} is not one of "
                            f"{', '.join(_allowed_backends())}") from None
            _check_type(path, text, f"{where}.{key}", checked[key], str)
            continue
        try:
            checked[key] = checked_field(key, value, allow_code)
        except FieldError as err:
            raise _fail(path, text, f"{where}.{key}", err.problem) from None
    return checked


def _allowed_backends() -> tuple:
    from harness.backends import registry

    return tuple(registry())


def load_gate(path: Path, allow_code: bool = False) -> Gate:
    """Reads and checks every field of a gate (types, ranges, names) before any work starts: a gate that
    cannot check anything, or only vacuously, is a config error (exit 2)."""
    from harness.files import read_toml
    from harness.model import names_code

    if not path.exists():
        raise GateError(f"{path}: gate file not found (write a starter with `harness validate --init`)")
    data, text = read_toml(path, "gate file")
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise _fail(path, text, key, f"unknown key; allowed: {', '.join(TOP_KEYS)}")
        _check_type(path, text, key, value, TOP_KEYS[key])
        if key in TOP_RANGES:
            _check_range(path, text, key, value, *TOP_RANGES[key])
    if names_code(data.get("model")) and not allow_code:
        raise _fail(path, text, "model", f"{data['model']!r} names a factory to import and call; a gate file runs "
                    "no code unless you pass --allow-code (README, Trust)")
    if "postprocess" in data and not allow_code:
        raise _fail(path, text, "postprocess", f"{data['postprocess']!r} names post-processing code to import and "
                    "run; a gate file runs no code unless you pass --allow-code (README, Trust)")
    thresholds = data.get("thresholds", {})
    for key, value in thresholds.items():
        if key not in THRESHOLDS:
            raise _fail(path, text, f"thresholds.{key}", f"unknown threshold; allowed: {', '.join(THRESHOLDS)}")
        _check_threshold(path, text, f"thresholds.{key}", value)
    if not thresholds:
        raise _fail(path, text, "thresholds", f"no thresholds: a gate needs at least one of {', '.join(THRESHOLDS)}")
    profiles = data.get("profiles", [{"name": "onnxruntime-fp32", "backend": "onnxruntime"}])
    if not profiles and set(thresholds) != {"max_sysnoise_delta"}:
        raise _fail(path, text, "profiles", "an empty list checks nothing: add a [[profiles]] table (backend, "
                    "precision, ...) or leave `profiles` out for ONNX Runtime FP32")
    if "min_int8_share" in thresholds and not any(p.get("precision") == "int8" for p in profiles
                                                  if isinstance(p, dict)):
        raise _fail(path, text, "thresholds.min_int8_share", "applies to int8 profiles and no profile has "
                    'precision = "int8": it would check nothing')
    names = set()
    checked = []
    for index, profile in enumerate(profiles):
        where = f"profiles[{index}]"
        entry = _check_profile(path, text, where, profile, allow_code)
        name = entry.get("name", f"profile-{index}")
        if name in names:
            raise _fail(path, text, "name", f"{where}: profile name {name!r} used twice")
        names.add(name)
        checked.append(entry)
    request = _model_request(path, text, data, allow_code)
    calibration = Path(data["calibration"]) if "calibration" in data else None
    if calibration is not None and not calibration.is_dir():
        raise _fail(path, text, "calibration", f"{calibration}: not a folder of calibration images")
    return Gate(path, data.get("model"), Path(data["dataset"]) if data.get("dataset") else None, data.get("limit"),
                data.get("batch_size", 64), data.get("threads"), checked, thresholds, text, allow_code, request,
                calibration)


def _model_request(path: Path, text: str, data: dict, allow_code: bool) -> ModelRequest:
    """The model keys as the command line's options; each file they name is read and checked now, its
    problem placed at its key."""
    from harness.errors import HarnessError

    files = {key: Path(data[key]) if key in data else None for key in ("checkpoint", "profile", "labels", "tokenizer")}
    inputs = tuple(f"{name}={value if isinstance(value, str) else json.dumps(value)}"
                   for name, value in data.get("inputs", {}).items())  # as --input NAME=VALUE
    request = ModelRequest(data.get("model"), files["checkpoint"], files["profile"], allow_code,
                           data.get("input_shape"), data.get("task"), files["labels"], inputs, data.get("postprocess"),
                           files["tokenizer"])
    if files["checkpoint"] is not None and not files["checkpoint"].is_file():
        raise _fail(path, text, "checkpoint", f"{files['checkpoint']}: checkpoint file not found")
    for key, check in request.checks():
        try:
            check()
        except HarnessError as err:
            raise _fail(path, text, key, str(err)) from None
    return request


def starter_gate(model: str, task=None) -> str:
    """A commented gate.toml that passes on `model` as shipped; the block at the end, uncommented, is a
    known-bad deployment of its task (harness.tasks.Task.known_bad) that fails it."""
    from harness.tasks import CLASSIFY, get_task

    why, name, changes = (task or get_task(CLASSIFY)).known_bad
    bad = "".join(f"# {key} = {json.dumps(value)}\n" for key, value in changes.items())
    return f'''# harness gate: `harness validate --config gate.toml` exits 0 when every threshold holds, 1 when one
# fails, 2 when this file has a problem. Metric units are fractions: 0.01 = 1 point.
model = "{model}"          # zoo name, torchvision:NAME, timm:NAME, package.module:factory or a path to an .onnx
# checkpoint = "weights.pth"  # the model as the command line gives it: --checkpoint, --profile, --task,
# profile = "profile.toml"    # --labels (class names in class-index order), --input-shape, --input
# labels = "labels.txt"
# inputs = {{ images = "1x3x640x640", scale_factor = [1.0, 1.0] }}   # an .onnx file's inputs, by name
# calibration = "path/to/train"  # training images that INT8 profiles calibrate on (zoo models: their own)
# dataset = "path/to/val"     # ImageNet-style folder or COCO json; default: the embedded benchmark
# limit = 200                 # use the first N samples
batch_size = 64

# Each deployment profile: backend, device and precision, plus any pre/post-processing field that
# differs from the model's training profile (decoder, resize, color, nms, box_decode, ...).
[[profiles]]
name = "onnxruntime-fp32"
backend = "onnxruntime"
device = "cpu"
precision = "fp32"

[thresholds]
max_metric_drop = 0.01        # the primary metric (top1 or mAP) may drop by at most 1 point
min_top1_agreement = 0.98     # at least 98 % of samples keep the reference's prediction
max_output_error = 0.001      # max abs difference of the raw outputs
# min_op_snr_db = 30          # every intermediate tensor at least 30 dB SNR (runs harness drift)
# max_sysnoise_delta = {{ resize = 0.02, decoder = 0.01 }}   # per noise axis, the worst variant's drop
# require_requested_execution = true   # (default) fail a profile whose backend ran another precision or device
# min_int8_share = 0.9        # int8 profiles: at least 90 % of compute ops really ran int8

# A known-bad deployment: {why}. Uncomment to watch the gate fail.
# [[profiles]]
# name = "{name}"
# backend = "onnxruntime"
{bad}'''
