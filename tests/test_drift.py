"""harness drift: constructed cases whose answer is known, the repro folder checked in a fresh process, the
report on every CPU backend and precision, and agreement with onnxruntime's own QDQ debugger."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.backends import get_backend
from harness.errors import BackendUnavailable
from harness.calibration import calibration_set
from harness.compare.drift import Thresholds
from harness.compare.drift_report import drift_report
from harness.data import embedded_benchmark
from harness.export import export
from harness.model import resolve_model
from harness.run import iter_batches

CPU_BACKENDS = ("onnxruntime", "openvino", "tvm", "torch")


def _scaled_weights(proto, node, factor: float) -> None:
    weights = next(init for init in proto.graph.initializer if init.name == node.input[1])
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * np.float32(factor), weights.name))


def test_a_perturbed_conv_is_the_first_divergence_and_top_introducer_and_its_repro_reproduces(tmp_path, harness_cli):
    exported = export(resolve_model("resnet_tiny"))
    proto = onnx.load(str(exported.onnx_path))
    conv = [node for node in proto.graph.node if node.op_type == "Conv"][4]
    _scaled_weights(proto, conv, 1.1)  # a 10 % error at that one op: SNR about 20 dB there
    deployed = tmp_path / "deployed.onnx"
    onnx.save(proto, str(deployed))

    result = harness_cli("drift", "resnet_tiny", "--backend", "ort", "--artifact", str(deployed), "--limit", "32",
                         "--repro", str(tmp_path / "repro"), "--json", str(tmp_path / "drift.json"),
                         "--html", str(tmp_path / "drift.html"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "drift.json").read_text())
    target = conv.output[0]
    assert report["first_divergence"]["tensor"] == target
    assert report["top_introducers"][0]["tensor"] == target
    assert report["first_divergence"]["module"] == exported.module_of(target)
    rows = {row["tensor"]: row for row in report["ops"]}
    assert 15 < rows[target]["snr_db"] < 25 and 15 < rows[target]["introduced_snr_db"] < 25
    before = report["ops"][:[r["tensor"] for r in report["ops"]].index(target)]
    assert all(r["snr_db"] is None or r["snr_db"] > 90 for r in before if r["observable"])  # untouched: fp32 noise
    assert rows[target]["inherited"] < 1e-5  # its inputs arrive clean: the error is its own
    assert report["repro_info"]["nodes"] == 1 and "first divergence" in result.stdout
    assert (tmp_path / "drift.html").read_text().count("data:image/png;base64,") == 1

    repro = tmp_path / "repro"
    candidate = harness_cli("repro", str(repro))
    reference = harness_cli("repro", str(repro), "--reference")
    assert candidate.returncode == 1, candidate.stdout + candidate.stderr
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert "DIVERGES" in candidate.stdout and "matches" in reference.stdout


def _amplifier_model(path, weights: np.ndarray) -> None:
    """input -> Conv (+100 bias) -> x - mean(x) -> Relu -> GlobalAveragePool -> logits. Removing the large
    mean turns a tiny relative error of the conv into a large one: the amplification is downstream."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["biased"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("ReduceMean", ["biased", "axes"], ["mean"], keepdims=1, name="mean"),
         helper.make_node("Sub", ["biased", "mean"], ["centred"], name="centre"),
         helper.make_node("Relu", ["centred"], ["rectified"], name="relu"),
         helper.make_node("GlobalAveragePool", ["rectified"], ["pooled"], name="pool"),
         helper.make_node("Flatten", ["pooled"], ["logits"], name="flatten")],
        "amplifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.full(4, 100, np.float32), "b"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_an_early_small_error_amplified_downstream_is_told_apart_from_where_it_crosses_the_threshold(tmp_path):
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    _amplifier_model(tmp_path / "model.onnx", weights)
    _amplifier_model(tmp_path / "deployed.onnx", weights * np.float32(1.02))
    spec = resolve_model(str(tmp_path / "model.onnx"))
    report = drift_report(spec, "onnxruntime", "cpu", "fp32", embedded_benchmark("classify").limit(16),
                          thresholds=Thresholds(snr_floor=40.0), artifact=tmp_path / "deployed.onnx",
                          repro=tmp_path / "repro", progress=False)
    rows = {row["tensor"]: row for row in report["ops"]}
    assert rows["biased"]["snr_db"] > 55 and not rows["biased"]["diverged"]      # small at the conv...
    assert rows["centred"]["snr_db"] < 40 and rows["centred"]["diverged"]        # ...large after the centring
    assert report["first_divergence"]["tensor"] == "centred"
    assert report["top_introducers"][0]["tensor"] == "biased"                    # but the conv introduced it
    assert rows["centred"]["introduced"] < 1e-6 < rows["centred"]["inherited"]   # the Sub only passes it on
    # the minimal repro needs the conv too: the Sub alone (fed the reference) does not diverge
    assert report["repro_info"]["window_start"] == "biased" and report["repro_info"]["nodes"] >= 3


