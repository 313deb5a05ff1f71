"""The backend registry and the session contract (every adapter runs the same checks)."""
import numpy as np
import pytest

from harness.backends import get_backend, parse_target, registry
from harness.errors import BackendUnavailable, InputError, UnknownName
from harness.export import export
from harness.model import resolve_model


def test_names_aliases_and_devices():
    assert get_backend("ort") is get_backend("onnxruntime")
    backend, device = parse_target("ORT:cpu")
    assert backend.name == "onnxruntime" and device == "cpu"
    with pytest.raises(UnknownName, match="Did you mean 'onnxruntime'"):
        get_backend("onnxruntim")
    assert {"torch", "onnxruntime"} <= set(registry())


def test_missing_device_and_precision_say_what_is_offered():
    exported = export(resolve_model("resnet_tiny"))
    with pytest.raises(BackendUnavailable, match="device 'npu' not found here"):
        get_backend("ort").load(exported, "npu", "fp32")
    with pytest.raises(BackendUnavailable, match="precision int8 is not offered on cpu"):
        get_backend("torch").load(exported, "cpu", "int8")


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_session_checks_inputs_and_handles_batch_1_and_n(name):
    exported = export(resolve_model("resnet_tiny"))
    session = get_backend(name).load(exported, "cpu", "fp32", threads=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64), dtype=np.float32)
    batched = session.run({"input": x})["logits"]
    single = np.concatenate([session.run({"input": x[k:k + 1]})["logits"] for k in range(5)])
    assert batched.shape == (5, 10)
    np.testing.assert_allclose(single, batched, atol=1e-4)
    with pytest.raises(InputError, match="missing input"):
        session.run({"image": x})
    with pytest.raises(InputError, match="float64, expected float32"):
        session.run({"input": x.astype(np.float64)})


def test_a_broken_plugin_becomes_a_row_that_says_why(tmp_path, harness_cli):
    dist = tmp_path / "harness_broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.backends]\nbroken = no_such_module_here:Backend\n")
    result = harness_cli("backends", "--json", "-", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    import json

    rows = {row["name"]: row for row in json.loads(result.stdout)["backends"]}
    assert rows["broken"]["available"] is False
    assert "ModuleNotFoundError" in rows["broken"]["reason"] and "no_such_module_here" in rows["broken"]["reason"]
    assert rows["onnxruntime"]["available"] is True


@pytest.mark.parametrize("backend, device", [
    pytest.param("torch", "cuda", marks=pytest.mark.needs_device("torch", "cuda")),
    pytest.param("onnxruntime", "cuda", marks=pytest.mark.needs_device("onnxruntime", "cuda")),
    pytest.param("onnxruntime", "tensorrt", marks=pytest.mark.needs_device("onnxruntime", "tensorrt")),
])
def test_gpu_fp32_matches_cpu(backend, device):
    """GPU FP32 (torch with TF32 off) against the CPU reference on the same tensor."""
    exported = export(resolve_model("resnet_tiny"))
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64), dtype=np.float32)
    cpu = get_backend("torch").load(exported, "cpu", "fp32").run({"input": x})["logits"]
    gpu = get_backend(backend).load(exported, device, "fp32").run({"input": x})["logits"]
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
