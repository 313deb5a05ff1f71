"""The inputs of a user's `.onnx` file: which one is the image, what every other one is fed, and the batch.

Exported graphs often take more than the image: an image size, a scale factor, a threshold (PaddleDetection's
`im_shape`/`scale_factor`, detectors exported with their resize inside). The user declares each one by name,
`--input NAME=VALUE` on the command line or a profile's `[inputs]` table:
  `NAME=1x3x640x640` (an `x`-separated shape): NAME is the image input, of that shape (its dynamic dimensions
                     resolved; the image's H and W become the profile's input_size);
  `NAME=[640, 640]`, `NAME=0.5` (a number or a JSON list): a constant fed with every sample, in the input's
                     own element type; where the input has one more (leading, batch) dimension than the
                     value, the value is repeated for each sample.
The harness binds the constants into a derived graph, once, cached by content (`bound_graph`): each input
becomes a Constant, expanded to the image's batch where it has one. Binding rather than feeding at every
call: every consumer of the graph (each backend, both quantisers' calibration readers, drift's tapped and cut
graphs, repro's reduced graphs, the inputs exported for a target) then sees the one image input it handles,
and a declared constant is, by declaration, the same for every sample. A runtime may fold what the constant
feeds; the report lists each bound input and value (`model.bound_inputs`).

A graph whose image batch is fixed (batch 1, as many exports are) is evaluated that many samples at a time
(`backends.Session.run` splits larger batches), rather than refused.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError, UsageError

SHAPE = re.compile(r"^\d+(x\d+)+$")
BINDING_FORMAT = 1  # bump when bound_graph's rewrite changes, so stale cached graphs are not re-used


@dataclass(frozen=True)
class BoundInput:
    """A non-image input and the constant it is fed (as nested lists: picklable, comparable)."""

    name: str
    dtype: str          # numpy's name of the graph input's element type
    value: tuple        # flat values
    shape: tuple[int, ...]
    batched: bool       # the graph input has a leading batch dimension the value is repeated along

    def array(self):
        import numpy as np

        return np.array(self.value, dtype=self.dtype).reshape(self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "value": list(self.value),
                "per_sample": self.batched}


@dataclass(frozen=True)
class GraphInputs:
    """What a user's graph takes, resolved: the image input, its size, its fixed batch (None: any) and the
    constants bound to the others."""

    image: str
    input_size: int | None       # the image's H = W when the graph or a declaration fixes it
    fixed_batch: int | None
    bound: tuple[BoundInput, ...]
    dynamic: tuple[str, ...]     # the image's height/width dimensions left to the profile's input_size


def checked_declaration(name: str, value, source: str) -> str | list | float | int:
    """One declared input: a shape string (the image) or a number / list of numbers (a constant)."""
    if isinstance(value, str):
        text = value.strip().lower().replace("*", "x")
        if SHAPE.match(text):
            return text
        try:
            value = json.loads(value)
        except ValueError:
            raise UsageError(f"{source}: input {name!r} = {value!r} is neither a shape (1x3x640x640) nor a number "
                             "or JSON list of numbers ([640, 640])") from None
    if not _numeric(value):
        raise UsageError(f"{source}: input {name!r} = {value!r}: expected a shape string (\"1x3x640x640\") or a "
                         "number or (nested) list of numbers")
    return value


def _numeric(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, list) and bool(value) and all(_numeric(v) for v in value)


def parse_input_options(options) -> dict:
    """`--input NAME=VALUE`, repeated -> {name: declaration}."""
    declared = {}
    for option in options or ():
        name, sep, value = str(option).partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise UsageError(f"--input {option!r}: expected NAME=SHAPE (the image: images=1x3x640x640) or "
                             "NAME=VALUE (a constant: scale_factor=[1.0,1.0])")
        if name in declared:
            raise UsageError(f"--input {name!r} is given twice")
        declared[name] = checked_declaration(name, value, f"--input {name}")
    return declared


def checked_inputs_table(table) -> dict:
    """A profile's [inputs] table, checked as the command line's declarations are."""
    if not isinstance(table, dict):
        raise UsageError(f"expected a table of input names, got {type(table).__name__} {table!r}")
    return {str(name): checked_declaration(str(name), value, "inputs") for name, value in table.items()}


def _dims(value_info) -> list:
    """[int, or the dimension's symbolic name, or None] per dimension."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def _show(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# a transformer's inputs as Hugging Face names them; position_ids, when the graph takes them, are fed 0..L-1
# per row (what transformers computes when it is given none)
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def text_graph_inputs(path: Path, proto) -> tuple[str, ...]:
    """The inputs of a text model's graph, in graph order (input_ids and its companions, integer typed), or
    () for a graph without input_ids; one line naming any input a tokeniser cannot feed."""
    from onnx import TensorProto

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if "input_ids" not in {i.name for i in inputs}:
        return ()
    for info in inputs:
        if info.name not in TEXT_INPUT_NAMES:
            raise InputError(f"{path}: input {info.name!r} is none of a text model's "
                             f"({', '.join(TEXT_INPUT_NAMES)}), which a tokeniser feeds")
        if info.type.tensor_type.elem_type not in (TensorProto.INT64, TensorProto.INT32):
            raise InputError(f"{path}: text input {info.name!r} is not an integer tensor")
        if info.type.tensor_type.elem_type == TensorProto.INT32:
            raise InputError(f"{path}: text input {info.name!r} is int32; the harness feeds int64 token ids "
                             "(re-export with int64 inputs, as transformers' exporters do)")
    return tuple(i.name for i in inputs)


def resolve_graph_inputs(path: Path, proto, declared: dict, input_size: int | None) -> GraphInputs:
    """The graph's inputs against the declarations: one line naming the input and dimension otherwise."""
    from onnx import helper

    initializers = {i.name for i in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in initializers}
    unknown = sorted(set(declared) - set(inputs))
    if unknown:
        raise InputError(f"{path}: no input named {', '.join(map(repr, unknown))}; its inputs are "
                         f"{', '.join(inputs)}")
    image = _image_input(path, inputs, declared)
    dims = _dims(inputs[image])
    size, fixed_batch = _image_geometry(path, image, dims, declared.get(image), input_size)
    bound = []
    for name, info in inputs.items():
        if name == image:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type).name
        if name not in declared:
            raise InputError(f"{path}: input {name!r} ({dtype} {_show(_dims(info))}) is not the image and has no "
                             f"value; declare it: --input {name}=VALUE or the profile's [inputs] table")
        bound.append(_bound(path, name, dtype, _dims(info), declared[name]))
    unsized = [repr(d) if isinstance(d, str) else f"dimension {k}" for k, d in enumerate(dims[2:], 2)
               if not isinstance(d, int) or not d]
    dynamic = tuple(dict.fromkeys(unsized)) if size is None else ()
    return GraphInputs(image, size, fixed_batch, tuple(bound), dynamic)


