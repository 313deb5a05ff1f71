"""OpenVINO: CPU (GPU/NPU where present). Precision always set through INFERENCE_PRECISION_HINT, since
this CPU defaults to bf16 and silently turns an f16 hint into bf16; the session records what the
compiled model really runs (`precision_effective`). INT8 is NNCF post-training quantization of the
ONNX graph (QDQ ONNX, cached), which OpenVINO compiles; the quantized graph stays ONNX, so it can be
cut into sub-graphs like any other."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends import Backend, Session

# the runtime model's compute kernels and the precisions it names (u8/i8 activations: an int8 kernel)
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")
RUNTIME_PRECISIONS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "u8": "int8", "i8": "int8", "u4": "int4",
                      "i4": "int4"}
# int8, int4: the rest of the graph in f32
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32", "int4": "f32"}
EFFECTIVE = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def _tap_types() -> dict:
    import openvino as ov

    return {"fp16": ov.Type.f16, "bf16": ov.Type.bf16}


class OvSession(Session):
    tap_methods = ("graph-outputs", "kernel-boundary")

    def __init__(self, compiled, device, precision, input_names, output_names, effective, graph=None,
                 config=None, load_precision=None):
        super().__init__("openvino", device, precision, input_names, output_names, effective, graph=graph,
                         load_precision=load_precision)
        self.compiled, self.config = compiled, config
        self.request = compiled.create_infer_request()
        self.ports = {name: compiled.output(name) for name in output_names}

    def _run(self, feeds):
        result = self.request.infer(feeds)
        return {name: np.array(result[port]) for name, port in self.ports.items()}

    def _executed(self):
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in COMPUTE_LAYERS:
                precision = info["runtimePrecision"].astype(str)
                precision = RUNTIME_PRECISIONS.get(precision, precision)
                counts[precision] = counts.get(precision, 0) + 1
        devices = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        total = sum(counts.values())
        return (dict(sorted(counts.items())), {",".join(devices): total}, self.device.upper(),
                "OpenVINO's runtime model (runtimePrecision of each compute layer) and EXECUTION_DEVICES")

    def kernel_tensors(self) -> dict[str, str]:
        """{ONNX tensor: OpenVINO kernel} for the kernels of this (untapped) compile. A kernel's runtime
        info keeps the original ONNX node names it was fused from; its output is the output of the last
        of them in the graph's order (Conv+Relu -> the Relu's tensor)."""
        import onnx

        proto = onnx.load(str(self.graph), load_external_data=False)
        order = {node.name: index for index, node in enumerate(proto.graph.node)}
        outputs = {node.name: node.output[0] for node in proto.graph.node if node.output}
        # a kernel that ends in a QuantizeLinear (a QDQ graph) carries the value its DequantizeLinear gives
        dequantized = {dq.input[0]: dq.output[0] for dq in proto.graph.node if dq.op_type == "DequantizeLinear"}
        outputs = {name: dequantized.get(tensor, tensor) for name, tensor in outputs.items()}
        tensors = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "originalLayersNames" not in info:
                continue
            names = [n for n in info["originalLayersNames"].astype(str).split(",") if n in order]
            if names:
                tensors[outputs[max(names, key=order.get)]] = op.get_friendly_name()
        return tensors

    def _tappable(self, names, method):
        import openvino as ov

        if method == "kernel-boundary":
            present = set(self.kernel_tensors())
            why = "fused inside an OpenVINO kernel (not the last original node of any kernel)"
        else:
            model = ov.Core().read_model(str(self.graph))
            present = {name for op in model.get_ops() for port in op.outputs() for name in port.get_names()}
            why = "not a tensor of the model OpenVINO read (folded or renamed by its ONNX frontend)"
        return [n for n in names if n in present], {n: why for n in names if n not in present}

    def _tap_runner(self, names, method):
        """Each tap read through a Convert to the precision the compiled model runs in (exact: the tensor
        holds values of that precision), not as a plain added output: OpenVINO keeps a node that feeds a
        Result at f32, so a plain tap changed what a bf16 model computes (resnet_tiny: a Relu tapped moved
        the logits by 0.026; through the Convert, by 0)."""
        import openvino as ov
        import openvino.opset13 as ops

        core = ov.Core()
        model = core.read_model(str(self.graph))
        held = _tap_types().get(self.precision_effective)
        taps = [name for name in names if name not in self.output_names]  # an output is read as one already
        if held is None:
            model.add_outputs(taps)
            tap_names = {name: name for name in taps}
        else:
            ports = {name: port for op in model.get_ops() for port in op.outputs() for name in port.get_names()}
            tap_names = {name: f"harness_tap/{name}" for name in taps}
            results = []
            for name in taps:
                result = ops.result(ops.convert(ports[name], held))
                result.output(0).get_tensor().set_names({tap_names[name]})
                results.append(result)
            model.add_results(results)
        compiled = core.compile_model(model, self.device.upper(), self.config)
        request = compiled.create_infer_request()
        outputs = {name: compiled.output(name) for name in self.output_names}
        tapped = {name: compiled.output(tap_names[name]) for name in taps}
        widen = _float32 if held == ov.Type.bf16 else np.array

        def run(feeds):
            result = request.infer(feeds)
            return {**{name: np.array(result[port]) for name, port in outputs.items()},
                    **{name: widen(result[port]) for name, port in tapped.items()}}

        return run


def _float32(bfloat16: np.ndarray) -> np.ndarray:
    """OpenVINO hands a bf16 tensor to numpy as float16 holding the bf16 bits: the bits, widened to float32
    (bf16 is float32's upper half, so this is exact)."""
    return (np.asarray(bfloat16).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def nncf_quantize_onnx(onnx_path: Path, calibration, out: Path) -> None:
    """NNCF post-training quantization of an ONNX model into a QDQ ONNX model."""
    import nncf
    import onnx

    model = onnx.load(str(onnx_path))
    input_name = model.graph.input[0].name
    samples = [{input_name: x} for x in calibration.samples()]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, str(out))


def nncf_compress_weights(onnx_path: Path, out: Path) -> None:
    """NNCF weight compression (INT8 asymmetric weights of every MatMul and embedding, activations in the
    float hint): OpenVINO's recipe for transformers; saved as OpenVINO IR (out: model.xml, beside its .bin)."""
    import nncf
    import openvino as ov

    compressed = nncf.compress_weights(ov.Core().read_model(str(onnx_path)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(compressed, str(out), compress_to_fp16=False)


def nncf_compress_int4(onnx_path: Path, out: Path) -> None:
    """NNCF 4-bit weight compression (symmetric, groups of 32 input channels), NNCF's default split: every
    MatMul that sets the ratio in int4, the embeddings and the last layer kept in int8; saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    compressed = nncf.compress_weights(ov.Core().read_model(str(onnx_path)), mode=nncf.CompressWeightsMode.INT4_SYM,
                                       group_size=32, ratio=1.0)
    ov.save_model(compressed, str(out), compress_to_fp16=False)


class OpenVinoBackend(Backend):
    name = "openvino"
    aliases = ("ov",)
    package = "openvino"
    declared = {"cpu": ("fp32", "fp16", "bf16", "int8", "int4"), "gpu": ("fp32", "fp16", "int8")}
    load_options = ("calibration", "artifact")

    def devices(self) -> list[str]:
        import openvino as ov

        return [d.split(".")[0].lower() for d in ov.Core().available_devices]

    def precisions(self, device: str = "cpu") -> list[str]:
        """The declared precisions this device's OPTIMIZATION_CAPABILITIES can run. fp16 stays offered on a
        bf16-only CPU: OpenVINO runs it as bf16 and precision_effective says so."""
        import openvino as ov

        capabilities = set(ov.Core().get_property(device.upper(), "OPTIMIZATION_CAPABILITIES"))
        needs = {"fp32": set(), "fp16": {"FP16", "BF16"}, "bf16": {"BF16"}, "int8": {"INT8"}, "int4": set()}
        return [p for p in self.declared.get(device, ()) if not needs[p] or needs[p] & capabilities]

    def _load(self, model, device, precision, threads, calibration=None, artifact: Path | None = None,
              **options) -> Session:
        import openvino as ov

        from harness.artifacts import quantized_onnx, weight_quantized

        source = Path(artifact) if artifact else model.onnx_path
        if precision == "int4" and artifact is None:
            if not model.spec.text_inputs:
                from harness.errors import BackendUnavailable

                raise BackendUnavailable("openvino int4: NNCF's 4-bit weight compression is a transformer's (its "
                                         "MatMul weights); this model is not a text model")
            source = weight_quantized(model, "nncf-int4", "model.xml", nncf_compress_int4, ("nncf", "openvino"))
        elif precision == "int8" and artifact is None and model.spec.text_inputs:
            source = weight_quantized(model, "nncf-weights", "model.xml", nncf_compress_weights,
                                      ("nncf", "openvino"))
        elif precision == "int8" and artifact is None:
            source = quantized_onnx(model, calibration, "nncf", nncf_quantize_onnx, ("nncf", "openvino", "onnx"))
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(source)), device.upper(), config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        effective = EFFECTIVE.get(hint, hint)
        if precision in ("int8", "int4"):  # quantized ops in int8 (int4), the rest at the f32 hint
            effective = precision if effective == "fp32" else f"{precision}+{effective}"
        inputs = [port.get_any_name() for port in compiled.inputs]
        # a port may carry several tensor names (the graph output's and the node's it is an alias of)
        outputs = [name for name in model.output_names if any(name in p.get_names() for p in compiled.outputs)]
        # a cut of the NNCF graph loads at fp32 (the int8 hint is f32); otherwise the hint is the precision
        return OvSession(compiled, device, precision, inputs, outputs or [p.get_any_name() for p in compiled.outputs],
                         effective, Path(source), config, "fp32" if precision in ("int8", "int4") else precision)
