"""NVIDIA TensorRT through its Python API: ONNX parser -> strongly typed network -> serialized engine
cached by content hash -> execution context. Device buffers are torch CUDA tensors.

Precision lives in the graph, as TensorRT 11 requires (it removed BuilderFlag.FP16/INT8 and the INT8
calibrator; strongly typed networks are opt-in from 10.12 and always on in 11): FP16 builds the float16
ONNX graph (onnxconverter-common, I/O kept float32; NVIDIA suggests ModelOpt AutoCast for the same step,
which is not a dependency here), INT8 builds the explicit Q/DQ graph made from the shared calibration
set by onnxruntime.quantization with symmetric activations and weights (what TensorRT's Q/DQ support
expects). A user's ready `.engine` file can be the candidate instead (`artifact`).
"""
from __future__ import annotations

from pathlib import Path

from harness.backends import Backend, Session

MAX_BATCH = 64
OPT_BATCH = 32
WORKSPACE_BYTES = 1 << 30


def _torch_sees_a_gpu() -> bool:
    """The engine's buffers are torch CUDA tensors: torch must see the GPU too."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()

class TrtSession(Session):
    tap_methods = ("graph-outputs",)

    def __init__(self, engine, device, precision, input_names, output_names, graph=None, build=None):
        # FP16/INT8 live in the graph TensorRT parsed (strongly typed): a cut of it builds at fp32
        super().__init__("tensorrt", device, precision, input_names, output_names, graph=graph, load_precision="fp32")
        self.engine, self.build = engine, build
        self.context = engine.create_execution_context()

    def _tappable(self, names, method):
        from harness.onnx_graph import float_tensors, load

        if self.graph is None:
            return [], {n: "the candidate is a ready .engine file: no graph to mark outputs in" for n in names}
        present = {t.name for t in float_tensors(load(self.graph))}
        why = "not a float tensor of the graph TensorRT parsed"
        return [n for n in names if n in present], {n: why for n in names if n not in present}

    def _tap_runner(self, names, method):
        from harness.onnx_graph import with_outputs

        engine = self.build(with_outputs(self.graph, names))
        tapped = TrtSession(engine, self.device, self.precision, self.input_names, [*self.output_names, *names])
        return tapped._run

    def _run(self, feeds):
        import numpy as np
        import tensorrt as trt
        import torch

        buffers = {}
        for name, array in feeds.items():
            buffers[name] = torch.from_numpy(array).cuda().contiguous()
            self.context.set_input_shape(name, tuple(array.shape))
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
        for name, tensor in buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 returned False")
        stream.synchronize()
        return {name: buffers[name].cpu().numpy() for name in self.output_names}


def quantize_symmetric_qdq(onnx_path: Path, calibration, out: Path) -> None:
    from harness.backends.ort import quantize_qdq

    quantize_qdq(onnx_path, calibration, out, symmetric=True)


def build_engine(onnx_path: Path, out: Path) -> None:
    """Every network input gets a batch range 1..MAX_BATCH (optimised for OPT_BATCH); the other dims are
    the graph's own, which must be static."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # required in 11.x, honoured in 10.12+
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise RuntimeError(f"{onnx_path}: input {tensor.name} has a dynamic non-batch dim {tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (1, *rest), (OPT_BATCH, *rest), (MAX_BATCH, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    out.write_bytes(bytes(serialized))


class TensorRtBackend(Backend):
    name = "tensorrt"
    aliases = ("trt",)
    package = "tensorrt"
    declared = {"cuda": ("fp32", "fp16", "int8")}
    load_options = ("calibration", "artifact")

    def available(self) -> tuple[bool, str]:
        import importlib.util

        from harness.backends import nvidia_gpu_present

        missing = []
        if not nvidia_gpu_present():  # no driver entries and no device nodes: nothing to ask torch
            missing.append("no NVIDIA GPU found (no /proc/driver/nvidia/gpus entry, no /dev/nvidia* device)")
        elif not _torch_sees_a_gpu():
            missing.append("no NVIDIA GPU usable (torch.cuda.is_available() is False)")
        if importlib.util.find_spec("tensorrt") is None:
            missing.append("the tensorrt package is not installed (pip install tensorrt; in the harness checkout: "
                           "pip install -e '.[tensorrt]')")
        return (not missing), "; ".join(missing)

    def devices(self) -> list[str]:
        return ["cuda"]

    def _load(self, model, device, precision, threads, calibration=None, artifact: Path | None = None,
              **options) -> Session:
        import tensorrt as trt

        from harness.artifacts import derived_file, fp16_onnx, quantized_onnx
        from harness.export import file_sha256

        def engine_of(graph: Path):
            path = derived_file(model, "tensorrt", "model.engine", {"graph": file_sha256(graph), "trt": self.version()},
                                lambda out: build_engine(graph, out))
            return deserialize(path)

        def deserialize(path: Path):
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"{path}: TensorRT could not deserialize the engine")
            return engine

        source = None
        if artifact is not None and Path(artifact).suffix in (".engine", ".plan"):
            engine = deserialize(Path(artifact))
        else:
            source = Path(artifact) if artifact else model.onnx_path
            if artifact is None and precision == "int8":
                source = quantized_onnx(model, calibration, "trt-symmetric-qdq", quantize_symmetric_qdq,
                                        ("onnxruntime", "onnx"))
            elif artifact is None and precision == "fp16":
                source = fp16_onnx(model)
            engine = engine_of(source)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        wanted = [n for n in model.output_names if n in outputs] or outputs
        return TrtSession(engine, device, precision, inputs, wanted, source, engine_of)
