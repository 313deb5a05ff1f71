"""Shared fixtures. The export cache lives in one temporary folder per test session (subprocesses
inherit it through HARNESS_CACHE), so tests never touch the user's cache and exports are re-used."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pytest-xdist workers of one run share one cache (its builds are atomic renames), so each export is made once
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
    _CACHE = str(Path(tempfile.gettempdir()) / f"harness-test-cache-{_RUN}")
    os.makedirs(_CACHE, exist_ok=True)
else:
    _CACHE = tempfile.mkdtemp(prefix="harness-test-cache-")
os.environ["HARNESS_CACHE"] = _CACHE
os.environ.setdefault("COLUMNS", "200")


def run_harness(*args: str, cwd: Path | None = None, env: dict | None = None,
                timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs the installed console script as a user would."""
    exe = Path(sys.executable).with_name("harness")
    return subprocess.run([str(exe), *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def harness_json_report(*args: str, exit_code: int = 0) -> dict:
    """A command's JSON report (`--json -`), run as a user would with the test plugins importable
    (tests/plugins: model factories), after checking its exit code."""
    import json

    plugins = str(Path(__file__).parent / "plugins")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))}
    done = run_harness(*args, "--json", "-", env=env, timeout=900)
    assert done.returncode == exit_code, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def harness_json():
    """harness_json_report: harness_json("compare", "bert_tiny", "--limit", "8") -> the report."""
    return harness_json_report


@pytest.fixture(scope="session")
def harness_cli():
    """The `harness` console script as a subprocess: harness_cli("compare", "--json", "-")."""
    return run_harness


def copy_class_folders(root: Path, names_by_label: dict, per_class: int, skip: int = 0) -> Path:
    """The embedded benchmark's first `per_class` images of each class (after `skip`), under the folder name
    `names_by_label` gives each of the model's labels."""
    import shutil

    from harness.data.benchmark import CLASSIFY_DIR

    for label, name in names_by_label.items():
        (root / name).mkdir(parents=True)
        for image in sorted((CLASSIFY_DIR / label).glob("*.jpg"))[skip:skip + per_class]:
            shutil.copy(image, root / name / image.name)
    return root


