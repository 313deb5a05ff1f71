"""Derived artefacts are built once: a second load re-uses the TVM library, the TensorRT engine, the
quantized and FP16 graphs. Each test wraps the real build function and counts its calls."""
import pytest

from harness.backends import get_backend
from harness.calibration import calibration_set
from harness.export import export
from harness.model import resolve_model


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return export(resolve_model("resnet_tiny"))


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


def test_tvm_compiles_once(fresh_cache, monkeypatch):
    import harness.backends.tvm as tvm_backend

    calls = _count_calls(monkeypatch, tvm_backend, "compile_library")
    tvm = get_backend("tvm")
    tvm.load(fresh_cache, "cpu", "fp32")
    tvm.load(fresh_cache, "cpu", "fp32")
    assert len(calls) == 1
    tvm.load(fresh_cache, "cpu", "fp16")  # another precision is another library
    assert len(calls) == 2


def test_int8_and_fp16_graphs_are_built_once(fresh_cache, monkeypatch):
    import harness.artifacts as artifacts
    import harness.backends.ort as ort_backend

    quantize_calls = _count_calls(monkeypatch, ort_backend, "quantize_qdq")
    convert_calls = _count_calls(monkeypatch, artifacts, "convert_fp16")
    calibration = calibration_set(fresh_cache.spec, count=16)
    for _ in range(2):
        get_backend("ort").load(fresh_cache, "cpu", "int8", calibration=calibration)
        get_backend("ort").load(fresh_cache, "cpu", "fp16")
    assert len(quantize_calls) == 1 and len(convert_calls) == 1


@pytest.mark.needs_device("tensorrt", "cuda")
def test_tensorrt_builds_the_engine_once(fresh_cache, monkeypatch):
    import harness.backends.tensorrt as trt_backend

    calls = _count_calls(monkeypatch, trt_backend, "build_engine")
    trt = get_backend("tensorrt")
    trt.load(fresh_cache, "cuda", "fp16")
    trt.load(fresh_cache, "cuda", "fp16")
    assert len(calls) == 1
