"""Op-semantics variants as rewrites of the exported ONNX graph: pooling ceil mode, upsample mode.

A rewrite returns a new graph file (cached by content hash) that any ONNX backend runs; intermediate
shape annotations are dropped, since a ceil-mode change alters every shape downstream.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

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


def rewrite(proto, ceil_mode: bool | None = None, resize_mode: str | None = None,
            coordinate_mode: str | None = None) -> int:
    """Rewrites pooling / Resize attributes in place; returns the number of nodes changed."""
    changed = 0
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

    path = derived_file(exported, "graph-variants", "model.onnx", changes, build)
    return dataclasses.replace(exported, onnx_path=path, sha256=file_sha256(path), exporter=exported.exporter,
                               cache_hit=True)
