"""A backend runs what the report says it ran: each row records what really executed (compute ops by
precision, nodes by device or execution provider) as the runtime itself reports it, and says when that is
not what was asked. Expectations are counted here straight from ONNX Runtime's optimised graph and
OpenVINO's runtime model, not through the adapters."""
import json
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from harness.backends import get_backend
from harness.calibration import calibration_set
from harness.export import export
from harness.model import resolve_model

QUANTIZED = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
FLOATING = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm"}


def _ort_optimised_kernels(graph: Path) -> tuple[int, int]:
    """(quantized compute kernels, float compute kernels) in the graph ONNX Runtime runs for `graph`."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        kinds = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    return sum(k in QUANTIZED for k in kinds), sum(k in FLOATING for k in kinds)


def test_onnx_runtime_int8_leaves_some_convolutions_in_float_and_the_row_says_how_many(harness_cli, tmp_path):
    spec = resolve_model("resnet_tiny")
    session = get_backend("onnxruntime").load(export(spec), "cpu", "int8", calibration=calibration_set(spec))
    quantized, floating = _ort_optimised_kernels(session.graph)
    assert quantized and floating  # ORT fuses only part of the QDQ graph into integer kernels
    record = session.execution()
    assert record["by_precision"] == {"fp32": floating, "int8": quantized}
    assert record["int8_share"] == pytest.approx(quantized / (quantized + floating))
    assert record["matches_request"] is True and record["expected_placement"] == "CPUExecutionProvider"
    assert list(record["placement"]) == ["CPUExecutionProvider"]  # every node ORT's profiler saw ran there
    assert record["placement"]["CPUExecutionProvider"] >= quantized + floating
    out = tmp_path / "compare.json"
    result = harness_cli("compare", "resnet_tiny", "--backends", "ort", "--precision", "int8", "--limit", "8",
                         "--json", str(out))
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())["results"][0]
    assert row["execution"]["int8_share"] == pytest.approx(record["int8_share"])
    assert f"int8 ({record['int8_share']:.0%} int8)" in result.stdout


def test_onnx_runtime_fp16_on_the_cpu_provider_is_flagged_as_fp32_arithmetic():
    """The CPU provider has no FP16 convolution: ORT casts the FP16 graph's weights and runs fp32."""
    spec = resolve_model("resnet_tiny")
    session = get_backend("onnxruntime").load(export(spec), "cpu", "fp16")
    quantized, floating = _ort_optimised_kernels(session.graph)
    record = session.execution()
    assert quantized == 0 and record["by_precision"] == {"fp32": floating}
    assert record["matches_request"] is False and record["mismatch"] == f"asked fp16, compute ops ran {floating} fp32"


def test_openvino_int8_keeps_the_detector_heads_in_float():
    import openvino as ov

    spec = resolve_model("fcos_tiny")
    session = get_backend("openvino").load(export(spec), "cpu", "int8", calibration=calibration_set(spec))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(session.graph)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    convolutions = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ops()
                    if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    integer = sum(p in ("u8", "i8") for p in convolutions)
    assert 0 < integer < len(convolutions)
    record = session.execution()
    assert record["by_precision"] == {"fp32": len(convolutions) - integer, "int8": integer}
    assert record["matches_request"] is True and record["placement"] == {"CPU": len(convolutions)}


def test_openvino_asked_for_f16_on_a_cpu_without_it_is_flagged():
    """This CPU has neither FP16 nor BF16 arithmetic (the adapter offers neither): asked anyway, OpenVINO
    accepts the f16 hint and runs another precision (f32 here, bf16 on a bf16-only CPU); the record says so."""
    import openvino as ov

    from harness.backends.openvino import OvSession

    spec = resolve_model("resnet_tiny")
    exported = export(spec)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(exported.onnx_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
    ran = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}[compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()]
    session = OvSession(compiled, "cpu", "fp16", [exported.input_name], exported.output_names, ran,
                        exported.onnx_path)
    record = session.execution()
    assert set(record["by_precision"]) == {ran}
    if ran != "fp16":
        assert record["matches_request"] is False and record["mismatch"].startswith("asked fp16, compute ops ran ")


def test_gate_fails_a_low_int8_share_and_a_backend_that_ran_otherwise(tmp_path, harness_cli):
    gate = tmp_path / "gate.toml"
    gate.write_text('model = "resnet_tiny"\nlimit = 16\n'
                    '[[profiles]]\nname = "ort-int8"\nbackend = "onnxruntime"\nprecision = "int8"\n'
                    '[[profiles]]\nname = "ov-int8"\nbackend = "openvino"\nprecision = "int8"\n'
                    '[[profiles]]\nname = "ort-fp16"\nbackend = "onnxruntime"\nprecision = "fp16"\n'
                    '[thresholds]\nmax_metric_drop = 0.5\nmin_int8_share = 0.9\n')
    result = harness_cli("validate", "--config", str(gate), "--json", str(tmp_path / "gate.json"))
    assert result.returncode == 1, result.stderr
    checks = {(c["profile"], c["threshold"]): c for c in json.loads((tmp_path / "gate.json").read_text())["checks"]}
    assert not checks["ort-int8", "min_int8_share"]["passed"] and checks["ort-int8", "min_int8_share"]["value"] < 0.9
    assert checks["ov-int8", "min_int8_share"]["passed"] and checks["ov-int8", "min_int8_share"]["value"] == 1.0
    assert ("ort-fp16", "min_int8_share") not in checks  # an fp16 profile has no int8 share to hold
    assert not checks["ort-fp16", "require_requested_execution"]["passed"]
    assert checks["ort-fp16", "require_requested_execution"]["message"].startswith("asked fp16, compute ops ran ")
    assert checks["ort-int8", "require_requested_execution"]["passed"]
    gate.write_text(gate.read_text().replace("min_int8_share = 0.9\n", "require_requested_execution = false\n"))
    result = harness_cli("validate", "--config", str(gate), "--json", str(tmp_path / "gate.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    only_fp32 = tmp_path / "fp32.toml"
    only_fp32.write_text('model = "resnet_tiny"\n[thresholds]\nmin_int8_share = 0.9\n')
    refused = harness_cli("validate", "--config", str(only_fp32))
    assert refused.returncode == 2 and "thresholds.min_int8_share" in refused.stderr and "check nothing" in refused.stderr
