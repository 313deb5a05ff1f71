"""Apache TVM, the Relax flow: ONNX frontend -> tvm.compile for `llvm` (or `cuda`) -> Relax VM.

FP16 compiles the float16 ONNX graph (onnxconverter-common, inputs/outputs kept float32), the same
converted graph ONNX Runtime runs. Relax's own mixed-precision pass (`relax.transform.ToMixedPrecision`)
was tried first and rejected: on TVM 0.27 it fails on any graph whose ONNX Clip the frontend lowers to
`call_tir` (ReLU6 in MobileNetV2: "Expected TensorType, but got R.Callable"). The compiled library is
cached by content hash (`export_library`), so a second run does not recompile.
The default CPU pipeline applies no tuned schedules: TVM is a correctness backend here, not a fast one.
No tuning option is offered because MetaSchedule cannot run on apache-tvm 0.27.0.post1 (tried in a
subprocess, 2026-11-30): a TuneContext with the default LLVM mutators segfaults in tvm::ffi::ToJSONGraph
(MutateComputeLocation and MutateParallel each alone do; MutateTileSize and MutateUnroll do not), and with
only those two, or with the replay-trace strategy, the task scheduler segfaults at "Initializing Task #0",
on a 128x128 matmul as on a whole model. Untuned TVM stays out of compare's default set where it would be
slow (harness.compare.defaults).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends import Backend, Session

TARGETS = {"cpu": "llvm", "cuda": "cuda"}


def graph_io(graph: Path) -> tuple[list[str], list[str]]:
    """(graph inputs that are not initializers, graph outputs), in order: the Relax main's signature."""
    import onnx

    proto = onnx.load(str(graph), load_external_data=False)
    initializers = {init.name for init in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in initializers], [o.name for o in proto.graph.output]


def compiled_library(graph: Path, device: str, version: str | None) -> Path:
    """The graph compiled for `device`, cached by the graph's content, target and TVM version."""
    from harness.cache import cached_folder, key_of
    from harness.export import file_sha256

    params = {"target": TARGETS[device], "tvm": version}
    folder, _ = cached_folder("tvm", key_of(file_sha256(graph), "tvm", params),
                              lambda staging: compile_library(graph, device, staging / "model.so"))
    return folder / "model.so"


class TvmSession(Session):
    tap_methods = ("graph-outputs",)

    def __init__(self, library: Path, device, precision, graph: Path, wanted_outputs, version):
        inputs, self.graph_outputs = graph_io(graph)
        wanted = [name for name in wanted_outputs if name in self.graph_outputs] or self.graph_outputs
        # an FP16 session compiled the converted graph: a cut of that file loads at fp32
        super().__init__("tvm", device, precision, inputs, wanted, graph=graph, load_precision="fp32")
        self.version = version
        self.vm, self.device_handle = self._vm(library)

    def _vm(self, library: Path):
        import tvm
        from tvm import relax

        handle = tvm.cpu() if self.device == "cpu" else tvm.cuda(0)
        return relax.VirtualMachine(tvm.runtime.load_module(str(library)), handle), handle

    def _call(self, vm, outputs, feeds):
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), self.device_handle) for name in self.input_names]
        result = vm["main"](*args)
        values = [result] if hasattr(result, "numpy") else list(result)
        return {name: value.numpy() for name, value in zip(outputs, values)}

    def _run(self, feeds):
        return self._call(self.vm, self.graph_outputs, feeds)

    def _executed(self):
        from harness.onnx_graph import compute_precisions, load

        counts = compute_precisions(load(self.graph))  # Relax keeps the imported graph's dtypes
        return (counts, {self.device: sum(counts.values())}, self.device,
                "the ONNX graph TVM compiled (its Relax module keeps the graph's types)")

    def _tappable(self, names, method):
        from harness.onnx_graph import float_tensors, load

        present = {t.name for t in float_tensors(load(self.graph))}
        why = "not a float tensor of the compiled graph (renamed or removed by its conversion)"
        return [n for n in names if n in present], {n: why for n in names if n not in present}

    def _tap_runner(self, names, method):
        from harness.onnx_graph import with_outputs

        tapped = with_outputs(self.graph, names)
        vm, _ = self._vm(compiled_library(tapped, self.device, self.version))
        _, outputs = graph_io(tapped)
        return lambda feeds: self._call(vm, outputs, feeds)


def resize_sizes_to_scales(proto) -> int:
    """Rewrites Resize `sizes` (computed from the runtime shape, as an FPN's `size=lateral.shape[-2:]`
    exports) into constant `scales` where the spatial sizes are static and whole multiples of the input's,
    so the result is exactly the same. Why: TVM 0.27's ONNX Resize converter turns every entry of a
    `sizes` shape into an int and fails on the symbolic batch ("Error converting operator Resize").
    Non-integer ratios are left alone (a float scale would round differently) and TVM reports them."""
    import numpy as np
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    rewritten = 0
    for node in proto.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not before or not after or len(before) != len(after):
            continue
        spatial = list(zip(before[2:], after[2:]))
        if not spatial or any(a is None or b is None or b % a for a, b in spatial):
            continue
        name = f"{node.output[0]}_static_scales"
        scales = np.array([1.0, 1.0] + [b / a for a, b in spatial], np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(scales, name))
        source, roi = node.input[0], node.input[1]
        del node.input[:]
        node.input.extend([source, roi, name])
        rewritten += 1
    return rewritten


def compile_library(onnx_path: Path, device: str, out: Path) -> None:
    """ONNX -> Relax (symbolic batch: one compile serves every batch size) -> shared library."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    proto = onnx.load(str(onnx_path))
    resize_sizes_to_scales(proto)
    try:
        module = from_onnx(proto, keep_params_in_input=False)
    except tvm.error.InternalError as err:
        from harness.errors import BackendUnavailable

        # the importer, not the model, is what fails (a transformer's Reshape to a shape computed from the
        # runtime sequence length: "Reshape expects the input tensor to have known shape"): TVM cannot take it
        first = next((line for line in str(err).splitlines() if "failed" in line.lower()), str(err).splitlines()[0])
        raise BackendUnavailable(f"tvm {tvm.__version__}: Relax's ONNX importer cannot take this graph ({first.strip()[:240]})") from None
    executable = tvm.compile(module, target=TARGETS[device])
    executable.export_library(str(out))


class TvmBackend(Backend):
    name = "tvm"
    package = "tvm"
    speed_unknown = True  # untuned: 356 ms vs ONNX Runtime's 6.5 ms per batch here, 154 s a ResNet-50 image in FP16
    declared = {"cpu": ("fp32", "fp16"), "cuda": ("fp32", "fp16")}
    load_options = ("artifact",)

    def distribution(self) -> str:
        return "apache-tvm"

    def devices(self) -> list[str]:
        from harness.backends import nvidia_gpu_present

        if not nvidia_gpu_present():  # nothing to ask TVM (an import of seconds)
            return ["cpu"]
        import tvm

        return ["cpu"] + (["cuda"] if tvm.cuda(0).exist else [])

    def _load(self, model, device, precision, threads, artifact: Path | None = None, **options) -> Session:
        from harness.artifacts import fp16_onnx

        source = Path(artifact) if artifact else fp16_onnx(model) if precision == "fp16" else model.onnx_path
        return TvmSession(compiled_library(source, device, self.version()), device, precision, source,
                          model.output_names, self.version())