def _declared_cpu_runs():
    runs = []
    for model in ("resnet_tiny", "mobilenetv2_tiny", "fcos_tiny"):
        for name in CPU_BACKENDS:
            for precision in get_backend(name).declared.get("cpu", ()):
                runs.append((model, name, precision))
    return runs


@pytest.mark.parametrize("model,backend,precision", _declared_cpu_runs())
def test_zoo_report_is_complete_on_every_cpu_backend_and_precision(model, backend, precision):
    spec = resolve_model(model)
    # one sample: what a complete report holds does not hang on how many, and TVM's untuned FP16 kernels
    # take ~4 s per detector image on this CPU, three passes over it per report (tap check, tapped, alone)
    data = embedded_benchmark(spec.task).limit(1)
    offered = get_backend(backend).precisions("cpu")
    if precision not in offered:  # this CPU lacks the instructions (OpenVINO bf16/fp16 without AVX-512 BF16/FP16)
        with pytest.raises(BackendUnavailable, match=f"precision {precision} is not offered on cpu "
                                                     rf"\(offered: {', '.join(offered)}\)"):
            drift_report(spec, backend, "cpu", precision, data, batch_size=1, progress=False)
        return
    if precision == "int4":  # a transformer's weight compression (tests/test_text.py): refused on an image model
        with pytest.raises(BackendUnavailable, match="this model is not a text model"):
            drift_report(spec, backend, "cpu", precision, data, batch_size=1, progress=False)
        return
    report = drift_report(spec, backend, "cpu", precision, data, batch_size=1,
                          calibration=calibration_set(spec) if precision == "int8" else None, progress=False)
    assert report["candidate"]["backend"] == backend and report["tap_method"] in get_backend(backend).load(
        export(spec), "cpu", "fp32").tap_methods
    assert isinstance(report["taps_perturb"]["ok"], bool) and report["taps_perturb"]["max_abs"] >= 0
    assert report["reference"]["torch_check"]["max_abs"] < 1e-4  # torch vs the tensor reference at the outputs
    observable = [row for row in report["ops"] if row["observable"]]
    assert observable and report["ops"][-1]["tensor"] in spec.output_names
    for row in report["ops"]:
        assert row["observable"] or row["reason"], row          # shown, or why not
        assert row["introduced"] is not None or row["unit_reason"], row
    assert {u["tensor"] for u in report["unobservable"]} == {r["tensor"] for r in report["ops"] if not r["observable"]}
    if backend != "torch":  # every op of the deployed graph can be run alone
        assert sum(row["introduced"] is not None for row in report["ops"]) >= len(report["ops"]) // 3


def test_int8_error_ranking_agrees_with_onnxruntime_qdq_loss_debug():
    """Cross-check with a peer: onnxruntime.quantization.qdq_loss_debug's xmodel_err (SQNR of the float
    model's tensor vs the QDQ model's dequantized tensor) on the same data ranks tensors as our SNR does."""
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)
    from scipy.stats import spearmanr

    spec = resolve_model("resnet_tiny")
    exported = export(spec)
    calibration = calibration_set(spec)
    session = get_backend("onnxruntime").load(exported, "cpu", "int8", calibration=calibration)
    data = embedded_benchmark("classify").limit(32)
    report = drift_report(spec, "onnxruntime", "cpu", "int8", data, batch_size=32, calibration=calibration,
                          tap_method="graph-outputs", progress=False)


    (batch,) = list(iter_batches(data, spec.profile, 32, []))
    feeds = [{exported.input_name: batch.tensor[k:k + 1]} for k in range(len(batch.tensor))]

    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

        def rewind(self):
            self.items = iter(feeds)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        float_aug, qdq_aug = Path(folder) / "float.onnx", Path(folder) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(exported.onnx_path), str(float_aug))
        modify_model_output_intermediate_tensors(str(session.graph), str(qdq_aug))
        float_acts = collect_activations(str(float_aug), Reader())
        qdq_acts = collect_activations(str(qdq_aug), Reader())
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    ours = {row["tensor"]: row["snr_db"] for row in report["ops"] if row["observable"] and row["snr_db"] is not None}
    common = sorted(set(ours) & {name for name, e in errors.items() if "xmodel_err" in e})
    assert len(common) >= 8, common
    rho = spearmanr([ours[n] for n in common], [float(errors[n]["xmodel_err"]) for n in common]).statistic
    print(f"spearman {rho:.3f} over {len(common)} tensors")
    assert rho >= 0.8, (rho, common)


