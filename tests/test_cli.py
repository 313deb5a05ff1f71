"""The command line as a user meets it: subprocesses, exit codes, one-line errors, the JSON contract."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from harness.data import embedded_benchmark


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_compare_with_no_arguments(harness_cli, tmp_path):
    out = tmp_path / "report.json"
    result = harness_cli("compare", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["schema"] == "harness.compare/1"
    assert report["model"]["name"] == "resnet_tiny" and len(report["model"]["onnx_sha256"]) == 64
    assert report["dataset"] == {**report["dataset"], "name": "embedded-classify", "samples": 1000, "failed_samples": 0}
    ref = report["reference"]
    assert (ref["backend"], ref["device"], ref["precision"]) == ("torch", "cpu", "fp32")
    assert 0.9 <= ref["metric"]["top1"] <= 1.0 and ref["profile"]["resize"] == "pil-bilinear"
    rows = {row["backend"]: row for row in report["results"]}
    assert {"torch", "onnxruntime"} <= set(rows)
    ort = rows["onnxruntime"]
    assert ort["status"] == "ok" and ort["precision_effective"] == "fp32"
    assert ort["delta"]["top1"] == pytest.approx(ort["metric"]["top1"] - ref["metric"]["top1"])
    assert set(ort["outputs"]) >= {"max_abs", "mean_abs", "cosine", "top1_agreement", "flips"}
    assert ort["outputs"]["cosine"] > 0.999999 and ort["timing"]["batch_ms"] > 0
    assert ort["timing"]["batches"] == 10  # 32 batches in the pass: the most timed runs alone
    assert rows["torch"]["outputs"]["max_abs"] == 0.0  # the reference against itself: bit-exact
    assert "tvm" in rows and report["left_out"] == []  # the zoo model is fast on every backend
    prov = report["provenance"]
    assert prov["exporter"] == "dynamo" and prov["opset"] == 18 and len(prov["dataset_sha256"]) == 64
    assert prov["backends"]["onnxruntime"] and "candidate" in result.stdout


def test_a_default_backend_whose_speed_is_unknown_is_left_out_past_the_budget_and_says_so(harness_cli):
    """Untuned TVM runs 50x slower than ONNX Runtime here (a ResNet-50 image in FP16: 154 s): with no
    --backends, each backend whose speed cannot be known in advance times one sample, and one that would
    take longer than HARNESS_DEFAULT_BUDGET_S on the data is left out, with a line saying so."""
    result = harness_cli("compare", "--limit", "20", "--json", "-", env={"HARNESS_DEFAULT_BUDGET_S": "0.001"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (left,) = report["left_out"]
    assert (left["backend"], left["device"], left["precision"]) == ("tvm", "cpu", "fp32")
    assert "one sample took" in left["reason"] and "the 20 samples would take" in left["reason"]
    assert "tvm" not in {row["backend"] for row in report["results"]} and "not run tvm:cpu fp32" in result.stderr
    assert {row["backend"] for row in report["results"]} >= {"onnxruntime", "openvino", "torch"}


def test_json_to_stdout_keeps_the_table_on_stderr(harness_cli):
    result = harness_cli("compare", "--backends", "ort", "--limit", "20", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataset"]["samples"] == 20 and "candidate" in result.stderr
    # one batch in the pass: each backend is then timed alone on it, the least number of runs (3)
    assert report["reference"]["timing"]["batches"] == report["results"][0]["timing"]["batches"] == 3
    assert report["timing_method"].startswith("each configuration alone after the accuracy pass")


def test_unavailable_precision_is_a_row_not_a_failure(harness_cli):
    result = harness_cli("compare", "--backends", "ort,tvm", "--precision", "fp32,bf16", "--limit", "8",
                         "--json", "-")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert [(r["backend"], r["precision"], r["status"]) for r in rows] == [
        ("onnxruntime", "fp32", "ok"), ("onnxruntime", "bf16", "unavailable"),
        ("tvm", "fp32", "ok"), ("tvm", "bf16", "unavailable")]
    assert "precision bf16 is not offered on cpu (offered: fp32, fp16, int8)" in rows[1]["reason"]


def test_corrupt_and_missing_images_are_counted_not_fatal(harness_cli, tmp_path):
    source = embedded_benchmark("classify")
    for sample in source.samples[:12]:
        target = tmp_path / sample.id
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.path, target)
    corrupt = tmp_path / source.samples[0].id
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    result = harness_cli("compare", "--backends", "ort", "--dataset", str(tmp_path), "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataset"]["samples"] == 11 and report["dataset"]["failed_samples"] == 1
    assert report["dataset"]["failed"][0]["sample"] == source.samples[0].id
    assert str(corrupt) in result.stderr


def test_unlabeled_folder_reports_agreement(harness_cli, tmp_path):
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / f"{k}.jpg")
    result = harness_cli("compare", "--backends", "ort", "--dataset", str(tmp_path), "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataset"]["task"] == "unlabeled"
    assert report["reference"]["metric"] == {"top1_agreement": 1.0, "flip_rate": 0.0, "kl": 0.0}
    assert report["results"][0]["metric"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("args, fragments", [
    (["compare", "--backends", "tensorflow"], ["unknown backend 'tensorflow'", "onnxruntime"]),
    (["compare", "resnet_tiniest"], ["unknown model 'resnet_tiniest'", "resnet_tiny"]),
    (["compare", "--precision", "fp64"], ["unknown precision 'fp64'"]),
    (["compare", "--dataset", "/nonexistent/data"], ["/nonexistent/data", "not found"]),
    (["compare", "missing.onnx"], ["missing.onnx", "not found"]),
    (["zoo", "train", "nope"], ["unknown model 'nope'"]),
])
def test_bad_input_is_one_line_and_exit_2(harness_cli, args, fragments):
    _one_line_error(harness_cli(*args), *fragments)


def test_truncated_onnx_and_classless_folder(harness_cli, tmp_path, cache_dir):
    exported = next(cache_dir.glob("exports/*/model.onnx"), None)
    if exported is None:
        harness_cli("export")
        exported = next(cache_dir.glob("exports/*/model.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(exported.read_bytes()[:5000])
    _one_line_error(harness_cli("compare", str(broken)), str(broken), "not a valid ONNX model")
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    _one_line_error(harness_cli("compare", "--dataset", str(empty / "cls")), str(empty / "cls"))
    _one_line_error(harness_cli("compare", "--dataset", str(empty)), str(empty), "hold no images")


def test_debug_shows_the_traceback(harness_cli):
    result = harness_cli("compare", "--backends", "tensorflow", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = harness_cli("compare", "--backends", "tensorflow", env={"HARNESS_DEBUG": "1"})
    assert "Traceback" in result.stderr


def test_backends_json_contract(harness_cli):
    result = harness_cli("backends", "--json", "-")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["backends"]}
    assert {"torch", "onnxruntime"} <= set(rows)
    for row in rows.values():
        assert {"name", "available", "reason", "version", "devices", "precisions"} <= set(row)
    assert rows["onnxruntime"]["available"] and "cpu" in rows["onnxruntime"]["devices"]
    assert rows["onnxruntime"]["precisions"]["cpu"] == ["fp32", "fp16", "int8"]
    assert rows["onnxruntime"]["aliases"] == ["ort"] and rows["openvino"]["aliases"] == ["ov"]
    if not rows["tensorrt"]["available"]:  # says which of its two needs is missing
        assert "no NVIDIA GPU found" in rows["tensorrt"]["reason"] or "tensorrt package" in rows["tensorrt"]["reason"]
    assert rows["openvino"]["version"] and rows["tvm"]["version"]


def test_listing_the_backends_imports_no_runtime_where_there_is_no_gpu():
    """`harness backends` answers from package metadata and cheap probes: on a machine without an NVIDIA GPU
    nothing needs torch, TVM or TensorRT imported to say what they offer (it took 8 s and 900 MB when it
    imported them, 0.9 s and 100 MB now)."""
    import subprocess
    import sys

    from harness.backends import nvidia_gpu_present

    if nvidia_gpu_present():
        pytest.skip("an NVIDIA GPU is present: the adapters rightly ask their runtimes whether they can use it")
    probe = ("import sys; from harness.backends import registry; "
             "rows = [b.describe() for b in registry().values()]; "
             "print(sorted(m for m in ('torch', 'tvm', 'tensorrt') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]"


def test_zoo_list_names_the_default_and_stated_metrics(harness_cli):
    result = harness_cli("zoo", "list", "--json", "-")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert models["resnet_tiny"]["default"] and models["fcos_tiny"]["task"] == "detect"
    assert all(m["stated"] for m in models.values())
