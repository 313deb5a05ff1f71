"""Targets that cannot host the harness, and deployed artefacts as candidates."""
import json

import numpy as np
import onnxruntime as ort


def test_export_inputs_then_compare_recorded_outputs(tmp_path, harness_cli):
    folder = tmp_path / "target"
    result = harness_cli("export-inputs", str(folder), "--limit", "30")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    inputs = np.load(folder / "inputs.npz")
    assert manifest["samples"] == 30 and inputs["input"].shape == (30, 3, 64, 64)
    # "the target": another runtime, its rows in another order, one sample's logits perturbed to flip
    session = ort.InferenceSession(str(folder / "model.onnx"))
    order = np.arange(30)[::-1]
    logits = session.run(None, {"input": inputs["input"][order]})[0]
    logits[0] = -logits[0]
    recorded = tmp_path / "outputs.npz"
    np.savez(recorded, sample_ids=inputs["sample_ids"][order], logits=logits)
    result = harness_cli("compare", "--candidate-outputs", str(recorded), "--limit", "30", "--json", "-")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["results"]
    assert (row["backend"], row["device"], row["status"]) == ("recorded", "target", "ok")
    assert row["outputs"]["flips"] == 1 and row["flipped"][0]["sample"] == str(inputs["sample_ids"][order[0]])
    assert row["outputs"]["top1_agreement"] == 29 / 30


def test_recorded_file_missing_a_sample_fails_its_row(tmp_path, harness_cli):
    recorded = tmp_path / "outputs.npz"
    np.savez(recorded, sample_ids=np.array(["arrow/00000.jpg"]), logits=np.zeros((1, 10), np.float32))
    result = harness_cli("compare", "--candidate-outputs", str(recorded), "--limit", "5", "--json", "-")
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)["results"]
    assert row["status"] == "failed" and "has no outputs for sample(s)" in row["reason"]


def test_a_deployed_qdq_onnx_is_the_candidate(tmp_path, harness_cli):
    from harness.backends.ort import quantize_qdq
    from harness.calibration import calibration_set
    from harness.export import export
    from harness.model import resolve_model

    exported = export(resolve_model("resnet_tiny"))
    deployed = tmp_path / "deployed_int8.onnx"
    quantize_qdq(exported.onnx_path, calibration_set(exported.spec, count=16), deployed)
    result = harness_cli("compare", "--backends", "ort", "--precision", "int8", "--artifact", str(deployed),
                         "--limit", "40", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["results"]
    assert report["artifact"] == str(deployed) and row["status"] == "ok"
    assert 0 < row["outputs"]["max_abs"] and row["outputs"]["top1_agreement"] >= 0.9


def test_an_openvino_ir_is_the_candidate(tmp_path, harness_cli):
    import openvino as ov

    from harness.export import export
    from harness.model import resolve_model

    model = ov.Core().read_model(str(export(resolve_model("resnet_tiny")).onnx_path))
    errors = {}
    for compress in (False, True):  # ov.save_model compresses weights to FP16 unless told not to
        xml = tmp_path / f"deployed-{compress}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=compress)
        result = harness_cli("compare", "--backends", "ov", "--artifact", str(xml), "--limit", "20", "--json", "-")
        assert result.returncode == 0, result.stderr
        (row,) = json.loads(result.stdout)["results"]
        assert row["status"] == "ok" and row["precision_effective"] == "fp32"
        errors[compress] = row["outputs"]["max_abs"]
    assert errors[False] < 1e-3 < errors[True]  # the harness sees the IR's silent FP16 weights


def test_a_backend_that_cannot_load_is_a_failed_row_with_its_own_message(tmp_path, harness_cli):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    result = harness_cli("compare", "--backends", "ort", "--artifact", str(broken), "--limit", "4", "--json", "-")
    assert result.returncode == 1  # a failed row fails the comparison
    (row,) = json.loads(result.stdout)["results"]
    assert row["status"] == "failed" and "ONNXRuntimeError" in row["reason"]