def _image_input(path: Path, inputs: dict, declared: dict) -> str:
    named = [name for name, value in declared.items() if isinstance(value, str)]
    if len(named) > 1:
        raise UsageError(f"{path}: inputs {', '.join(named)} are all declared as shapes; one image input is fed "
                         "images, the others take constant values")
    if named:
        return named[0]
    undeclared = [name for name in inputs if name not in declared]
    images = [name for name in undeclared if len(_dims(inputs[name])) == 4
              and inputs[name].type.tensor_type.elem_type in (1, 10, 16)]  # float, float16, bfloat16
    if len(images) == 1:
        return images[0]
    listed = ", ".join(f"{name} {_show(_dims(inputs[name]))}" for name in inputs)
    if not images:
        raise InputError(f"{path}: no undeclared N x 3 x H x W float input to feed images to (inputs: {listed})")
    raise InputError(f"{path}: {len(images)} inputs could take the image ({listed}); name it with "
                     f"--input NAME=NxCxHxW and give the others values")


def _image_geometry(path: Path, image: str, dims: list, declared: str | None, input_size: int | None):
    """(the image's side when fixed or declared, its fixed batch)."""
    if len(dims) != 4:
        raise InputError(f"{path}: input {image!r} {_show(dims)} has {len(dims)} dimensions; an image model "
                         "takes N x 3 x H x W")
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if declared is not None:
        shape = [int(p) for p in declared.split("x")]
        shape = [fixed[0] or 1] * (4 - len(shape)) + shape if len(shape) < 4 else shape
        if len(shape) != 4:
            raise UsageError(f"--input {image}={declared}: the image takes N x C x H x W")
        for k, (given, graph) in enumerate(zip(shape, fixed)):
            if graph is not None and given != graph:
                raise UsageError(f"--input {image}={declared}: dimension {k} of {image!r} is fixed at {graph} in "
                                 f"{path.name}, not {given}")
        fixed = [fixed[0], *shape[1:]]
    if fixed[1] not in (None, 3):
        raise InputError(f"{path}: input {image!r} {_show(dims)} has {fixed[1]} channels; image models here take 3")
    height, width = fixed[2], fixed[3]
    if height and width and height != width:
        raise InputError(f"{path}: input {image!r} is {height}x{width}; the pre-processing makes square inputs")
    side = height or width
    if side and input_size and input_size != side:
        raise UsageError(f"--input-shape {input_size}: {path.name}'s input {image!r} is {side}x{side}")
    if side and not (height and width):
        raise InputError(f"{path}: input {image!r} {_show(dims)} fixes one side only; declare both with "
                         f"--input {image}=1x3xSxS")
    return side or input_size, fixed[0]


