"""Bounded fuzzing of the loaders that read the user's files (gate TOML, profile TOML, COCO json): whatever
the bytes, the only outcomes are success or the one-line input error the CLI turns into exit 2. Any other
exception (a KeyError, a TypeError, a UnicodeDecodeError...) is a crash a user would see as a traceback.
Derandomized and without an example database, so CI runs the same cases every time, in well under 60 s."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from harness.data import load_coco
from harness.data.benchmark import DETECT_DIR
from harness.errors import HarnessError
from harness.profile import Profile, load_profile
from harness.gate_file import load_gate, starter_gate

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

GATE = starter_gate("resnet_tiny") + '''
dataset = "data"
limit = 50
threads = 2
[[profiles]]
name = "cam"
backend = "ov"
precision = "int8"
resize = "cv2-linear"
color = "yuv420-bt601-full-nv12"
input_size = 64
mean = [0.5, 0.5, 0.5]
'''.replace("[thresholds]", "[thresholds]\nmax_sysnoise_delta = { resize = 0.02 }\nmin_op_snr_db = 30")
PROFILE = '''[pre]
decoder = "pil"
resize = "pil-bicubic"
color = "rgb"
geometry = "letterbox"
input_size = 128
resize_size = 146
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[model]
precision = "fp32"
[post]
nms = "torchvision-batched"
box_decode = "clip"
score_threshold = 0.05
iou_threshold = 0.6
max_detections = 100
labels = ["a", "b"]
'''
COCO = json.loads((DETECT_DIR / "instances.json").read_text())
COCO = {"images": COCO["images"][:3], "categories": COCO["categories"],
        "annotations": [a for a in COCO["annotations"] if a["image_id"] in {i["id"] for i in COCO["images"][:3]}]}


def mutated(text: str):
    """Byte-level mutations of a valid file: overwrite, insert or delete a few bytes anywhere."""
    data = text.encode()
    edit = st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, len(data) - 1),
                     st.binary(min_size=1, max_size=4))

    def apply(edits):
        out = bytearray(data)
        for kind, at, chunk in edits:
            at = min(at, max(len(out) - 1, 0))
            if kind == "set":
                out[at:at + len(chunk)] = chunk
            elif kind == "insert":
                out[at:at] = chunk
            else:
                del out[at:at + len(chunk)]
        return bytes(out)
    return st.lists(edit, min_size=1, max_size=4).map(apply)


def _only_one_line_errors(load, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load(path)
    except HarnessError as err:
        assert err.exit_code == 2, err
        assert str(err).startswith(str(path)) or str(path) in str(err), err  # it names the file


@FUZZ
@given(data=mutated(GATE))
def test_gate_loader_fuzz(tmp_path_factory, data):
    _only_one_line_errors(load_gate, tmp_path_factory.mktemp("gate") / "gate.toml", data)


@FUZZ
@given(data=mutated(PROFILE))
def test_profile_loader_fuzz(tmp_path_factory, data):
    _only_one_line_errors(lambda p: load_profile(p, Profile()), tmp_path_factory.mktemp("profile") / "p.toml", data)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                                      max_size=4), max_leaves=10)


@st.composite
def coco_edits(draw):
    """A field of the COCO file replaced by any JSON value (or removed), a few times."""
    data = json.loads(json.dumps(COCO))
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from(["images", "annotations", "categories", None]))
        if table is None:
            key = draw(st.sampled_from(["images", "annotations", "categories"]))
            data[key] = draw(JSON_VALUES)
            continue
        entries = data.get(table)
        if not isinstance(entries, list) or not entries:
            continue
        entry = entries[draw(st.integers(0, len(entries) - 1))]
        if not isinstance(entry, dict) or not entry:
            continue
        field = draw(st.sampled_from(sorted(entry)))
        if draw(st.booleans()):
            entry[field] = draw(JSON_VALUES)
        else:
            del entry[field]
    return json.dumps(data, allow_nan=True).encode()


@FUZZ
@given(data=coco_edits() | mutated(json.dumps(COCO)))
def test_coco_loader_fuzz(tmp_path_factory, data):
    _only_one_line_errors(load_coco, tmp_path_factory.mktemp("coco") / "instances.json", data)
