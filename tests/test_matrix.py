"""The acceptance matrix (harness.matrix): its BatchNorm re-estimation, its cells, and --timed-runs, which
lets its slow cells (TVM FP16 on CPU) run only the accuracy pass. The README's table is checked in
test_readme.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.matrix import (MODELS, MatrixSettings, cell_text, estimated_checkpoint, matrix_data, matrix_markdown,
                            select_models, _reference_batch)
from harness.model import resolve_model


def test_batchnorm_statistics_are_the_calibration_images_and_make_the_classes_spread(tmp_path):
    """The first BatchNorm's input does not depend on any BatchNorm, so its re-estimated running mean and
    variance must be that input's mean and unbiased variance over the calibration images, per channel."""
    evaluate, calibrate = matrix_data(tmp_path, MatrixSettings(limit=8, calibration=16))
    assert len(list(evaluate.iterdir())) == 8 and len(list(calibrate.iterdir())) == 16
    assert not {p.name for p in evaluate.iterdir()} & {p.name for p in calibrate.iterdir()}
    spec = resolve_model("torchvision:mobilenet_v3_small")
    untouched = spec.load_torch()
    with torch.no_grad():
        assert untouched(_reference_batch(spec, evaluate)).abs().max() < 1e-8  # a class is rounding noise
    facts = estimated_checkpoint(spec, calibrate, evaluate, tmp_path / "weights.pt")
    assert facts["batchnorm_layers"] > 30 and facts["evaluated"] == 8 and facts["reference_classes"] >= 3
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    estimated = resolve_model("torchvision:mobilenet_v3_small", checkpoint=tmp_path / "weights.pt").load_torch()
    with torch.no_grad():
        assert estimated(_reference_batch(spec, evaluate)).std(0).mean() > 1e-3  # images now differ
    first_conv = untouched.features[0][0]
    with torch.no_grad():
        features = first_conv(_reference_batch(spec, calibrate))
    np.testing.assert_allclose(state["features.0.1.running_mean"], features.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["features.0.1.running_var"], features.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert torch.equal(state["features.0.0.weight"], first_conv.weight)  # the random weights themselves kept


def test_cells_say_what_ran_and_why_not():
    assert cell_text({"status": "ok", "samples": 8, "max_abs": 2.04e-7, "agree": 7}) == "ok 2.0e-07 · 7/8"
    assert cell_text({"status": "ok", "samples": 8, "max_abs": 3.6e-4, "agree": 8, "ran": "fp32"}) == \
        "ok 3.6e-04 · 8/8 (ran fp32)"
    long = "tvm: " + "x" * 200 + " | y"
    text = cell_text({"status": "failed", "reason": long})
    assert text.startswith("failed: tvm: xxx") and text.endswith("...") and "|" not in text and len(text) < 130
    report = {"settings": MatrixSettings().to_json(), "rows": [
        {"model": "torchvision:a", "in_ci": True, "refused": "torchvision:a is a detector"},
        {"model": "timm:b", "in_ci": False, "batchnorm_layers": 0, "reference_classes": 4, "evaluated": 8,
         "cells": {"onnxruntime/fp32": {"status": "ok", "samples": 8, "max_abs": 1e-6, "agree": 8}}}]}
    lines = matrix_markdown(report).splitlines()
    assert "| torchvision:a (CI) | every backend | refused: torchvision:a is a detector | | |" in lines
    assert "| timm:b<br>reference: 4 classes on 8 images, no BatchNorm | onnxruntime | ok 1.0e-06 · 8/8 | not run | " \
           "not run |" in lines
    assert sum(line.startswith("| timm:b") or line.startswith("|  | ") for line in lines) == 3  # a row per backend
    not_run = [line for line in lines if "| every backend | not run: not in the last `harness matrix` run" in line]
    assert len(not_run) == len(MODELS)  # no row of the matrix is left out of the table, run or not


def test_a_stopped_run_resumes_from_the_reports_in_its_work_folder(tmp_path):
    from harness.matrix import _compare
    from harness.models import WEIGHTS_DIR

    folders = matrix_data(tmp_path, MatrixSettings(limit=4, calibration=4))
    settings, checkpoint, out = MatrixSettings(), WEIGHTS_DIR / "resnet_tiny.pt", tmp_path / "r.json"
    first, _ = _compare("resnet_tiny", checkpoint, folders, "onnxruntime", "fp32", 4, out, settings)
    assert [(r["backend"], r["status"]) for r in first["results"]] == [("onnxruntime", "ok")]
    out.write_text(out.read_text().replace('"status": "ok"', '"status": "resumed"'))
    again, _ = _compare("resnet_tiny", checkpoint, folders, "onnxruntime", "fp32", 4, out, settings)
    assert again["results"][0]["status"] == "resumed"  # taken from the folder, not run
    other, _ = _compare("resnet_tiny", checkpoint, folders, "onnxruntime", "fp32", 3, out, settings)
    assert other["results"][0]["status"] == "ok" and other["dataset"]["samples"] == 3  # other images: run again
    out.write_text(out.read_text().replace('"status": "ok"', '"status": "resumed"'))
    changed = tmp_path / "changed.pt"
    changed.write_bytes(checkpoint.read_bytes() + b"\0")  # other bytes: the same command is run again
    moved = tmp_path / "r.json.key"
    moved.write_text(moved.read_text().replace(str(checkpoint), str(changed)))
    fresh, _ = _compare("resnet_tiny", changed, folders, "onnxruntime", "fp32", 3, out, settings)
    assert fresh["results"][0]["status"] == "ok"


def test_rows_are_chosen_by_name_and_an_unknown_one_is_named():
    from harness.errors import UnknownName

    assert [m.source for m in select_models("ci")] == [m.source for m in MODELS if m.in_ci]
    assert [m.source for m in select_models("timm:resnet50,torchvision:resnet50")] == ["timm:resnet50",
                                                                                      "torchvision:resnet50"]
    with pytest.raises(UnknownName, match="timm:resnet05"):
        select_models("timm:resnet05")


def test_timed_runs_zero_runs_only_the_pass(tmp_path, harness_cli):
    """A correctness run on a slow backend: no warm-up and no run alone, the pass's own batch times."""
    reports = {}
    for name, extra in (("default", ()), ("untimed", ("--timed-runs", "0"))):
        out = tmp_path / f"{name}.json"
        result = harness_cli("compare", "--backends", "ort", "--limit", "64", "--batch-size", "32", "--json",
                             str(out), *extra)
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads(out.read_text())
    timed, untimed = reports["default"], reports["untimed"]
    assert timed["results"][0]["timing"]["batches"] == 3 and untimed["results"][0]["timing"]["batches"] == 2
    assert untimed["reference"]["timing"]["batches"] == 2
    assert "--timed-runs 0" in untimed["timing_method"] and "--timed-runs" not in timed["timing_method"]
    assert untimed["results"][0]["outputs"] == timed["results"][0]["outputs"]


def test_matrix_command_writes_its_json_and_renders_it_into_a_readme(tmp_path, harness_cli):
    # a row that costs nothing: the YOLO row's factory is in tests/plugins, which is not on this run's path
    refused, bare = "harness_test_yolo:tiny_yolo_spec", {"PYTHONPATH": ""}
    result = harness_cli("matrix", "--rows", refused, "--json", str(tmp_path / "m.json"), "--work", str(tmp_path / "w"),
                         env=bare)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["schema"] == "harness.matrix/1" and [row["model"] for row in report["rows"]] == [refused]
    reason = f"cannot import model factory '{refused}' (ModuleNotFoundError: No module named 'harness_test_yolo')"
    assert report["rows"][0]["refused"] == reason
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- matrix:start (generated by `harness matrix --readme README.md`) -->\nold\n"
                      "<!-- matrix:end -->\ntail\n")
    result = harness_cli("matrix", "--from-json", str(tmp_path / "m.json"), "--readme", str(readme))
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- matrix:end -->\ntail\n")
    assert f"| {refused} | every backend | refused: {reason} |" in text
    # re-run one row on other settings and keep an earlier run's other row (one made here by hand: a real one
    # costs a minute), in the matrix's order
    detector = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    earlier = {**report, "rows": [{"model": detector, "in_ci": True, "refused": "kept as it was"}]}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    result = harness_cli("matrix", "--rows", refused, "--limit", "4", "--keep-rows-from", str(tmp_path / "earlier.json"),
                         "--json", str(tmp_path / "merged.json"), "--work", str(tmp_path / "w"), env=bare)
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [row["model"] for row in merged["rows"]] == [refused, detector]  # the matrix's order
    assert merged["settings"]["limit"] == 4 and merged["rows"][1]["settings"]["limit"] == 8
    assert merged["rows"][1]["refused"] == "kept as it was" and "settings" not in merged["rows"][0]
    (tmp_path / "bad.json").write_text('{"schema": "harness.compare/1"}')
    result = harness_cli("matrix", "--from-json", str(tmp_path / "bad.json"))
    assert result.returncode == 2 and result.stderr.strip() == \
        f"harness: error: {tmp_path / 'bad.json'}: not a matrix report (schema harness.matrix/1)"


