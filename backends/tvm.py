"""Apache TVM, the Relax flow: ONNX frontend -> tvm.compile for `llvm` (or `cuda`) -> Relax VM.

FP16 compiles the float16 ONNX graph (onnxconverter-common, inputs/outputs kept float32), the same
converted graph ONNX Runtime runs. Relax's own mixed-precision pass (`relax.transform.ToMixedPrecision`)
was tried first and rejected: on TVM 0.27 it fails on any graph whose ONNX Clip the frontend lowers to
`call_tir` (ReLU6 in MobileNetV2: "Expected TensorType, but got R.Callable"). The compiled library is
cached by content hash (`export_library`), so a second run does not recompile.
The default CPU pipeline applies no tuned schedules: TVM is a correctness backend here, not a fast one
(MetaSchedule tuning crashes on this version; shared/BACKEND-NOTES.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends import Backend, Session

TARGETS = {"cpu": "llvm", "cuda": "cuda"}


class TvmSession(Session):
    def __init__(self, vm, device_handle, device, precision, input_names, output_names):
        super().__init__("tvm", device, precision, input_names, output_names)
        self.vm, self.device_handle = vm, device_handle

    def _run(self, feeds):
        import tvm

        (array,) = feeds.values()
        result = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(array), self.device_handle))
        values = [result] if hasattr(result, "numpy") else list(result)
        return {name: value.numpy() for name, value in zip(self.output_names, values)}


def compile_library(onnx_path: Path, device: str, out: Path) -> None:
    """ONNX -> Relax (symbolic batch: one compile serves every batch size) -> shared library."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    module = from_onnx(onnx.load(str(onnx_path)), keep_params_in_input=False)
    executable = tvm.compile(module, target=TARGETS[device])
    executable.export_library(str(out))


class TvmBackend(Backend):
    name = "tvm"
    package = "tvm"
    declared = {"cpu": ("fp32", "fp16"), "cuda": ("fp32", "fp16")}

    def distribution(self) -> str:
        return "apache-tvm"

    def devices(self) -> list[str]:
        import tvm

        return ["cpu"] + (["cuda"] if tvm.cuda(0).exist else [])

    def _load(self, model, device, precision, threads, **options) -> Session:
        import tvm
        from tvm import relax

        from harness.artifacts import derived_file, fp16_onnx

        source = fp16_onnx(model) if precision == "fp16" else model.onnx_path
        library = derived_file(model, "tvm", "model.so", {"target": TARGETS[device], "precision": precision,
                                                          "tvm": self.version()},
                               lambda out: compile_library(source, device, out))
        handle = tvm.cpu() if device == "cpu" else tvm.cuda(0)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), handle)
        return TvmSession(vm, handle, device, precision, [model.input_name], model.output_names)
