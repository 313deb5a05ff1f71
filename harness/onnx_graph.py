"""Graph surgery shared by taps, drift and repro: which tensors a graph has, the same graph with extra
outputs, and sub-graphs cut between named tensors.

A sub-graph is cut from a *deployed* graph (the FP16 or QDQ file a backend really compiles) by walking
back from its target tensors until the walk meets a stop tensor (a tensor of the reference graph that is
fed instead), an initializer or a Constant. Cutting the deployed graph rather than the exported one keeps
what the deployment adds around an op (Q/DQ pairs, casts, ops a quantizer pre-processing fused) inside
the sub-graph, so running it alone on the candidate reproduces what the candidate does there.

Sub-graph inputs are always float32 (the reference's values); where the deployed tensor is another type
(float16 in an FP16 graph) a Cast sits right after the input, so sessions keep their float32 contract.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FLOAT_TYPES = (1, 10, 16, 11)  # FLOAT, FLOAT16, BFLOAT16, DOUBLE: tensors whose error can be measured


def load(path: Path):
    import onnx

    return onnx.load(str(path))


def _inferred_values(proto):
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - untyped tensors are simply not tappable; no reason to fail here
        inferred = proto
    return [v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
            if v.type.HasField("tensor_type")]


def tensor_types(proto) -> dict[str, int]:
    """{tensor: onnx elem type} for every tensor shape inference can type (inputs and outputs included)."""
    types = {value.name: value.type.tensor_type.elem_type for value in _inferred_values(proto)}
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
    return types


def tensor_shapes(proto) -> dict[str, list]:
    """{tensor: dims (int, or the symbolic name, or None)} where shape inference knows the rank. Cut
    sub-graphs declare these on their inputs: OpenVINO and TVM need at least the rank."""
    shapes = {}
    for value in _inferred_values(proto):
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


@dataclass(frozen=True)
class GraphTensor:
    """A float tensor a node produces, in topological order."""

    name: str
    node: str
    op_type: str
    index: int          # position of its producer in the graph's (topological) node list
    inputs: tuple[str, ...]


# ops whose outputs follow from their inputs' shapes alone, not their values
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


def float_tensors(proto) -> list[GraphTensor]:
    """Every float activation a node produces, in the graph's topological order (ONNX requires it): the
    tensors whose values follow from the graph inputs' values. What is computed from initializers and
    constants alone (a Constant, the TorchScript exporter's Identity of a de-duplicated weight, arithmetic
    on weights) or from shapes alone (Shape, Size and what follows from them) is a constant of the model:
    it has no batch dimension, and a backend computes it once, if at all."""
    types = tensor_types(proto)
    initializers = {t.name for t in proto.graph.initializer}
    varying = {i.name for i in proto.graph.input} - initializers
    tensors = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type in SHAPE_ONLY_OPS or not any(name in varying for name in node.input):
            continue
        for output in node.output:
            if not output:
                continue
            varying.add(output)
            if types.get(output, 1) in FLOAT_TYPES:
                tensors.append(GraphTensor(output, node.name or output, node.op_type, index,
                                           tuple(i for i in node.input if i)))
    return tensors


def dequantized_aliases(proto) -> dict[str, str]:
    """{tensor: the DequantizeLinear output that stands for it} in a QDQ graph. Downstream ops read a
    quantized tensor through Q -> DQ, and a quantizer may drop a Relu into that pair's clamp (ONNX
    Runtime does), so the value the deployment really carries is the DQ's output, not the name's
    producer; onnxruntime.quantization.qdq_loss_debug aligns the same way."""
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    aliases = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        after = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if after and node.input[0] not in aliases:
            aliases[node.input[0]] = after[0].output[0]
    return aliases


def with_outputs(graph: Path, names: list[str], kind: str = "tapped-graphs") -> Path:
    """The graph with `names` appended to its outputs (after the original ones), cached by content."""
    import onnx

    from harness.cache import cached_folder, key_of, tool_versions
    from harness.export import file_sha256

    def build(staging: Path) -> None:
        proto = load(graph)
        types = tensor_types(proto)
        present = {o.name for o in proto.graph.output}
        for name in names:
            if name not in present:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None))
        onnx.save(proto, str(staging / "model.onnx"))

    folder, _ = cached_folder(kind, key_of(file_sha256(graph), kind, {"outputs": list(names)}, tool_versions("onnx")),
                              build)
    return folder / "model.onnx"


def _producers(proto) -> dict:
    return {output: node for node in proto.graph.node for output in node.output if output}


def cut(proto, targets: list[str], stops: set[str]) -> tuple[list, list[str]]:
    """The nodes (in graph order) on the paths into `targets` that start at a stop tensor, an initializer, a
    Constant or a graph input; and the stop tensors / graph inputs they read (the sub-graph's inputs)."""
    producers = _producers(proto)
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = {i.name for i in proto.graph.input} - initializers
    chosen, inputs, seen = set(), [], set()
    pending = list(targets)
    while pending:
        tensor = pending.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        if tensor in initializers:
            continue
        if (tensor in stops and tensor not in targets) or tensor in graph_inputs:
            inputs.append(tensor)
            continue
        node = producers.get(tensor)
        if node is None:
            raise KeyError(f"tensor {tensor!r} is not produced by any node of the graph")
        if id(node) not in chosen:
            chosen.add(id(node))
            pending.extend(node.input)
            for attribute in node.attribute:  # If/Loop bodies read outer tensors by name
                if attribute.g.node:
                    pending.extend(i for sub in attribute.g.node for i in sub.input)
    nodes = [node for node in proto.graph.node if id(node) in chosen]
    order = {name: index for index, name in enumerate(producers)}
    return nodes, sorted(set(inputs), key=lambda name: order.get(name, -1))


def subgraph_model(proto, units: list[tuple[str, list[str]]], stops: set[str], prefix_units: bool = True):
    """One model holding each unit (target tensor, its stop set) cut from `proto`, side by side and
    independent: unit k's tensors are renamed `u{k}/...`, its outputs are `u{k}/<target>`, and every stop
    tensor it reads is a float32 graph input `ref/<tensor>` shared by all units (cast to the deployed
    tensor's type where that is not float32). Initializers are shared. Returns (model, input tensor names
    in order, output names per unit)."""
    import onnx
    from onnx import helper

    types, shapes = tensor_types(proto), tensor_shapes(proto)
    initializers = {init.name for init in proto.graph.initializer}
    graph = helper.make_graph([], "units", [], [])
    used_inits, inputs_made, outputs = set(), {}, []
    for k, (target, unit_stops) in enumerate(units):
        nodes, reads = cut(proto, [target], unit_stops | stops)
        prefix = f"u{k}/" if prefix_units else ""
        renamed = {}
        for tensor in reads:
            if tensor not in inputs_made:
                source = f"ref/{tensor}"
                graph.input.append(helper.make_tensor_value_info(source, 1, shapes.get(tensor)))
                kind = types.get(tensor, 1)
                if kind != 1:
                    graph.node.append(helper.make_node("Cast", [source], [f"{source}/as_deployed"], to=kind,
                                                       name=f"{source}/cast"))
                    source = f"{source}/as_deployed"
                inputs_made[tensor] = source
            renamed[tensor] = inputs_made[tensor]

        def name_of(tensor: str) -> str:
            if not tensor or tensor in initializers:
                used_inits.add(tensor)
                return tensor
            return renamed.get(tensor, prefix + tensor)

        for node in nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + (node.name or node.output[0])
            del copy.input[:]
            copy.input.extend(name_of(i) for i in node.input)
            del copy.output[:]
            copy.output.extend(prefix + o if o else "" for o in node.output)
            graph.node.append(copy)
        graph.output.append(helper.make_tensor_value_info(prefix + target, types.get(target, 1), shapes.get(target)))
        outputs.append(prefix + target)
    graph.initializer.extend(init for init in proto.graph.initializer if init.name in used_inits)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return model, list(inputs_made), outputs


# compute kernels as a graph, or ONNX Runtime's optimised form of it, names them (any domain: an nchwc Conv
# is a Conv); everything else (activations, pooling, reshapes) is bandwidth, not what a precision is about
INT8_KERNELS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                          "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConvTranspose"})
FLOAT_KERNELS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul",
                           "NhwcFusedConv"})
PRECISION_OF_TYPE = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


def compute_precisions(proto) -> dict[str, int]:
    """{precision: compute ops} of a graph as written: a quantized kernel is int8; a float kernel runs in
    the type of its weight (else of its input), which is what a runtime keeping the graph's types executes.
    A float Conv fed by DequantizeLinear (a QDQ pattern the runtime did not fuse) is fp32, not int8."""
    types = {init.name: init.data_type for init in proto.graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type
                  for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
                  if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type})
    for node in proto.graph.node:  # ops whose output type is known without shape inference
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.output:
            types.setdefault(node.output[0], types.get(node.input[1], 1))  # the scale's type: float
        elif node.op_type == "Cast" and node.output:
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            if to:
                types.setdefault(node.output[0], to)
        elif node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types.setdefault(node.output[0], value.data_type)
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in INT8_KERNELS:
            precision = "int8"
        elif node.op_type in FLOAT_KERNELS:
            typed = [types[name] for name in [*node.input[1:2], *node.input[:1]] if name in types]
            precision = PRECISION_OF_TYPE.get(typed[0], "unknown") if typed else "unknown"
        else:
            continue
        counts[precision] = counts.get(precision, 0) + 1
    return dict(sorted(counts.items()))
