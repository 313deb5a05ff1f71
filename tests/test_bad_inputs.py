"""The README's promise, case by case, through the command line as a user runs it: a bad file or value is
one line naming it and exit 2; one bad sample is one counted, listed failure and the good samples' numbers
equal a clean run's; no file makes the harness run code; no report is left half-written."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import printable
from harness.data.benchmark import CLASSIFY_DIR, DETECT_DIR

PLUGINS = str(Path(__file__).parent / "plugins")
CLASSES = ("circle", "square")


def one_line_error(result, *fragments, code: int = 2) -> str:
    """The error contract: exit `code`, standard error exactly one line, naming each fragment."""
    assert result.returncode == code, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- files a test builds --------------------------------------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb: 68 bytes for 900 MP)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def grey16_png(path: Path) -> np.ndarray:
    grey = (np.arange(40 * 56, dtype=np.uint32).reshape(40, 56) * 29 % 65536).astype(np.uint16)
    Image.fromarray(grey).save(path, "PNG")
    return grey


def _good_files() -> list[tuple[str, bytes]]:
    """(relative name, bytes) of 12 benchmark images in two classes; three get names that break naive code:
    brackets (rich markup), a byte that is not UTF-8, a space."""
    files = []
    for label in CLASSES:
        for k, path in enumerate(sorted((CLASSIFY_DIR / label).iterdir())[:6]):
            name = {0: "[x] first.jpg", 1: "caf\udce9.jpg", 2: "with space.jpg"}.get(k, path.name) \
                if label == "circle" else path.name
            files.append((f"{label}/{name}", path.read_bytes()))
    return files


def _write(root: Path, files) -> Path:
    for name, data in files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(os.fsencode(target), "wb") as out:  # a surrogate-escaped name is written as its raw bytes
            out.write(data)
    return root


@pytest.fixture(scope="module")
def clean_and_dirty(tmp_path_factory):
    """The same good images twice: alone, and among every kind of bad file."""
    base = tmp_path_factory.mktemp("datasets")
    good = _good_files()
    clean = _write(base / "clean", good)
    dirty = _write(base / "dirty", good)
    jpeg = good[3][1]
    bad = {"circle/bomb.png": png_claiming(30000, 30000), "circle/empty\udcff.jpg": b"",
           "square/truncated[1].jpg": jpeg[: len(jpeg) // 3], "square/not-an-image.jpg": b"plain text, not a JPEG"}
    _write(dirty, bad.items())
    Image.new("RGB", (60000, 1)).save(dirty / "square" / "strip.png")
    Image.new("RGB", (8, 8)).save(dirty / "circle" / "anim.gif")
    (dirty / "circle" / "notes.txt").write_text("labels were checked by hand")
    os.symlink("loop-b.jpg", dirty / "square" / "loop-a.jpg")
    os.symlink("loop-a.jpg", dirty / "square" / "loop-b.jpg")
    return clean, dirty


def _compare_json(harness_cli, dataset: Path, out: Path, *extra: str) -> tuple[dict, object]:
    result = harness_cli("compare", "--dataset", str(dataset), "--backends", "ort", "--json", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result


# --- one bad sample costs one sample --------------------------------------------------------------------

def test_bad_samples_are_counted_and_listed_and_the_good_ones_score_as_in_a_clean_run(clean_and_dirty, tmp_path,
                                                                                       harness_cli):
    clean, dirty = clean_and_dirty
    expected, _ = _compare_json(harness_cli, clean, tmp_path / "clean.json")
    report, result = _compare_json(harness_cli, dirty, tmp_path / "dirty.json", "--html", str(tmp_path / "d.html"))
    assert report["dataset"]["samples"] == expected["dataset"]["samples"] == 12
    assert report["reference"]["metric"] == expected["reference"]["metric"]
    assert report["results"][0]["metric"] == expected["results"][0]["metric"]
    assert report["results"][0]["outputs"]["max_abs"] == expected["results"][0]["outputs"]["max_abs"]
    assert report["provenance"]["dataset_sha256"] != expected["provenance"]["dataset_sha256"]  # hashed, no crash
    reasons = {Path(f["sample"]).name: f["reason"] for f in report["dataset"]["failed"]}
    assert report["dataset"]["failed_samples"] == 5 == len(reasons), reasons
    assert "100 MP budget" in reasons["bomb.png"]
    assert "aspect above 50:1" in reasons["strip.png"]
    assert "empty file" in reasons["empty\\xff.jpg"]  # the non-UTF-8 byte, printable
    assert "cannot decode" in reasons["truncated[1].jpg"] and "cannot decode" in reasons["not-an-image.jpg"]
    skipped = {Path(s["path"]).name: s["reason"] for s in report["dataset"]["skipped"]}
    assert set(skipped) == {"anim.gif", "notes.txt", "loop-a.jpg", "loop-b.jpg"}, skipped
    assert "'.gif' is not an image suffix" in skipped["anim.gif"] and "looping link" in skipped["loop-a.jpg"]
    assert "truncated[1].jpg" in result.stdout and "skipped file" in result.stdout  # markup-safe, and said
    assert "anim.gif" in (tmp_path / "d.html").read_text() or (tmp_path / "d.html").stat().st_size > 0


@pytest.mark.parametrize("decoder", ["torchvision", "ffmpeg"])
def test_a_decoder_variant_fails_per_sample_only(clean_and_dirty, tmp_path, harness_cli, decoder):
    """torchvision raised on a PNG and killed compare; a zero-byte file broke FFmpeg's shared decoder for
    every later image. Each now fails only the samples it cannot read, and scores the ones it reads as a
    clean run of exactly those files does (FFmpeg, like a deployment using it, reads a truncated JPEG)."""
    _, dirty = clean_and_dirty
    profile = tmp_path / "profile.toml"
    profile.write_text(f'[pre]\ndecoder = "{decoder}"\ninput_size = 64\n')
    report, _ = _compare_json(harness_cli, dirty, tmp_path / "dirty.json", "--profile", str(profile))
    failed = {f["sample"] for f in report["dataset"]["failed"]}
    assert {"circle/bomb.png", "square/strip.png", "square/not-an-image.jpg"} <= failed
    readable = tmp_path / "readable"
    for path in dirty.rglob("*"):
        sample = printable(path.relative_to(dirty))
        if path.is_file() and path.suffix != ".gif" and path.suffix != ".txt" and sample not in failed:
            (readable / path.relative_to(dirty)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, readable / path.relative_to(dirty))
    expected, _ = _compare_json(harness_cli, readable, tmp_path / "readable.json", "--profile", str(profile))
    assert report["dataset"]["samples"] == expected["dataset"]["samples"] >= 12
    assert expected["dataset"]["failed_samples"] == 0
    assert report["reference"]["metric"] == expected["reference"]["metric"]
    assert report["results"][0]["metric"] == expected["results"][0]["metric"]


def test_sysnoise_decoder_rows_survive_bad_samples_and_exit_0(clean_and_dirty, tmp_path, harness_cli):
    _, dirty = clean_and_dirty
    result = harness_cli("sysnoise", "--dataset", str(dirty), "--axes", "decoder", "--json", str(tmp_path / "s.json"),
                         "--store", str(tmp_path / "cells.sqlite"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "s.json").read_text())
    rows = report["axes"][0]["variants"]
    assert {r["name"] for r in rows} >= {"torchvision", "ffmpeg", "opencv"}
    assert all(r["status"] == "ok" for r in rows), [(r["name"], r["reason"]) for r in rows]
    assert report["dataset"]["failed_samples"] == 5 and len(report["dataset"]["skipped"]) == 4


def test_a_16_bit_grey_png_is_converted_not_saturated(tmp_path):
    from harness.preprocess import decode

    grey = grey16_png(tmp_path / "g.png")
    expected = np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)  # the high byte, as OpenCV reads it
    for decoder in ("pil", "opencv", "torchvision"):
        assert np.array_equal(decode((tmp_path / "g.png").read_bytes(), decoder), expected), decoder


@pytest.mark.parametrize("command", [["compare", "--backends", "ort"], ["compare"], ["sysnoise", "--axes", "resize"],
                                     ["drift", "--backend", "ort"]])
def test_a_dataset_where_nothing_is_readable_is_one_line(tmp_path, harness_cli, command):
    for label in CLASSES:
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "a.jpg").write_bytes(b"")
        (tmp_path / "data" / label / "b.png").write_bytes(png_claiming(40000, 40000))
    one_line_error(harness_cli(*command, "--dataset", str(tmp_path / "data")), "none of its 4 samples can be read")


# --- no file runs code --------------------------------------------------------------------------------

def _trap_env(tmp_path) -> tuple[dict, Path]:
    marker = tmp_path / "imported"
    return {"PYTHONPATH": PLUGINS + os.pathsep + os.environ.get("PYTHONPATH", ""), "HARNESS_TRAP": str(marker)}, marker


def test_a_profile_naming_code_is_refused_without_allow_code(tmp_path, harness_cli):
    env, marker = _trap_env(tmp_path)
    profile = tmp_path / "p.toml"
    profile.write_text('[pre]\ndecoder = "harness_test_trap:decode"\n')
    refused = harness_cli("compare", "--profile", str(profile), "--backends", "ort", "--limit", "4", env=env)
    one_line_error(refused, "p.toml", "decoder", "--allow-code")
    assert not marker.exists()
    trusted = harness_cli("compare", "--profile", str(profile), "--backends", "ort", "--limit", "4", "--allow-code",
                          env=env)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert marker.read_text() == "imported"  # the flag, and only the flag, lets the file name code


def test_a_gate_naming_a_factory_is_refused_without_allow_code(tmp_path, harness_cli):
    env, marker = _trap_env(tmp_path)
    gate = tmp_path / "gate.toml"
    gate.write_text('model = "harness_test_trap:factory"\n[thresholds]\nmax_metric_drop = 0.01\n')
    one_line_error(harness_cli("validate", "--config", str(gate), env=env), "gate.toml", "line 1", "--allow-code")
    gate.write_text('model = "resnet_tiny"\n[[profiles]]\nname = "x"\nnms = "os:system"\n[thresholds]\n'
                    'max_metric_drop = 0.01\n')
    one_line_error(harness_cli("validate", "--config", str(gate), env=env), "profiles[0].nms", "--allow-code")
    assert not marker.exists()


def test_a_tampered_store_piece_is_never_unpickled(tmp_path):
    """A pickle that would run code sits where a piece should: it is refused as a bad piece, not loaded."""
    import pickle

    from harness.postprocess import Detections
    from harness.store import BadPiece, decode_piece, encode_piece

    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "ran").write_text, ("pwned",))

    with pytest.raises(BadPiece):
        decode_piece(pickle.dumps(Boom()))
    assert not (tmp_path / "ran").exists()
    rows = [np.arange(3, dtype=np.float32), np.ones(3, np.float32)]
    task, ids, predictions, shapes, digest, failures = decode_piece(
        encode_piece("classify", ["a", "b"], rows, {"logits": [3]}, "d", {"c": "unreadable"}))
    assert task == "classify" and ids == ["a", "b"] and np.array_equal(np.stack(predictions), np.stack(rows))
    assert shapes == {"logits": [3]} and digest == "d" and failures == {"c": "unreadable"}
    dets = [Detections(np.ones((2, 4), np.float32), np.array([0.9, 0.5], np.float32), np.array([1, 2])),
            Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))]
    _, _, back, _, _, _ = decode_piece(encode_piece("detect", ["a", "b"], dets, None, None, {}))
    assert [len(d.scores) for d in back] == [2, 0] and back[0].labels.tolist() == [1, 2]
    good = encode_piece("classify", ["a", "b"], rows, None, None, {})
    with pytest.raises(BadPiece):  # bytes changed in the file: not a readable archive any more
        decode_piece(good[:100] + b"\0" * 8 + good[108:])
    import io

    buffer = io.BytesIO()  # a well-formed archive whose rows do not match its ids
    meta = {"ids": ["a", "b", "c"], "kind": "classify", "shapes": None, "input_digest": None, "failures": {}}
    np.savez(buffer, rows=np.stack(rows), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(BadPiece, match=r"array 'rows' is float32\(2, 3\)"):
        decode_piece(buffer.getvalue())


# --- bad configs and values: one line naming the file, key or value; exit 2 -----------------------------

def _gate(body: str):
    def make(tmp_path):
        (tmp_path / "gate.toml").write_text(body)
        return ["validate", "--config", str(tmp_path / "gate.toml")]
    return make


def _profile(body: str | bytes):
    def make(tmp_path):
        path = tmp_path / "p.toml"
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        return ["compare", "--profile", str(path), "--backends", "ort", "--limit", "2"]
    return make


def _coco(mutate):
    """The embedded detection set's instances.json with one mutation; the images stay where they are."""
    def make(tmp_path):
        data = json.loads((DETECT_DIR / "instances.json").read_text())
        mutate(data)
        (tmp_path / "instances.json").write_text(json.dumps(data))
        if not (tmp_path / "images").exists():
            os.symlink(DETECT_DIR / "images" if (DETECT_DIR / "images").is_dir() else DETECT_DIR, tmp_path / "images")
        return ["compare", "fcos_tiny", "--dataset", str(tmp_path / "instances.json"), "--backends", "ort"]
    return make


