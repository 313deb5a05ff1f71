"""Artefacts derived from the exported model by a backend's own toolchain (a QDQ graph, an FP16 graph,
a compiled library, an engine), cached by content hash so a second run never rebuilds them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.cache import cached_folder, key_of, tool_versions
from harness.calibration import NO_CALIBRATION
from harness.errors import BackendUnavailable


def derived_file(model, kind: str, filename: str, params: dict, build: Callable[[Path], None],
                 tools: tuple[str, ...] = ("onnx",)) -> Path:
    """cache/<kind>/<hash(onnx sha, params, the versions of the packages `tools` that make it)>/<filename>,
    made by build(path) on first use."""
    key = key_of(model.sha256, kind, params, tool_versions(*tools))
    folder, _ = cached_folder(kind, key, lambda staging: build(staging / filename))
    return folder / filename


def quantized_onnx(model, calibration, quantizer: str, quantize: Callable[[Path, object, Path], None],
                   tools: tuple[str, ...]) -> Path:
    """The model quantized to INT8 QDQ ONNX by `quantize(fp32_onnx, calibration, out)`, cached by
    (model, calibration data, quantizer, the versions of the packages `tools` it quantizes with)."""
    if calibration is None:
        raise BackendUnavailable(NO_CALIBRATION)
    return derived_file(model, f"int8-{quantizer}", "model.onnx", {"calibration": calibration.sha256},
                        lambda out: quantize(model.onnx_path, calibration, out), tools)


def weight_quantized(model, quantizer: str, filename: str, quantize: Callable[[Path, Path], None],
                     tools: tuple[str, ...]) -> Path:
    """The model with INT8 weights and no calibration (ORT dynamic quantization, NNCF weight compression):
    how runtimes quantize a transformer, whose activations (attention scores, LayerNorm inputs) have
    outliers that per-tensor static INT8 clips. Cached by (model, quantizer, the tools' versions)."""
    return derived_file(model, f"int8-{quantizer}", filename, {}, lambda out: quantize(model.onnx_path, out), tools)


def convert_fp16(onnx_path: Path, out: Path) -> None:
    """onnxconverter-common's conversion; its warnings (one per value outside float16's range, dozens per
    model) go to `conversion.log` beside the graph, and one line says how many there were."""
    import sys

    import onnx
    from onnxconverter_common import float16

    from harness.files import output_captured_in

    log = out.with_name("conversion.log")

    def loaded():
        proto = onnx.load(str(onnx_path))
        for k, node in enumerate(proto.graph.node):
            # the converter names the Casts it inserts after the node they serve: two unnamed nodes (legal in
            # ONNX, common in hand-made or edited graphs) would give two Casts one name, an invalid graph
            node.name = node.name or f"harness_unnamed_{k}_{node.op_type}"
        return proto

    with output_captured_in(log):
        try:
            converted = float16.convert_float_to_float16(loaded(), keep_io_types=True)
        except AttributeError:
            # its last step, removing Cast(fp16) -> Cast(fp32) pairs, crashes when a Cast feeds several nodes
            # ("'list' object has no attribute 'input'": torchvision's Faster R-CNN; open-edge-platform/geti#5439):
            # convert without that step, leaving those pairs, which cost time and change no value
            cleanup, float16.remove_unnecessary_cast_node = float16.remove_unnecessary_cast_node, lambda graph: None
            try:
                converted = float16.convert_float_to_float16(loaded(), keep_io_types=True)
            finally:
                float16.remove_unnecessary_cast_node = cleanup
    _cast_to_what_the_converter_marked(converted)
    onnx.save(converted, str(out))
    warned = sum("warn" in line.lower() for line in log.read_text(errors="replace").splitlines())
    if warned:
        print(f"harness: note: FP16 conversion of {Path(onnx_path).name}: {warned} warning(s), e.g. values clamped "
              "to float16's range (all in conversion.log beside the FP16 graph in the harness cache)", file=sys.stderr)


def _cast_to_what_the_converter_marked(proto) -> None:
    """onnxconverter-common 1.15+ marks a graph's own Cast-to-float32 output float16 without changing the Cast
    (microsoft/onnxconverter-common#320, fix open in #326): runtimes refuse the graph ("Type (tensor(float16))
    of output arg ... does not match"). Its 1.14 did what this does: such a Cast casts to float16."""
    from onnx import TensorProto

    for graph in _graphs(proto.graph):  # an If's branches too (torchvision's Faster R-CNN)
        marked = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
        _cast_as_marked(graph, marked, TensorProto)


def _graphs(graph) -> list:
    """The graph and every subgraph in it (If branches, Loop and Scan bodies), depth first."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                found += _graphs(sub)
    return found


def _cast_as_marked(graph, marked: dict, TensorProto) -> None:
    for node in graph.node:
        if marked.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
        elif node.op_type == "ConstantOfShape":
            _fill_in_float16(node)


def _fill_in_float16(node) -> None:
    """The same for a ConstantOfShape the converter marks float16: its fill value stays float32, or absent (a
    float32 zero by the ONNX default; torchvision's swin_t exports three), and runtimes refuse the graph (ORT:
    "Type (tensor(float16)) of output arg ... does not match"; TVM: ScatterND's data float32, updates
    float16). The fill becomes that value in float16."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    values = [a for a in node.attribute if a.name == "value"]
    if values and values[0].t.data_type != TensorProto.FLOAT:
        return
    fill = numpy_helper.to_array(values[0].t).astype(np.float16) if values else np.zeros(1, np.float16)
    for attribute in values:
        node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(fill)))


def fp16_onnx(model) -> Path:
    """The graph with float16 weights and activations (onnxconverter-common; inputs/outputs stay float32)."""
    return derived_file(model, "fp16-onnxconverter", "model.onnx",
                        {"keep_io_types": True, "unnamed_nodes": "named", "casts": "as-marked-in-subgraphs",
                         "constant_of_shape": "as-marked"},
                        lambda out: convert_fp16(model.onnx_path, out), ("onnxconverter-common", "onnx"))
