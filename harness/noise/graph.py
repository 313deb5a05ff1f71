"""Op-semantics variants as rewrites of the exported ONNX graph: pooling ceil mode, upsample mode.

A rewrite returns a new graph file (cached by content hash) that any ONNX backend runs; intermediate
shape annotations are dropped, since a ceil-mode change alters every shape downstream.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.artifacts import derived_file
from harness.export import file_sha256

POOL_OPS = ("MaxPool", "AveragePool")
COORDINATE_MODES = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel")


def _set_attribute(node, name: str, value) -> None:
    import onnx

    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(onnx.helper.make_attribute(name, value))


MERGE_OPS = ("Add", "Sub", "Mul", "Div", "Concat")
# part of a rewritten graph's cache key: a cache filled by an older rewrite is not taken for this one's
# (2: a Resize feeding a channel Concat with several partners is re-linked too)
REWRITER_VERSION = 2


def _resize_to_partner(proto) -> int:
    """Re-links each Resize that feeds a merge (an FPN's `lateral + upsample(top)`, an ASPP's pooled branch
    concatenated with its convolutions) to the runtime size of the tensor it merges with; returns how many. An exporter bakes the top-down size into the graph (a
    constant, or arithmetic on the input's shape), so after a ceil-mode flip makes a level odd-sized
    (16 -> 17) the baked 2x no longer matches the lateral. The eager model resizes to
    `lateral.shape[-2:]` (torchvision's FPN), which is what this restores: the rewritten graph computes
    what PyTorch computes with `ceil_mode` flipped. Needs Shape's start/end (opset 15)."""
    import onnx
    from onnx import helper

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 15:
        return 0
    nodes = list(proto.graph.node)
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for n in nodes if n.op_type == "Constant" for out in n.output}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    relinked = 0
    for resize in [n for n in nodes if n.op_type == "Resize"]:
        users = consumers.get(resize.output[0], [])
        if len(users) != 1 or users[0].op_type not in MERGE_OPS:
            continue
        merge = users[0]
        partners = [name for name in merge.input if name != resize.output[0] and name and name not in constants]
        # a channel Concat (an ASPP's image-pooling branch beside its convolutions): every partner has the size
        channel_concat = merge.op_type == "Concat" and any(a.name == "axis" and helper.get_attribute_value(a) in (1, -3)
                                                           for a in merge.attribute)
        if len(partners) != 1 and not (channel_concat and partners):
            continue
        stem = f"{resize.name or resize.output[0]}_to_partner"
        sizes = [helper.make_node("Shape", [resize.input[0]], [f"{stem}_nc"], name=f"{stem}_nc", start=0, end=2),
                 helper.make_node("Shape", [partners[0]], [f"{stem}_hw"], name=f"{stem}_hw", start=2),
                 helper.make_node("Concat", [f"{stem}_nc", f"{stem}_hw"], [f"{stem}_sizes"], name=f"{stem}_sizes",
                                  axis=0)]
        del resize.input[1:]
        resize.input.extend(["", "", f"{stem}_sizes"])
        # the partner may be computed after the Resize: move the Resize next to the merge, its one user
        proto.graph.node.remove(resize)
        position = list(proto.graph.node).index(merge)
        for offset, node in enumerate([*sizes, resize]):
            proto.graph.node.insert(position + offset, node)
        relinked += 1
    onnx.checker.check_model(proto)
    return relinked


def add_flip_test(proto, x_output: str, y_output: str, flip_pairs: list) -> int:
    """Makes a SimCC keypoint graph run flip test, as mmpose's `flip_test=True`: the batch and its horizontal
    mirror run together, the mirror's x bins are reversed and its left/right keypoints swapped (mmpose's
    flip_vectors), and the two are averaged. Returns the number of nodes added. Needs Split's num_outputs
    (opset 18)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    image = graph.input[0].name
    fed = f"{image}_and_mirror"
    for node in graph.node:
        node.input[:] = [fed if name == image else name for name in node.input]
    keypoints = next(o for o in graph.output if o.name == x_output).type.tensor_type.shape.dim[1].dim_value
    order = list(range(keypoints))
    for left, right in flip_pairs:
        order[left], order[right] = right, left
    constants = {"flip_order": np.array(order, np.int64), "flip_start": np.array([-1], np.int64),
                 "flip_end": np.array([-2 ** 62], np.int64), "flip_step": np.array([-1], np.int64),
                 "flip_width_axis": np.array([3], np.int64), "flip_bin_axis": np.array([2], np.int64),
                 "flip_half": np.array(0.5, np.float32)}
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    head = [helper.make_node("Slice", [image, "flip_start", "flip_end", "flip_width_axis", "flip_step"],
                             [f"{image}_mirror"], name="flip_test_mirror"),
            helper.make_node("Concat", [image, f"{image}_mirror"], [fed], name="flip_test_batch", axis=0)]
    tail = []
    for output, reverse in ((x_output, True), (y_output, False)):
        both = f"{output}_both"
        for node in graph.node:
            node.output[:] = [both if name == output else name for name in node.output]
        tail.append(helper.make_node("Split", [both], [f"{output}_plain", f"{output}_mirror"], axis=0,
                                     num_outputs=2, name=f"flip_test_split_{output}"))
        swapped = f"{output}_swapped"
        tail.append(helper.make_node("Gather", [f"{output}_mirror", "flip_order"], [swapped], axis=1,
                                     name=f"flip_test_swap_{output}"))
        if reverse:
            tail.append(helper.make_node("Slice", [swapped, "flip_start", "flip_end", "flip_bin_axis", "flip_step"],
                                         [f"{output}_back"], name=f"flip_test_reverse_{output}"))
            swapped = f"{output}_back"
        tail.append(helper.make_node("Add", [f"{output}_plain", swapped], [f"{output}_sum"], name=f"flip_test_add_{output}"))
        tail.append(helper.make_node("Mul", [f"{output}_sum", "flip_half"], [output], name=f"flip_test_mean_{output}"))
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return len(head) + len(tail)


def rewrite(proto, ceil_mode: bool | None = None, resize_mode: str | None = None,
            coordinate_mode: str | None = None, flip_test: tuple | None = None) -> int:
    """Rewrites pooling / Resize attributes in place, or adds flip test (`flip_test`: add_flip_test's
    arguments, x output, y output, flip pairs); returns the number of nodes changed or added."""
    changed = add_flip_test(proto, *flip_test) if flip_test else 0
    if ceil_mode is not None and any(node.op_type in POOL_OPS for node in proto.graph.node):
        changed += _resize_to_partner(proto)
        for output in proto.graph.output:  # the declared output shapes were the floor-mode ones
            output.type.tensor_type.ClearField("shape")
    for node in proto.graph.node:
        if ceil_mode is not None and node.op_type in POOL_OPS:
            _set_attribute(node, "ceil_mode", int(ceil_mode))
            changed += 1
        if node.op_type == "Resize" and (resize_mode or coordinate_mode):
            if resize_mode:
                _set_attribute(node, "mode", resize_mode)
                if resize_mode == "nearest":
                    _set_attribute(node, "nearest_mode", "round_prefer_floor" if coordinate_mode not in
                                   (None, "asymmetric") else "floor")
            if coordinate_mode:
                _set_attribute(node, "coordinate_transformation_mode", coordinate_mode)
            changed += 1
    del proto.graph.value_info[:]  # always: the baseline goes through the same path as its variants
    return changed


@lru_cache(maxsize=8)
def _static_shapes(onnx_path: str):
    """(nodes, {tensor: shape}) of a graph at batch 1, for every tensor ONNX shape inference resolves. Cached:
    every rewrite of an axis is compared with the same baseline file (rewrites are content-addressed)."""
    import onnx

    proto = onnx.load(onnx_path, load_external_data=False)  # shapes need no weights
    for graph_input in proto.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # a symbolic batch would leave every shape unresolved
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    known = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            known[value.name] = [d.dim_value for d in dims]
    return list(inferred.graph.node), known


def first_reshaped_tensor(baseline_path: Path, candidate_path: Path) -> dict | None:
    """The first tensor, in graph order, whose shape differs between two graphs of one model (a rewrite and
    its baseline): {"tensor", "op_type", "shapes": [baseline, candidate] per sample}; None when every shape
    that inference resolves agrees. Where a ceil-mode flip starts to change the network's geometry, even
    when the outputs keep their shape (a classifier's global pooling)."""
    _, baseline = _static_shapes(str(baseline_path))
    nodes, candidate = _static_shapes(str(candidate_path))
    for node in nodes:
        for name in node.output:
            # per sample: flip test runs each crop twice (batch 2), which reshapes nothing
            if name in baseline and name in candidate and baseline[name][1:] != candidate[name][1:]:
                return {"tensor": name, "op_type": node.op_type, "shapes": [baseline[name][1:], candidate[name][1:]]}
    return None


def count_ops(onnx_path: Path, op_types) -> int:
    import onnx

    return sum(node.op_type in op_types for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def rewritten_model(exported, **changes):
    """The exported model with `changes` applied to its graph (an ExportedModel over the new file). With no
    changes it is the model-stage baseline: the same graph through the same rewrite path."""
    import onnx

    def build(out: Path) -> None:
        proto = onnx.load(str(exported.onnx_path))
        rewrite(proto, **changes)
        onnx.save(proto, str(out))

    path = derived_file(exported, "graph-variants", "model.onnx", {**changes, "rewriter": REWRITER_VERSION}, build)
    return dataclasses.replace(exported, onnx_path=path, sha256=file_sha256(path), exporter=exported.exporter,
                               cache_hit=True)