def _first(key: str, field: str, value):
    def mutate(data):
        if value is KeyError:
            del data[key][0][field]
        else:
            data[key][0][field] = value
    return mutate


def _writing(name: str, content: str | bytes, *args: str):
    """Writes tmp_path/name, then runs `args` with {p} standing for tmp_path."""
    def make(tmp_path):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return [arg.format(p=tmp_path) for arg in args]
    return make


def _repro_folder(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    for name in ("repro.json", "candidate.onnx", "reference.onnx", "inputs.npz", "expected.npz"):
        (folder / name).write_text("{}")
    return ["repro", str(folder)]


GATE_HEAD = 'model = "resnet_tiny"\n'
CASES = {
    # gate files: every field's type and range before any work; a gate that cannot check anything
    "gate-no-profiles": (_gate(GATE_HEAD + 'profiles = []\n[thresholds]\nmax_metric_drop = 0.01\n'),
                         ["gate.toml", "line 2 (profiles)", "checks nothing"]),
    "gate-nan-snr": (_gate(GATE_HEAD + '[thresholds]\nmin_op_snr_db = nan\n'), ["min_op_snr_db", "finite"]),
    "gate-negative-agreement": (_gate(GATE_HEAD + '[thresholds]\nmin_top1_agreement = -1\n'),
                                ["min_top1_agreement", "between 0.0 and 1.0", "-1"]),
    "gate-negative-limit": (_gate(GATE_HEAD + 'limit = -1\n[thresholds]\nmax_metric_drop = 0.01\n'),
                            ["line 2 (limit)", ">= 1"]),
    "gate-zero-batch": (_gate(GATE_HEAD + 'batch_size = 0\n[thresholds]\nmax_metric_drop = 0.01\n'),
                        ["line 2 (batch_size)", "between 1 and 4096"]),
    "gate-empty-axes": (_gate(GATE_HEAD + '[thresholds]\nmax_sysnoise_delta = {}\n'),
                        ["max_sysnoise_delta", "no axis"]),
    "gate-not-utf8": (_writing("gate.toml", b'model = "resnet\xff"\n', "validate", "--config", "{p}/gate.toml"),
                      ["gate.toml", "line 1", "not UTF-8"]),
    "gate-profile-type": (_gate(GATE_HEAD + '[[profiles]]\nname = "x"\ninput_size = "64"\n[thresholds]\n'
                                            'max_metric_drop = 0.01\n'),
                          ["profiles[0].input_size", "expected an integer, got str '64'"]),
    "gate-task": (_gate(GATE_HEAD + 'task = "clasify"\n[thresholds]\nmax_metric_drop = 0.01\n'),
                  ["line 2 (task)", "unknown task 'clasify'", "Did you mean 'classify'?"]),
    "gate-labels-missing": (_gate(GATE_HEAD + 'labels = "nowhere.txt"\n[thresholds]\nmax_metric_drop = 0.01\n'),
                            ["line 2 (labels)", "nowhere.txt: labels file not found"]),
    "gate-checkpoint-missing": (_gate(GATE_HEAD + 'checkpoint = "w.pth"\n[thresholds]\nmax_metric_drop = 0.01\n'),
                                ["line 2 (checkpoint)", "w.pth: checkpoint file not found"]),
    "gate-calibration-missing": (_gate(GATE_HEAD + 'calibration = "train"\n[thresholds]\nmax_metric_drop = 0.01\n'),
                                 ["line 2 (calibration)", "train: not a folder of calibration images"]),
    "gate-profile-task": (_gate(GATE_HEAD + '[[profiles]]\nname = "x"\ntask = "detect"\n[thresholds]\n'
                                            'max_metric_drop = 0.01\n'), ["profiles[0].task", "unknown profile key"]),
    # labels files and tasks on the command line
    "labels-repeated": (_writing("labels.txt", "circle\nsquare\ncircle\n", "compare", "--labels", "{p}/labels.txt",
                                 "--backends", "ort"), ["labels.txt", "class names repeated: circle"]),
    "labels-blank-line": (_writing("labels.txt", "circle\n\nsquare\n", "compare", "--labels", "{p}/labels.txt",
                                   "--backends", "ort"), ["labels.txt", "no class name on line 2"]),
    "labels-json-not-list": (_writing("labels.json", '{"0": "circle"}', "compare", "--labels", "{p}/labels.json",
                                      "--backends", "ort"), ["labels.json", "expected a JSON list of class names"]),
    "task-unknown": (lambda p: ["compare", "--task", "detection", "--backends", "ort"],
                     ["unknown task 'detection'", "known: classify, detect"]),
    "profile-task": (_profile('task = "segmentation"\n'), ["p.toml: task", "'segmentation' is not one of classify"]),
    # profile files
    "profile-size-string": (_profile('input_size = "64"\n'), ["p.toml: input_size", "got str '64'"]),
    "profile-size-float": (_profile('input_size = 64.5\n'), ["p.toml: input_size", "got float 64.5"]),
    "profile-size-negative": (_profile('input_size = -3\n'), ["p.toml: input_size", "must be >= 1"]),
    "profile-labels-string": (_profile('labels = "abc"\n'), ["p.toml: labels", "list of class names"]),
    "profile-std-zero": (_profile('[pre]\nstd = [0.2, 0.0, 0.2]\n'), ["p.toml: std", "must be > 0.0"]),
    "profile-not-utf8": (_profile(b'[pre]\nresize = "pil-bilinear\xe9"\n'), ["p.toml", "line 2", "not UTF-8"]),
    "profile-unknown-resize": (_profile('[pre]\nresize = "pil-bilinar"\n'), ["p.toml: resize", "'pil-bilinar'"]),
    # flags
    "axes-comma": (lambda p: ["sysnoise", "--axes", ","], ["--axes ','", "names no axis"]),
    "precision-comma": (lambda p: ["compare", "--precision", ",", "--backends", "ort"],
                        ["--precision ','", "names no precision"]),
    "drift-taps": (lambda p: ["drift", "--backend", "ort", "--taps", "X", "--limit", "2"],
                   ["tap method 'X' is not offered"]),
    "memory-budget": (lambda p: ["drift", "--backend", "ort", "--memory-budget", "lots", "--limit", "2"],
                      ["--memory-budget 'lots'", "expected a positive size"]),
    "input-shape": (lambda p: ["compare", "--input-shape", "3x64x48", "--backends", "ort"],
                    ["--input-shape '3x64x48'", "not square"]),
    "dataset-dev-null": (lambda p: ["compare", "--dataset", "/dev/null", "--backends", "ort"],
                         ["/dev/null", "a folder or a COCO .json file"]),
    "calibration-missing": (lambda p: ["compare", "--backends", "ort", "--precision", "int8", "--calibration",
                                       str(p / "nowhere"), "--limit", "2"], ["nowhere", "calibration folder not found"]),
    "store-not-sqlite": (_writing("cells.sqlite", "not a database at all " * 100, "sysnoise", "--axes", "resize",
                                  "--store", "{p}/cells.sqlite", "--limit", "4"),
                         ["cells.sqlite", "cannot be used as the cell store"]),
    "cache-unwritable": (_writing("file", "a file where the cache folder should be", "export", "mobilenetv2_tiny"),
                         ["the harness cache cannot be written", "HARNESS_CACHE"]),
    # reports and repro folders that are not what they claim
    "report-foreign": (_writing("r.json", '{"schema": "harness.compare/1", "results": 3}', "report", "{p}/r.json"),
                       ["r.json", "not a valid harness.compare/1 report"]),
    "report-no-schema": (_writing("r.json", "[1, 2]", "report", "{p}/r.json"), ["r.json", "not a harness report"]),
    "diff-foreign": (_writing("a.json", '{"schema": "harness.validate/1", "checks": [{"x": 1}]}', "diff",
                              "{p}/a.json", "{p}/a.json"), ["a.json", "not a valid harness.validate"]),
    "repro-bad-json": (_repro_folder, ["repro.json", "not a harness repro file"]),
    # COCO files: every field the harness reads
    "coco-no-bbox": (_coco(_first("annotations", "bbox", KeyError)), ["annotations[0] has no 'bbox'"]),
    "coco-no-image-id": (_coco(_first("annotations", "image_id", KeyError)), ["annotations[0] has no 'image_id'"]),
    "coco-no-category-id": (_coco(_first("annotations", "category_id", KeyError)),
                            ["annotations[0] has no 'category_id'"]),
    "coco-no-file-name": (_coco(_first("images", "file_name", KeyError)), ["images[0] has no 'file_name'"]),
    "coco-no-id": (_coco(_first("images", "id", KeyError)), ["images[0] has no 'id'"]),
    "coco-unknown-category": (_coco(_first("annotations", "category_id", 999)), ["category_id 999 is not in"]),
    "coco-unknown-image": (_coco(_first("annotations", "image_id", 999)), ["image_id 999 is not in 'images'"]),
    "coco-short-box": (_coco(_first("annotations", "bbox", [1, 2, 3])), ["bbox must be four numbers"]),
    "coco-string-box": (_coco(_first("annotations", "bbox", ["1", 2, 3, 4])), ["bbox must be four numbers"]),
    "coco-nan-box": (_coco(_first("annotations", "bbox", [1, 2, float("nan"), 4])), ["not finite"]),
    "coco-negative-box": (_coco(_first("annotations", "bbox", [1, 2, -5, 4])), ["negative width or height"]),
    "coco-huge-box": (_coco(_first("annotations", "bbox", [1, 2, 1e9, 4])), ["far outside its image"]),
    "coco-duplicate-image": (_coco(lambda d: d["images"].append(dict(d["images"][0]))), ["appears twice"]),
    "coco-escape": (_coco(_first("images", "file_name", "../../../../etc/passwd")), ["points outside the image folder"]),
    "coco-no-images": (_coco(lambda d: d.update(images=[], annotations=[])), ["'images' list is empty"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_input_is_one_line_naming_it_and_exit_2(tmp_path, harness_cli, case):
    make, fragments = CASES[case]
    args = make(tmp_path)
    env = {"HARNESS_CACHE": str(tmp_path / "file" / "cache")} if case == "cache-unwritable" else None
    one_line_error(harness_cli(*args, env=env), *fragments)


def test_a_checkpoint_that_does_not_fit_names_its_missing_and_unexpected_keys(tmp_path, harness_cli):
    import torch

    from harness.model import resolve_model

    torch.save(resolve_model("mobilenetv2_tiny").load_torch().state_dict(), tmp_path / "other.pt")
    line = one_line_error(harness_cli("compare", "resnet_tiny", "--checkpoint", str(tmp_path / "other.pt"),
                                      "--backends", "ort", "--limit", "2"), "other.pt", "does not fit resnet_tiny")
    assert "missing keys (" in line and "unexpected keys (" in line and "more" in line


def test_a_dynamic_onnx_says_its_size_and_takes_input_shape(tmp_path, harness_cli):
    import onnx

    from harness.export import export
    from harness.model import resolve_model

    proto = onnx.load(str(export(resolve_model("resnet_tiny")).onnx_path))
    for dim in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    onnx.save(proto, str(tmp_path / "dynamic.onnx"))
    default = harness_cli("compare", str(tmp_path / "dynamic.onnx"), "--backends", "ort", "--limit", "4",
                          "--json", str(tmp_path / "d.json"))
    assert default.returncode == 0, default.stderr[-2000:]
    assert "dynamic; evaluating at 224x224 px" in default.stderr
    sized = harness_cli("compare", str(tmp_path / "dynamic.onnx"), "--backends", "ort", "--limit", "4",
                        "--input-shape", "1x3x64x64", "--json", str(tmp_path / "s.json"))
    assert sized.returncode == 0 and "dynamic" not in sized.stderr, sized.stderr[-2000:]
    assert json.loads((tmp_path / "s.json").read_text())["reference"]["profile"]["input_size"] == 64


def test_a_worker_error_is_the_same_one_line_as_a_direct_run(tmp_path, harness_cli):
    (tmp_path / "data" / "circle").mkdir(parents=True)
    (tmp_path / "data" / "circle" / "a.jpg").write_bytes(b"")
    direct = harness_cli("compare", "--dataset", str(tmp_path / "data"), "--backends", "ort")
    swept = harness_cli("sysnoise", "--dataset", str(tmp_path / "data"), "--axes", "resize")
    assert one_line_error(swept) == one_line_error(direct)


# --- nothing computed is lost -------------------------------------------------------------------------

def test_reports_are_written_atomically_and_one_failed_write_spares_the_others(tmp_path, harness_cli, monkeypatch):
    from harness.errors import InputError
    from harness.files import write_atomic

    target = tmp_path / "report.json"
    write_atomic(target, '{"good": true}\n')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("harness.files.os.fsync", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        write_atomic(target, '{"truncated')
    monkeypatch.undo()
    assert target.read_text() == '{"good": true}\n' and [p.name for p in tmp_path.iterdir()] == ["report.json"]

    (tmp_path / "blocker").write_text("a file where a folder should be")
    result = harness_cli("compare", "--backends", "ort", "--limit", "8", "--json", str(tmp_path / "blocker" / "r.json"),
                         "--html", str(tmp_path / "page.html"))
    one_line_error(result, "blocker/r.json", "cannot write")
    assert (tmp_path / "page.html").read_text().startswith("<!doctype html>")


def test_a_full_store_warns_once_and_keeps_what_it_stored(tmp_path, capsys):
    from harness.store import CellStore

    store = CellStore(tmp_path / "cells.sqlite")
    store.put("kept", "resize", "cv2-linear", {"status": "ok", "delta": -0.01})
    store.connection.execute("PRAGMA max_page_count = 1")  # a disk that is full from here on
    store.put("lost", "resize", "cv2-area", {"status": "ok", "padding": "x" * 100000})
    store.put_piece("p", "run", "ctx", b"x" * 100000)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "cannot store more" in warning[0] and "what was stored is kept" in warning[0]
    assert store.get("kept") == {"status": "ok", "delta": -0.01} and store.get("lost") is None


def test_html_and_junit_escape_what_a_crafted_report_holds(tmp_path, harness_cli):
    from harness.report.gate import junit_xml

    evil = "<form action='https://x.invalid'><input></form><meta http-equiv='refresh' content='0;url=x'>"
    report = {"schema": "harness.compare/1", "model": {"name": evil, "task": "classify"},
              "dataset": {"name": "d", "samples": 1, "failed_samples": 0},
              "reference": {"backend": evil, "device": "cpu", "precision": evil, "metric": {"top1": 0.5}},
              "results": [{"backend": evil, "device": "cpu", "precision": evil, "status": "ok",
                           "metric": {"top1": 0.5}, "delta": {"top1": 0.0}, "outputs": {}, "flipped": []}]}
    (tmp_path / "r.json").write_text(json.dumps(report))
    result = harness_cli("report", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text()
    assert "<form" not in page and "<meta http-equiv='refresh'" not in page and "&lt;form" in page
    assert "form-action 'none'" in page and "base-uri 'none'" in page
    from xml.etree import ElementTree

    gate = {"model": {"name": "m\x07"}, "checks": [{"profile": "cam\x1b[31mera\x00", "threshold": "max_metric_drop",
                                                    "limit": 0.01, "value": 0.5, "passed": False, "message": "m\x0c"}]}
    parsed = ElementTree.fromstring(junit_xml(gate).split("\n", 1)[1])  # well-formed XML
    assert parsed.find("testsuite").get("name") == "cam[31mera"


def test_an_unexportable_model_is_one_line_naming_the_exporters_log(tmp_path, harness_cli):
    env = {"PYTHONPATH": PLUGINS + os.pathsep + os.environ.get("PYTHONPATH", "")}
    line = one_line_error(harness_cli("compare", "harness_test_trap:unexportable", "--backends", "ort", "--limit", "2",
                                      env=env), "cannot export harness_test_trap:unexportable", "dynamo:", "legacy:")
    log = Path(line.rsplit("output is in ", 1)[1])
    text = log.read_text()  # what the exporters printed and their whole errors, kept out of the terminal
    assert "--- dynamo exporter failed ---" in text and "--- legacy exporter failed ---" in text


def test_unlabelled_data_reports_agreement_in_json_html_and_report(tmp_path, harness_cli):
    for k, path in enumerate(sorted((CLASSIFY_DIR / "circle").iterdir())[:6]):
        shutil.copyfile(path, tmp_path / f"frame{k}.jpg")
    result = harness_cli("compare", "--dataset", str(tmp_path), "--backends", "ort", "--json", str(tmp_path / "u.json"),
                         "--html", str(tmp_path / "u.html"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "u.json").read_text())
    assert report["dataset"]["task"] == "unlabeled" and report["results"][0]["metric"]["top1_agreement"] == 1.0
    again = harness_cli("report", str(tmp_path / "u.json"), "--html", str(tmp_path / "again.html"))
    assert again.returncode == 0, again.stderr
    assert "<table>" in (tmp_path / "again.html").read_text() and "<table>" in (tmp_path / "u.html").read_text()


def test_json_to_stdout_stays_pure_while_openvino_calibrates_int8(tmp_path, harness_cli):
    """NNCF draws progress bars on standard output the first time it calibrates (a fresh cache)."""
    result = harness_cli("compare", "--backends", "ov", "--precision", "int8", "--limit", "8", "--json", "-",
                         env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["status"] == "ok"


def test_ort_int8_quantizes_an_onnx_file_named_by_a_relative_path(tmp_path, harness_cli):
    """ORT's quantization pre-processing runs in a scratch folder: a relative path once named a file there."""
    from harness.export import export
    from harness.model import resolve_model

    shutil.copyfile(export(resolve_model("resnet_tiny")).onnx_path, tmp_path / "model.onnx")
    for k, path in enumerate(sorted((CLASSIFY_DIR / "square").iterdir())[:8]):
        (tmp_path / "calibration" / "square").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp_path / "calibration" / "square" / f"{k}.jpg")
    result = harness_cli("compare", "model.onnx", "--backends", "ort", "--precision", "int8", "--calibration",
                         "calibration", "--limit", "8", "--json", "-", cwd=tmp_path,
                         env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["status"] == "ok"


def test_version(harness_cli):
    from importlib.metadata import version

    result = harness_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"harness {version('harness')}"


def test_usage_errors_and_stray_end_of_file_errors_are_one_line(harness_cli):
    one_line_error(harness_cli("compare", "--limit", "0"), "--limit", "(see harness compare --help)")
    one_line_error(harness_cli("compare", "--bogus"), "No such option: --bogus")
    env = {"PYTHONPATH": PLUGINS + os.pathsep + os.environ.get("PYTHONPATH", "")}
    line = one_line_error(harness_cli("compare", "harness_test_trap:factory_reading_a_closed_stream", env=env),
                          "EOFError: Ran out of input while reading the model's config", code=1)
    assert "Aborted" not in line


def test_fp16_conversion_warnings_become_one_note_and_a_log(tmp_path, capfd):
    """onnxconverter-common warns once per weight outside float16's range (dozens per model); the user gets
    one line saying how many, the warnings themselves go to a log beside the converted graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harness.artifacts import convert_fp16

    tiny = numpy_helper.from_array(np.full((4,), 1e-9, np.float32), "tiny")
    huge = numpy_helper.from_array(np.array([1e6, -1e6, 3e5, 2.0], np.float32), "huge")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "tiny"], ["t"]), helper.make_node("Add", ["t", "huge"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [tiny, huge])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    convert_fp16(tmp_path / "m.onnx", tmp_path / "fp16.onnx")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness: note: FP16 conversion of m.onnx: ") and "warning" in err[0]
    assert "truncated" in (tmp_path / "conversion.log").read_text()
    assert onnx.load(str(tmp_path / "fp16.onnx")).graph.initializer[0].data_type == TensorProto.FLOAT16