@pytest.mark.needs_device("tensorrt", "cuda")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_drift_on_tensorrt_marks_outputs_and_runs_ops_alone(precision):
    spec = resolve_model("resnet_tiny")
    report = drift_report(spec, "tensorrt", "cuda", precision, embedded_benchmark("classify").limit(8), batch_size=8,
                          calibration=calibration_set(spec) if precision == "int8" else None, progress=False)
    assert report["tap_method"] in ("graph-outputs", "kernel-boundary")
    assert any(row["observable"] for row in report["ops"]) and any(row["introduced"] is not None for row in report["ops"])


def test_weights_and_shapes_are_never_taken_for_activations_whichever_exporter_made_the_graph(tmp_path):
    """Two convolutions without biases, each followed by batch norm with zero bias and mean: folded, both
    biases are zero, and the TorchScript exporter keeps one and makes the other an `Identity` of it. Drift
    on that graph fed the weight's Identity to the ops alone as if it were batch-major (ONNX Runtime:
    "Got: 4 Expected: 8"). The same model from both exporters: the same activations observed, each op
    run alone, and no tensor computed from weights or shapes alone among them."""
    import torch

    from harness.onnx_graph import float_tensors

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
            self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
            return self.fc(x.flatten(2).mean(2))

    torch.manual_seed(0)
    net, example = Net().eval(), torch.randn(1, 3, 32, 32)
    reports = {}
    for dynamo in (False, True):
        path = tmp_path / f"{'dynamo' if dynamo else 'torchscript'}.onnx"
        torch.onnx.export(net, (example,), str(path), dynamo=dynamo, opset_version=17 if not dynamo else 18,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes=None if dynamo else {"input": {0: "batch"}, "logits": {0: "batch"}},
                          **({"dynamic_shapes": {"x": {0: torch.export.Dim("batch")}}} if dynamo else {}))
        proto = onnx.load(str(path))
        shapes = [node for node in proto.graph.node if node.op_type == "Shape"]
        weights = {init.name for init in proto.graph.initializer}
        constant = [node for node in proto.graph.node if node.op_type in ("Identity", "Constant")
                    and all(name in weights for name in node.input)]
        if not dynamo:
            assert constant, "the TorchScript exporter no longer makes an Identity of a de-duplicated weight"
        taken = {t.name for t in float_tensors(proto)}
        assert not taken & {out for node in constant + shapes for out in node.output}
        spec = resolve_model(str(path))
        reports[path.stem] = drift_report(spec, "onnxruntime", "cpu", "fp16", embedded_benchmark("classify").limit(8),
                                          batch_size=4, tap_method="graph-outputs", progress=False)
    kinds = {name: [row["op_type"] for row in report["ops"]] for name, report in reports.items()}
    for name, report in reports.items():
        assert [k for k in kinds[name] if k in ("Conv", "Relu")] == ["Conv", "Relu", "Conv", "Relu"], kinds[name]
        assert all(row["observable"] and row["introduced"] is not None for row in report["ops"]), name
        assert report["ops"][-1]["tensor"] == "logits" and report["first_divergence"] is None


# tensors that no kernel of ORT's optimised graph outputs, in any layout: a Conv's output that the Add after it
# takes into the Conv's own kernel (its fused Sum input; what the kernel outputs is the sum)
FUSED_BY_ORT = {"resnet_tiny": {"getitem_6", "getitem_15", "getitem_24", "getitem_33"},
                "mobilenetv2_tiny": {"getitem_27", "getitem_45", "getitem_63"},
                "fcos_tiny": {"getitem_9", "getitem_18", "getitem_27", "getitem_36", "upsample_nearest2d",
                              "upsample_nearest2d_1", "conv2d_22", "conv2d_27", "conv2d_32"}}