@pytest.fixture(scope="session")
def class_folders():
    """copy_class_folders: a dataset (or calibration) folder cut from the embedded benchmark."""
    return copy_class_folders


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(_CACHE)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.needs_device(backend, device)`: skip with the backend's own reason when it is absent."""
    from harness.backends import get_backend

    for item in items:
        for mark in item.iter_markers("needs_device"):
            if mark.args[1] == "cpu":  # CPU backends are installed in CI: absent means broken, never skipped
                raise pytest.UsageError(f"{item.nodeid}: needs_device marks GPU devices only, not cpu")
            backend = get_backend(mark.args[0])
            ok, why = backend.available()
            devices = backend.devices() if ok else []
            if not ok or mark.args[1] not in devices:
                reason = why or f"device {mark.args[1]!r} not found here (found: {', '.join(devices)})"
                item.add_marker(pytest.mark.skip(reason=f"{backend.name}:{mark.args[1]}: {reason}"))


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_device(backend, device): runs only where that device exists")


NO_BROWSER = ("Debian's chromium is not installed (.ci/run installs it with apt-get install chromium; "
              "a browser download cannot work here)")


def _browser_module():
    import importlib.util

    if "harness_test_browser" not in sys.modules:
        spec = importlib.util.spec_from_file_location("harness_test_browser", ROOT / "tests" / "browser.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["harness_test_browser"]


@pytest.fixture(scope="session")
def opens_in_chromium():
    """check(page, plots): opens an HTML report in Debian's headless chromium, offline, and asserts that it
    loads nothing from outside itself, logs no console error, draws at least `plots` plots and screenshots
    to a PNG. Without chromium it fails in CI (.ci/run installs it) and skips elsewhere, with the reason:
    call it after a test's other checks, which then have run."""
    browser = _browser_module()

    def check(page: Path, plots: int) -> None:
        if browser.chromium_path() is None:
            if os.environ.get("CI"):
                pytest.fail(NO_BROWSER)
            pytest.skip(NO_BROWSER)
        shot = page.with_suffix(".png")
        seen = browser.visit(page, shot)
        assert seen.console_errors == [], (page.name, seen.console_errors)
        assert all(url == page.resolve().as_uri() or url.startswith("data:") for url in seen.requests), seen.requests
        assert seen.plots >= plots, (page.name, seen.plots)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return check


@pytest.fixture
def starter_gate(tmp_path):
    """Runs `harness validate --init --model MODEL` in a fresh folder, limits the gate to `limit` samples and
    validates with it: returns the finished `validate` process."""
    def run(model: str, limit: int):
        folder = tmp_path / "gate"
        folder.mkdir()
        assert run_harness("validate", "--init", "--model", model, cwd=folder).returncode == 0
        gate = folder / "gate.toml"
        gate.write_text(gate.read_text().replace("batch_size = 64", f"batch_size = 64\nlimit = {limit}"))
        return run_harness("validate", "--config", str(gate), "--json", str(folder / "gate.json"))
    return run


@pytest.fixture
def through_every_command(tmp_path, starter_gate, opens_in_chromium):
    """Runs a zoo model through compare (ONNX Runtime and OpenVINO INT8, HTML gallery), sysnoise on `axes`,
    drift, validate (its starter gate), report and diff, each on `limit` samples, asserting what every task
    must give (exit 0, one gallery figure per flipped sample with its overlay, ok variants, drift ops):
    returns (the compare report, the sysnoise axes by name, a check that opens the gallery in chromium:
    the task's last check, drawing its overlays) for the task's own checks."""
    import json

    def run(model: str, limit: int, axes: str, *sysnoise_options: str):
        compare = run_harness("compare", model, "--backends", "onnxruntime,openvino", "--precision", "int8",
                              "--limit", str(limit), "--json", str(tmp_path / "compare.json"), "--html",
                              str(tmp_path / "compare.html"))
        assert compare.returncode == 0, compare.stderr
        report = json.loads((tmp_path / "compare.json").read_text())
        assert report["dataset"]["samples"] == limit
        flips = [f for row in report["results"] for f in row["flipped"]]
        assert flips and all(isinstance(f["overlay"], str) for f in flips)  # drawn in the gallery, not the JSON
        assert (tmp_path / "compare.html").read_text().count("<figure>") == len(flips)
        sysnoise = run_harness("sysnoise", model, "--axes", axes, "--limit", str(limit), *sysnoise_options,
                               "--json", str(tmp_path / "sysnoise.json"))
        assert sysnoise.returncode == 0, sysnoise.stderr
        swept = {a["axis"]: a for a in json.loads((tmp_path / "sysnoise.json").read_text())["axes"]}
        assert all(v["status"] == "ok" for a in swept.values() for v in a["variants"])
        drift = run_harness("drift", model, "--backend", "onnxruntime", "--precision", "int8", "--limit", "4",
                            "--json", str(tmp_path / "drift.json"))
        assert drift.returncode == 0, drift.stderr
        assert json.loads((tmp_path / "drift.json").read_text())["ops"]
        validate = starter_gate(model, limit)
        assert validate.returncode == 0, validate.stdout + validate.stderr
        assert run_harness("report", str(tmp_path / "sysnoise.json"), "--html",
                           str(tmp_path / "sysnoise.html")).returncode == 0
        diff = run_harness("diff", str(tmp_path / "compare.json"), str(tmp_path / "compare.json"))
        assert diff.returncode == 0, diff.stderr
        return report, swept, lambda: opens_in_chromium(tmp_path / "compare.html", plots=1)
    return run


@pytest.fixture
def ray_alone():
    """One Ray test at a time on this machine: pytest-xdist runs tests in parallel, and a Ray cluster started
    by one (`ray start`, `ray stop`) is found and stopped by another's `ray.init` / `ray stop`."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "harness-test-ray.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# the embedded figures' joints (harness/data/benchmark/keypoints) that are COCO person keypoints, by COCO index:
# head -> nose, elbows, hands -> wrists, knees, feet -> ankles (its neck and pelvis are not COCO keypoints)
_FIGURE_TO_COCO = {"head": 0, "left_elbow": 7, "right_elbow": 8, "left_hand": 9, "right_hand": 10, "left_knee": 13,
                   "right_knee": 14, "left_foot": 15, "right_foot": 16}


def write_person_keypoints(root: Path, images: int) -> Path:
    """A COCO person-keypoints file (17 keypoints, COCO's names) of the embedded keypoint benchmark's first
    `images` images, its figures' joints moved to the COCO keypoints they are (the others unlabelled), with
    what a real file holds besides: a crowd region, a person without a labelled keypoint and an image
    without people. Returns the json's path (images beside it in images/)."""
    import json
    import shutil

    from harness.data.benchmark import KEYPOINTS_DIR
    from harness.data.keypoints import COCO_PERSON_SIGMAS

    source = json.loads((KEYPOINTS_DIR / "keypoints.json").read_text())
    joints = source["categories"][0]["keypoints"]
    import torchvision

    names = torchvision.models.get_model_weights("keypointrcnn_resnet50_fpn").DEFAULT.meta["keypoint_names"]
    assert len(names) == len(COCO_PERSON_SIGMAS)
    kept = source["images"][:images]
    (root / "images").mkdir(parents=True)
    for image in kept:
        shutil.copyfile(KEYPOINTS_DIR / "images" / image["file_name"], root / "images" / image["file_name"])
    annotations = []
    for ann in source["annotations"]:
        if ann["image_id"] not in {image["id"] for image in kept}:
            continue
        keypoints = [0.0] * 3 * len(names)
        for joint, (x, y, v) in zip(joints, zip(*[iter(ann["keypoints"])] * 3)):
            if joint in _FIGURE_TO_COCO:
                keypoints[3 * _FIGURE_TO_COCO[joint]:3 * _FIGURE_TO_COCO[joint] + 3] = [x, y, v]
        annotations.append({**ann, "keypoints": keypoints, "num_keypoints": sum(v > 0 for v in keypoints[2::3])})
    first = annotations[0]
    x, y, w, h = first["bbox"]
    annotations.append({"id": 10_000, "image_id": first["image_id"], "category_id": 1, "iscrowd": 1,
                        "bbox": [x + w / 2, y, w / 2, h / 2], "area": w * h / 4, "keypoints": [0] * 51,
                        "num_keypoints": 0})
    annotations.append({"id": 10_001, "image_id": kept[1]["id"], "category_id": 1, "iscrowd": 0,
                        "bbox": [1.0, 1.0, 20.0, 30.0], "area": 600.0, "keypoints": [0] * 51, "num_keypoints": 0})
    from PIL import Image

    empty = dict(kept[-1], id=10_000, file_name="empty.jpg")
    Image.new("RGB", (empty["width"], empty["height"]), (118, 121, 125)).save(root / "images" / "empty.jpg")
    path = root / "person_keypoints.json"
    path.write_text(json.dumps({"images": [*kept, empty], "annotations": annotations, "categories": [
        {"id": 1, "name": "person", "keypoints": list(names), "skeleton": []}]}))
    return path


@pytest.fixture(scope="session")
def person_keypoints():
    """write_person_keypoints: a COCO person-keypoints file cut from the embedded keypoint benchmark."""
    return write_person_keypoints
