"""Export once: torch -> ONNX, cached by content hash, checked, with a name map to torch module paths.

The cache key is a hash of (weights, architecture, opset, input spec, output names, torch version), so a
second run of any command re-uses the file. The dynamo exporter is used first (its node metadata gives
the module path of every node without parsing names); the legacy TorchScript exporter is the fallback
(torchvision detectors need it; a spec whose model the dynamo exporter cannot take names the legacy one
alone: `ModelSpec.exporters`). Which one ran is recorded, since it changes the graph.
"""
from __future__ import annotations

import ast
import hashlib
import json
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from harness.cache import cache_root, cached_folder, tool_versions
from harness.errors import HarnessError
from harness.files import output_captured_in
from harness.model import ModelSpec
from harness.tasks import CLASSIFY

DEFAULT_OPSET = 18
EXPORT_FORMAT = 2  # bump when the export procedure changes, so stale cached files are not re-used
MAX_BATCH = 4096
MAX_SEQUENCE = 4096  # tokens: a text model's own limit (its position table) is the exporter's to find


class ExportError(HarnessError):
    """Neither exporter could turn the torch model into ONNX."""


@dataclass(frozen=True)
class ExportedModel:
    spec: ModelSpec
    onnx_path: Path
    exporter: str                         # "dynamo" | "legacy" | "user-onnx"
    opset: int
    sha256: str                           # of the .onnx bytes
    cache_hit: bool = False
    name_map: dict = field(default_factory=dict)   # {"tensors": {name: module}, "nodes": {name: module}}

    @property
    def input_name(self) -> str:
        return self.spec.input_name

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.spec.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.output_names

    def module_of(self, tensor: str) -> str | None:
        return self.name_map.get("tensors", {}).get(tensor)


def graph_model(path: Path, spec: ModelSpec | None = None) -> ExportedModel:
    """Any ONNX file (a cut of a deployed graph, a repro) as an ExportedModel that backends can load: its
    inputs and outputs come from the file; `spec` lends the rest (profile, labels) when given."""
    import dataclasses

    import onnx

    from harness.profile import Profile

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    outputs = tuple(o.name for o in proto.graph.output)
    base = spec or ModelSpec(name=path.stem, task=CLASSIFY, profile=Profile())
    graph_spec = dataclasses.replace(base, name=path.stem, build=None, weights=None, onnx=path,
                                     input_name=inputs[0] if inputs else "", output_names=outputs)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportedModel(graph_spec, path, "derived", opset, file_sha256(path), True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_key(spec: ModelSpec, module, opset: int) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    architecture = f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}"
    io_spec = (spec.input_name, spec.profile.input_size, spec.output_names) + \
        ((spec.text_inputs,) if spec.text_inputs else ())
    tools = tool_versions("torch", "onnx", "onnxscript")  # the exporters and the proto they write
    digest.update(json.dumps([architecture, opset, io_spec, torch.__version__, EXPORT_FORMAT, tools]).encode())
    return digest.hexdigest()


def _module_from_scopes(node) -> str | None:
    props = {p.key: p.value for p in node.metadata_props}
    raw = props.get("pkg.torch.onnx.name_scopes")
    if not raw:
        return None
    scopes = [s for s in ast.literal_eval(raw)[:-1] if s]  # the last scope is the aten op itself
    return scopes[-1] if scopes else ""


def _module_from_legacy_name(node_name: str) -> str | None:
    # "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1" (a folded BN's output carries the conv's name)
    parts = [p for p in node_name.split("/") if p]
    return parts[-2] if len(parts) >= 2 else None


def build_name_map(proto, exporter: str) -> dict:
    tensors, nodes = {}, {}
    for node in proto.graph.node:
        module = _module_from_scopes(node) if exporter == "dynamo" else _module_from_legacy_name(node.name)
        if module is None:
            continue
        nodes[node.name] = module
        for output in node.output:
            if output:
                tensors[output] = module
    return {"tensors": tensors, "nodes": nodes}