def _bound(path: Path, name: str, dtype: str, dims: list, declared) -> BoundInput:
    import numpy as np

    if isinstance(declared, str):
        raise UsageError(f"{path}: input {name!r} is declared as a shape; only the image input takes one")
    try:
        value = np.array(declared, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as err:
        raise UsageError(f"--input {name}: {declared!r} is not a {dtype} value ({err})") from None
    if value.dtype.kind in "iu" and not np.array_equal(value, np.array(declared)):
        raise UsageError(f"--input {name}: {declared!r} is not a {dtype} value (input {name!r} takes integers)")
    batched = len(dims) == value.ndim + 1
    if len(dims) != value.ndim and not batched:
        raise UsageError(f"--input {name}: the value has {value.ndim} dimensions; input {name!r} is "
                         f"{_show(dims)} (give it {len(dims)} dimensions, or {len(dims) - 1} to repeat per sample)")
    for k, (graph, given) in enumerate(zip(dims[1:] if batched else dims, value.shape), 1 if batched else 0):
        if isinstance(graph, int) and graph > 0 and graph != given:
            raise UsageError(f"--input {name}: dimension {k} of {name!r} is {graph} in {path.name}; the value "
                             f"gives {given}")
    return BoundInput(name, dtype, tuple(value.ravel().tolist()), value.shape, batched)


def bound_graph(path: Path, image: str, bound: tuple[BoundInput, ...], cache_dir: Path | None = None) -> Path:
    """`path` with each bound input replaced by its constant (expanded to the image's batch where the input
    has one), cached by (the file's bytes, the bindings)."""
    from harness.cache import cached_folder
    from harness.export import file_sha256

    bindings = [BINDING_FORMAT, file_sha256(path), image, [b.to_json() for b in bound]]
    key = hashlib.sha256(json.dumps(bindings).encode()).hexdigest()

    def build(staging: Path) -> None:
        import numpy as np
        import onnx
        from onnx import helper, numpy_helper

        proto = onnx.load(str(path))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        names = {b.name for b in bound}
        kept = [i for i in proto.graph.input if i.name not in names]
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        nodes = []
        for item in bound:
            value = item.array()
            if not item.batched:
                nodes.append(helper.make_node("Constant", [], [item.name], value=numpy_helper.from_array(value)))
                continue
            stem = f"harness_bound/{item.name}"
            rows = numpy_helper.from_array(value[None], f"{stem}/value")
            rest = numpy_helper.from_array(np.array(value.shape, dtype=np.int64), f"{stem}/shape")
            nodes += [helper.make_node("Constant", [], [f"{stem}/value"], value=rows),
                      helper.make_node("Constant", [], [f"{stem}/shape"], value=rest),
                      *_batch_of(image, f"{stem}/batch", opset),
                      helper.make_node("Concat", [f"{stem}/batch", f"{stem}/shape"], [f"{stem}/full"], axis=0),
                      helper.make_node("Expand", [f"{stem}/value", f"{stem}/full"], [item.name])]
        for k, node in enumerate(nodes):
            node.name = f"harness_bound/{k}_{node.op_type}"
        graph_nodes = list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes + graph_nodes)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(staging / "model.onnx"))

    folder, _ = cached_folder("bound-inputs", key, build, root=cache_dir)
    return folder / "model.onnx"



def _batch_of(image: str, out: str, opset: int) -> list:
    """Nodes making `out`, the image's batch as a 1-D int64 tensor. Shape's start/end (opset 15) keeps it a
    shape to TVM's Relax frontend, which then knows every shape downstream (a Gather of the shape it reads
    as a runtime tensor, and loses the rank of what the constant feeds)."""
    import numpy as np
    from onnx import helper, numpy_helper

    if opset >= 15:
        return [helper.make_node("Shape", [image], [out], start=0, end=1)]
    first = numpy_helper.from_array(np.zeros(1, dtype=np.int64), f"{out}/first")
    return [helper.make_node("Constant", [], [f"{out}/first"], value=first),
            helper.make_node("Shape", [image], [f"{out}/image_shape"]),
            helper.make_node("Gather", [f"{out}/image_shape", f"{out}/first"], [out])]
