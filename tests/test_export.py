"""Export once: cached by content hash, checked, with a name map to torch module paths."""
import json

import numpy as np
import onnx
import pytest
import torch

from harness.export import export
from harness.model import resolve_model


def test_second_export_is_a_cache_hit_and_the_file_is_valid(tmp_path):
    spec = resolve_model("resnet_tiny")
    first = export(spec, cache_dir=tmp_path)
    mtime = first.onnx_path.stat().st_mtime_ns
    second = export(spec, cache_dir=tmp_path)
    assert not first.cache_hit and second.cache_hit
    assert second.onnx_path == first.onnx_path and second.onnx_path.stat().st_mtime_ns == mtime
    assert second.sha256 == first.sha256
    proto = onnx.load(str(first.onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert first.exporter == "dynamo" and first.opset == 18
    meta = json.loads((first.onnx_path.parent / "export.json").read_text())
    assert meta["sha256"] == first.sha256


def test_a_changed_weight_is_a_new_export(tmp_path):
    spec = resolve_model("resnet_tiny")
    state = spec.load_torch().state_dict()
    state["fc.bias"] = state["fc.bias"] + 1.0
    changed = tmp_path / "changed.pt"
    torch.save(state, changed)
    a = export(spec, cache_dir=tmp_path / "c")
    b = export(resolve_model("resnet_tiny", checkpoint=changed), cache_dir=tmp_path / "c")
    assert a.onnx_path != b.onnx_path and not b.cache_hit


def test_name_map_points_at_torch_modules(tmp_path):
    exported = export(resolve_model("resnet_tiny"), cache_dir=tmp_path)
    proto = onnx.load(str(exported.onnx_path))
    modules = dict(resolve_model("resnet_tiny").load_torch().named_modules())
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for node in convs:
        module = exported.module_of(node.output[0])
        assert module in modules, (node.name, module)
    # BN is folded into the conv: the fused output is the BN module's output
    mapped = {exported.module_of(n.output[0]) for n in convs}
    assert "layer1.bn1" in mapped and "fc" in set(exported.name_map["tensors"].values())


@pytest.mark.parametrize("fill", [None, 0.5])
def test_fp16_conversion_of_constant_of_shape_gives_a_graph_runtimes_load(tmp_path, fill):
    """onnxconverter-common marks a ConstantOfShape's output float16 but leaves its fill float32, or absent (a
    float32 zero): ONNX Runtime refused torchvision's swin_t at FP16 and TVM's ScatterND mixed the types."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from harness.artifacts import convert_fp16

    value = [] if fill is None else [numpy_helper.from_array(np.array([fill], np.float32))]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("ConstantOfShape", ["shape"], ["c"], **({"value": value[0]} if value else {})),
             helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    convert_fp16(tmp_path / "m.onnx", tmp_path / "fp16.onnx")
    x = np.array([[1.0, 2.0, -3.0], [0.25, 4.0, 8.0]], np.float32)
    session = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + (fill or 0.0))