def test_a_detector_row_runs_on_its_own_tasks_data(tmp_path, monkeypatch):
    """The YOLO-style detector from the tests: BatchNorm re-estimated like a classifier's, but no top-1 class
    count (its output is boxes and class scores), and its compare runs on the embedded detection benchmark
    (boxes to score against), calibrated on the shared calibration folder."""
    import os
    from pathlib import Path

    from harness.matrix import _compare

    plugins = str(Path(__file__).parent / "plugins")
    monkeypatch.syspath_prepend(plugins)  # the matrix process resolves the factory; its compares inherit:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")])))
    row = next(m for m in MODELS if m.source == "harness_test_yolo:tiny_yolo_spec")
    assert row.own_task_data
    evaluate, calibrate = matrix_data(tmp_path, MatrixSettings(limit=4, calibration=8))
    spec = resolve_model(row.source)
    facts = estimated_checkpoint(spec, calibrate, evaluate, tmp_path / "yolo.pt")
    assert facts == {"batchnorm_layers": 5, "reference_classes": None, "evaluated": 4, "redrawn_zero_layers": []}
    report, whole = _compare(row.source, tmp_path / "yolo.pt", (None, calibrate), "onnxruntime", "fp32", 4,
                             tmp_path / "yolo.json", MatrixSettings())
    assert whole == {} and report["dataset"]["samples"] == 4, whole
    assert report["model"]["task"] == "detect" and report["dataset"]["name"] == "embedded-detect"
    result = report["results"][0]
    assert result["status"] == "ok" and result["outputs"]["max_abs"] < 1e-3
    assert report["reference"]["metric"]["map"] >= 0  # scored against the benchmark's boxes
    lines = matrix_markdown({"settings": MatrixSettings().to_json(), "rows": [
        {"model": row.source, "in_ci": False, **facts, "cells": {}}]}).splitlines()
    assert any(line.startswith(f"| {row.source}<br>reference: not a classifier, k/N by its task's agreement |")
               for line in lines)