def _example(spec: ModelSpec):
    """Example inputs for the exporters, with each input's dynamic axes: an image batch, or a text model's
    token ids with dynamic batch and sequence (real token ids: a zero tensor is a batch of [PAD]s)."""
    import torch

    if not spec.text_inputs:  # a model that runs one image at a time (a two-stage detector) keeps its batch fixed
        size = spec.profile.input_size
        return (torch.zeros(spec.fixed_batch or 2, 3, size, size),), ({} if spec.fixed_batch else {0: "batch"},)
    from harness.tokenization import encode

    feeds = encode(["an example to export", "a second, longer example to export with"], spec.tokenizer, spec.profile)
    return tuple(torch.from_numpy(feeds[name]) for name in spec.text_inputs), \
        tuple({0: "batch", 1: "sequence"} for _ in spec.text_inputs)


def _export_dynamo(module, example, path: Path, spec: ModelSpec, opset: int) -> None:
    import torch

    tensors, axes = example
    dims = {"batch": torch.export.Dim("batch", min=1, max=MAX_BATCH),
            "sequence": torch.export.Dim("sequence", min=2, max=MAX_SEQUENCE)}
    torch.onnx.export(module, tensors, str(path), dynamo=True, opset_version=opset,
                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                      dynamic_shapes=tuple({axis: dims[name] for axis, name in dynamic.items()} for dynamic in axes),
                      optimize=True, verbose=False,
                      external_data=False)  # one self-contained file: hashable, copyable into a repro


def _export_legacy(module, example, path: Path, spec: ModelSpec, opset: int) -> None:
    import torch

    tensors, axes = example
    dynamic = {**dict(zip(spec.input_names, axes)),
               **{name: {0: "batch"} for name in spec.output_names if not spec.fixed_batch}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tensors, str(path), dynamo=False, opset_version=min(opset, 17),
                          input_names=list(spec.input_names), output_names=list(spec.output_names),
                          dynamic_axes=dynamic)


def export(spec: ModelSpec, opset: int = DEFAULT_OPSET, cache_dir: Path | None = None) -> ExportedModel:
    """The model's ONNX file, exported on first use and re-used afterwards."""
    import onnx

    if spec.onnx is not None:
        from harness.onnx_inputs import bound_graph

        path = bound_graph(Path(spec.onnx), spec.input_name, spec.bound_inputs, cache_dir) if spec.bound_inputs \
            else Path(spec.onnx)
        proto = onnx.load(str(path), load_external_data=False)
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        return ExportedModel(spec, path, "user-onnx", opset_used, file_sha256(path), cache_hit=True,
                             name_map={"tensors": {}, "nodes": {}})
    import torch

    module = spec.load_torch()
    key = export_key(spec, module, opset)

    def build(staging: Path) -> None:
        example = _example(spec)
        staged = staging / "model.onnx"
        errors = []
        log = cache_root() / "logs" / f"export-{key[:16]}.log"
        exporters = {"dynamo": _export_dynamo, "legacy": _export_legacy}
        for exporter, fn in ((name, exporters[name]) for name in spec.exporters):
            try:
                with output_captured_in(log):  # a failing exporter prints thousands of lines
                    fn(module, example, staged, spec, opset)
                proto = onnx.load(str(staged))
                onnx.checker.check_model(proto, full_check=True)
                break
            except Exception as err:  # each exporter fails in its own exception types; both are reported
                first = next((line for line in str(err).splitlines() if line.strip()), "")
                errors.append(f"{exporter}: {type(err).__name__}: {first[:200]}")
                with open(log, "a") as out:  # the whole error beside what the exporter printed
                    out.write(f"\n--- {exporter} exporter failed ---\n{traceback.format_exc()}")
        else:
            raise ExportError(f"cannot export {spec.name} to ONNX ({'; '.join(errors)}); the exporters' own output "
                              f"is in {log}")
        log.unlink(missing_ok=True)
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        (staging / "names.json").write_text(json.dumps(build_name_map(proto, exporter), indent=1))
        meta = {"exporter": exporter, "opset": opset_used, "sha256": file_sha256(staged), "model": spec.name,
                "key": key, "torch": torch.__version__, "fallback_reasons": errors}
        (staging / "export.json").write_text(json.dumps(meta, indent=1))

    folder, hit = cached_folder("exports", key, build, root=cache_dir)
    meta = json.loads((folder / "export.json").read_text())
    names = json.loads((folder / "names.json").read_text())
    return ExportedModel(spec, folder / "model.onnx", meta["exporter"], meta["opset"], meta["sha256"], hit, names)
