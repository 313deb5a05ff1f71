"""One contract for every registered backend x device x precision it declares.

Each case loads the zoo models, runs real benchmark tensors at batch 1 and N, and matches torch FP32 on
the same tensors within the tolerance stated for its precision. GPU devices skip with the backend's own
reason where absent; CPU backends always run.
"""
import numpy as np
import pytest

from harness.backends import registry
from harness.errors import BackendUnavailable
from harness.calibration import calibration_set
from harness.compare import Target, compare
from harness.data import embedded_benchmark
from harness.export import export
from harness.model import resolve_model
from harness.run import iter_batches

# Stated tolerances, per precision, on the same input tensor as torch FP32:
# - fp32: kernel summation order only -> logits within 1e-3 max abs, identical top-1.
# - fp16 / bf16: rounding of weights and activations (8 and 11 significant bits; logits here span about
#   +-15) -> max abs 0.1 (fp16) / 0.5 (bf16), top-1 agreement >= 95 %.
# - int8: judged on predictions, not logits: top-1 agreement >= 90 % and |delta top-1| <= 5 points on
#   100 evaluation images (a flip is one point).
ATOL = {"fp32": 1e-3, "fp16": 0.1, "bf16": 0.5}
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.95, "bf16": 0.95, "int8": 0.90}
INT8_MAX_DROP = 0.05
CLASSIFIERS = ("resnet_tiny", "mobilenetv2_tiny")
BATCH = 8


def declared_cases():
    cases = []
    for name, backend in sorted(registry().items()):
        for device, precisions in backend.declared.items():
            for precision in precisions:
                # CPU devices carry no skip mark: a CPU backend that is missing must fail here, loudly
                marks = () if device == "cpu" else pytest.mark.needs_device(name, device)
                cases.append(pytest.param(name, device, precision, id=f"{name}-{device}-{precision}", marks=marks))
    return cases


@pytest.fixture(scope="module")
def batches():
    """Real benchmark tensors through each model's training profile, and torch FP32 on them."""
    data = {}
    for name in CLASSIFIERS:
        spec = resolve_model(name)
        dataset = embedded_benchmark("classify")
        stride = len(dataset.samples) // BATCH
        subset = dataset.limit(None)
        subset.samples = dataset.samples[::stride][:BATCH]
        (batch,) = list(iter_batches(subset, spec.profile, BATCH, []))
        reference = spec.load_torch()
        import torch

        with torch.inference_mode():
            logits = reference(torch.from_numpy(batch.tensor)).numpy()
        data[name] = (export(spec), batch.tensor, logits)
    return data


@pytest.mark.parametrize("backend_name, device, precision", declared_cases())
def test_backend_matches_torch_fp32(backend_name, device, precision, batches):
    backend = registry()[backend_name]
    offered = backend.precisions(device)
    if precision not in offered:  # the hardware lacks it (OpenVINO bf16/fp16 on a CPU without AVX-512 BF16/FP16)
        with pytest.raises(BackendUnavailable, match=rf"precision {precision} is not offered on {device} "
                                                     rf"\(offered: {', '.join(offered)}\)"):
            backend.load(batches[CLASSIFIERS[0]][0], device, precision, threads=2)
        return
    if precision == "int4":  # weight compression of a transformer's MatMuls (tests/test_text.py runs it)
        with pytest.raises(BackendUnavailable, match="this model is not a text model"):
            backend.load(batches[CLASSIFIERS[0]][0], device, precision, threads=2)
        return
    for name in CLASSIFIERS:
        exported, tensor, reference = batches[name]
        if precision == "int8":
            _check_int8(exported, backend, device)
            continue
        session = backend.load(exported, device, precision, threads=2)
        assert session.precision == precision and session.precision_effective
        batched = session.run({"input": tensor})["logits"]
        single = np.concatenate([session.run({"input": tensor[k:k + 1]})["logits"] for k in range(2)])
        assert batched.shape == reference.shape and batched.dtype == np.float32
        error = np.abs(batched - reference).max()
        assert error < ATOL[precision], f"{name}: max abs {error:.3g} >= {ATOL[precision]}"
        agreement = np.mean(batched.argmax(1) == reference.argmax(1))
        assert agreement >= MIN_AGREEMENT[precision], f"{name}: top-1 agreement {agreement:.2f}"
        np.testing.assert_allclose(single, batched[:2], atol=ATOL[precision])  # batch 1 == batch N


def _check_int8(exported, backend, device):
    spec = exported.spec
    calibration = calibration_set(spec)
    report = compare(exported, embedded_benchmark("classify").limit(100), [Target(backend, device, "int8")],
                     batch_size=50, threads=2, calibration=calibration)
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert row["outputs"]["top1_agreement"] >= MIN_AGREEMENT["int8"], (spec.name, row["outputs"])
    assert abs(row["delta"]["top1"]) <= INT8_MAX_DROP, (spec.name, row["delta"])
    assert row["timing"]["batch_ms"] > 0 and row["precision_effective"].startswith("int8")
    assert report["calibration"]["source"].startswith("embedded training split")


@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino", "tvm"])
def test_detector_fp32_matches_torch(backend_name):
    spec = resolve_model("fcos_tiny")
    dataset = embedded_benchmark("detect").limit(8)
    (batch,) = list(iter_batches(dataset, spec.profile, 8, []))
    import torch

    with torch.inference_mode():
        expected = [t.numpy() for t in spec.load_torch()(torch.from_numpy(batch.tensor))]
    outputs = registry()[backend_name].load(export(spec), "cpu", "fp32", threads=2).run({"input": batch.tensor})
    for name, reference in zip(spec.output_names, expected):
        assert np.abs(outputs[name] - reference).max() < ATOL["fp32"], name