@pytest.mark.parametrize("model", ["resnet_tiny", "mobilenetv2_tiny", "fcos_tiny"])
def test_default_drift_on_ort_fp16_observes_the_tensors_ort_computes_without_perturbing_its_outputs(model):
    """Marking every tensor as a graph output changes what ONNX Runtime computes in FP16 (it must round each
    to FP16), so drift falls back to kernel-boundary taps. Those read ORT's own optimised graph, not
    optimised again, where ORT runs each FP16 op in FP32 and renames its output
    `InsertedPrecisionFreeCast_<name>` (that name holds the tensor's deployed value), and keeps some tensors
    only in its blocked NCHWc layout (read through a ReorderOutput added after the kernel). Before, 1 of 29
    resnet_tiny tensors was observable; now every tensor is but those ORT fuses away, each named with why,
    and the tapped outputs equal the untapped ones exactly."""
    import onnxruntime as ort

    spec = resolve_model(model)
    data = embedded_benchmark(spec.task).limit(8)
    report = drift_report(spec, "onnxruntime", "cpu", "fp16", data, batch_size=4, progress=False)
    assert report["tap_method"] == "kernel-boundary" and report["taps_perturb"]["fallback_from"]["ok"] is False
    assert report["taps_perturb"]["ok"] and report["taps_perturb"]["max_abs"] == 0.0
    assert {u["tensor"] for u in report["unobservable"]} == FUSED_BY_ORT[model]
    assert report["observed_tensors"] == report["graph_tensors"] - len(FUSED_BY_ORT[model])
    assert all("fused ONNX Runtime kernel" in u["reason"] for u in report["unobservable"])
    # each tap is the tensor it names: ORT itself, asked for every tensor as a graph output of the FP16 graph,
    # gives the same values up to rounding them to FP16 (a tap of the wrong tensor, e.g. a Conv's output
    # where the kernel outputs the sum after it, is off by the whole other term)
    from harness.onnx_graph import with_outputs

    candidate = get_backend("onnxruntime").load(export(spec), "cpu", "fp16")
    observed = [row["tensor"] for row in report["ops"] if row["observable"]]
    batch = next(iter_batches(data, spec.profile, 4, []))
    feeds = {export(spec).input_name: batch.tensor}
    tapped = candidate.run(feeds, taps=observed, tap_method="kernel-boundary")
    marked = ort.InferenceSession(str(with_outputs(candidate.graph, observed)), providers=["CPUExecutionProvider"])
    for name, value in zip(observed, marked.run(observed, feeds)):
        value = value.astype(np.float64)
        assert np.linalg.norm(tapped[name] - value) <= 2e-3 * np.linalg.norm(value), name
    # the outputs' error, recomputed from untapped runs of the FP16 session and of the FP32 export
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensor reference's setting
    fp32 = ort.InferenceSession(str(export(spec).onnx_path), options, providers=["CPUExecutionProvider"])
    worst = {}
    for batch in iter_batches(data, spec.profile, 4, []):
        feeds = {export(spec).input_name: batch.tensor}
        got, want = candidate.run(feeds), dict(zip(spec.output_names, fp32.run(spec.output_names, feeds)))
        for name in spec.output_names:
            worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(got[name].astype(np.float64) - want[name]))))
    rows = {row["tensor"]: row for row in report["ops"]}
    for name, error in worst.items():
        assert rows[name]["observable"] and rows[name]["max_abs"] == pytest.approx(error, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("model", ["resnet_tiny", "fcos_tiny"])
def test_default_drift_on_openvino_fp16_reads_its_taps_without_changing_what_it_computes(model):
    """OpenVINO keeps a node that feeds a Result at f32, so a tap added as a plain output changed what a bf16
    model computes (resnet_tiny's logits moved by 0.022 with every kernel tapped). Taps are read through a
    Convert to the precision the model runs in, and a tap that still changes the computation (a Conv output
    the next Conv adds in place) is found by halving the tap set and left unobserved, with how much it moves
    the outputs. What is observed is then the deployed computation: the outputs exactly as untapped."""
    spec = resolve_model(model)
    data = embedded_benchmark(spec.task).limit(8)
    report = drift_report(spec, "openvino", "cpu", "fp16", data, batch_size=4, progress=False)
    assert report["taps_perturb"]["ok"] and report["taps_perturb"]["max_abs"] == 0.0
    candidate = get_backend("openvino").load(export(spec), "cpu", "fp16")
    kinds = {node.output[0]: node.op_type for node in onnx.load(str(export(spec).onnx_path)).graph.node}
    moved = [u["tensor"] for u in report["unobservable"] if u["reason"].startswith("tapping it changes")]
    fused = [u["tensor"] for u in report["unobservable"] if "fused inside an OpenVINO kernel" in u["reason"]]
    assert len(moved) + len(fused) == len(report["unobservable"])
    assert report["observed_tensors"] == report["graph_tensors"] - len(report["unobservable"])
    assert not any(kinds[name] == "Relu" for name in moved)  # read through the Convert, a Relu's tap is exact
    feeds = {export(spec).input_name: next(iter_batches(data, spec.profile, 4, [])).tensor}
    plain = candidate.run(feeds)
    for name in moved:  # each, tapped alone, does move the outputs
        tapped = candidate.run(feeds, taps=[name], tap_method="kernel-boundary")
        assert max(float(np.abs(tapped[o] - plain[o]).max()) for o in candidate.output_names) > 0, name
    observed = [row["tensor"] for row in report["ops"] if row["observable"]]
    tapped = candidate.run(feeds, taps=observed, tap_method="kernel-boundary")
    assert all(np.array_equal(tapped[o], plain[o]) for o in candidate.output_names)
    if candidate.precision_effective == "bf16":  # each tap holds bf16 values, widened exactly
        assert all(not (tapped[name].view(np.uint32) & 0xFFFF).any() for name in observed
                   if name not in candidate.output_names)


def test_a_tiny_memory_budget_gives_the_statistics_of_a_large_one():
    """A budget below one sample's taps runs each batch of 8 through the taps one sample at a time: the same
    tensors are observed, with the same largest errors (exactly: on one thread ORT computes each sample alike
    whatever the batch; on more, its work split follows the batch), and the same relative errors up to the
    float32 dot products' grouping of the batch."""
    spec = resolve_model("resnet_tiny")
    data = embedded_benchmark(spec.task).limit(20)
    tiny, large = (drift_report(spec, "onnxruntime", "cpu", "fp16", data, batch_size=8, threads=1, progress=False,
                                memory_budget=budget) for budget in (1, None))
    per_sample = tiny["tapped_run"]["bytes_per_sample"]
    assert tiny["tapped_run"] == {"samples": 1, "bytes_per_sample": per_sample, "budget_bytes": 1}
    assert large["tapped_run"] == {"samples": 2**31 // per_sample, "bytes_per_sample": per_sample,
                                   "budget_bytes": 2**31}  # the default: 2 GB
    # three copies of every graph tensor of one sample at float32 (reference, candidate, ops alone)
    graph = onnx.shape_inference.infer_shapes(onnx.load(export(spec).onnx_path)).graph
    sizes = {v.name: int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim[1:]]))
             for v in [*graph.value_info, *graph.output]}
    assert per_sample == 3 * 4 * sum(sizes[row["tensor"]] for row in large["ops"])
    assert tiny["observed_tensors"] == large["observed_tensors"] > 20 and tiny["unit_samples"] == 20
    for a, b in zip(tiny["ops"], large["ops"]):
        assert (a["tensor"], a["observable"], a["max_abs"], a["introduced_max_abs"]) == \
            (b["tensor"], b["observable"], b["max_abs"], b["introduced_max_abs"])
        for key in ("rel_l2", "snr_db", "introduced", "mean_abs"):
            assert (a[key] is None) == (b[key] is None) and (a[key] is None or a[key] == pytest.approx(b[key], rel=1e-5)), \
                (a["tensor"], key)


def test_a_tensor_ort_keeps_only_in_its_nchwc_layout_is_read_back_exactly():
    """resnet_tiny's stem MaxPool runs as ORT's NCHWc MaxPool, whose blocked output only the next NCHWc Conv
    reads. Tapped through a ReorderOutput after it, it equals torch's max pool of the tapped ReLU before it,
    bit for bit (a max pool is exact): the layout was undone, not approximated."""
    import torch

    spec = resolve_model("resnet_tiny")
    candidate = get_backend("onnxruntime").load(export(spec), "cpu", "fp16")
    assert "max_pool2d" in candidate._blocked_names(["max_pool2d"]) and not candidate._kernel_names(["max_pool2d"])
    x = np.random.default_rng(0).standard_normal((2, 3, spec.profile.input_size, spec.profile.input_size))
    tapped = candidate.run({"input": x.astype(np.float32)}, taps=["relu", "max_pool2d"], tap_method="kernel-boundary")
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(tapped["relu"]), 3, stride=2, padding=1).numpy()
    assert tapped["max_pool2d"].shape == expected.shape and np.array_equal(tapped["max_pool2d"], expected)