def test_a_zero_initialised_head_is_redrawn_and_named(tmp_path):
    """torchvision initialises ViT's head to zeros: random-init logits all 0 agree on every backend and say
    nothing. The matrix draws such a layer (std 0.02, seeded) and names it in the row."""
    from harness.model import ModelSpec
    from harness.profile import Profile

    def build():
        torch.manual_seed(1)
        head = torch.nn.Linear(8, 10)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), head)

    spec = ModelSpec(name="zero_head", task="classify", build=build, random_seed=1,
                     profile=Profile(input_size=32), labels=tuple(f"c{k}" for k in range(10)))
    evaluate, calibrate = matrix_data(tmp_path, MatrixSettings(limit=8, calibration=8))
    facts = estimated_checkpoint(spec, calibrate, evaluate, tmp_path / "w.pt")
    assert facts["redrawn_zero_layers"] == ["4"] and facts["reference_classes"] >= 2
    weight = torch.load(tmp_path / "w.pt", weights_only=True)["4.weight"]
    assert 0.015 < float(weight.std()) < 0.025 and abs(float(weight.mean())) < 0.01
    again = estimated_checkpoint(spec, calibrate, evaluate, tmp_path / "again.pt")
    assert torch.equal(torch.load(tmp_path / "again.pt", weights_only=True)["4.weight"], weight)  # seeded
    row = {"model": "zero_head", "in_ci": False, **facts, "cells": {}}
    assert "zero-initialised 4 drawn N(0, 0.02)" in matrix_markdown({"settings": MatrixSettings().to_json(),
                                                                     "rows": [row]})


@pytest.mark.parametrize("split", ["segmentation", "detection"])
def test_segmenter_and_detector_rows_evaluate_and_calibrate_on_disjoint_square_images(tmp_path, split):
    """torchvision's segmentation preset and its detectors' transform keep the aspect, and the harness runs one
    square input a profile: their rows take their split's images (all square), the classifiers keep the
    classification ones."""
    from PIL import Image

    settings = MatrixSettings()
    evaluate, calibrate = matrix_data(tmp_path, settings, split)
    evaluated, calibrating = sorted(evaluate.iterdir()), sorted(calibrate.iterdir())
    assert (len(evaluated), len(calibrating)) == (settings.limit, settings.calibration)
    assert all(Image.open(path).size[0] == Image.open(path).size[1] for path in evaluated + calibrating)
    assert not {p.name.split("-", 1)[1] for p in evaluated} & {p.name.split("-", 1)[1] for p in calibrating}
    chosen = {m.source for m in MODELS if m.images == split}
    assert chosen == {f"torchvision:{name}" for name in (
        ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50") if split == "segmentation" else
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large",
         "fcos_resnet50_fpn", "keypointrcnn_resnet50_fpn"))}
