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


class TrtSession(Session):
    def __init__(self, engine, device, precision, input_names, output_names):
        super().__init__("tensorrt", device, precision, input_names, output_names)
        self.engine = engine
        self.context = engine.create_execution_context()

    def _run(self, feeds):
        import torch

        buffers = {}
        for name, array in feeds.items():
            buffers[name] = torch.from_numpy(array).cuda().contiguous()
            self.context.set_input_shape(name, tuple(array.shape))
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
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


def build_engine(onnx_path: Path, input_shape: tuple[int, ...], out: Path) -> None:
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
    name = network.get_input(0).name
    profile.set_shape(name, (1, *input_shape), (OPT_BATCH, *input_shape), (MAX_BATCH, *input_shape))
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

    def available(self) -> tuple[bool, str]:
        import importlib.util

        missing = []
        gpu = False
        if importlib.util.find_spec("torch") is not None:
            import torch

            gpu = torch.cuda.is_available()
        if not gpu:
            missing.append("no NVIDIA GPU found (torch.cuda.is_available() is False)")
        if importlib.util.find_spec("tensorrt") is None:
            missing.append("the tensorrt package is not installed (pip install 'harness[tensorrt]')")
        return (not missing), "; ".join(missing)

    def devices(self) -> list[str]:
        return ["cuda"]

    def _load(self, model, device, precision, threads, calibration=None, artifact: Path | None = None,
              **options) -> Session:
        import tensorrt as trt

        from harness.artifacts import derived_file, fp16_onnx, quantized_onnx
        from harness.export import file_sha256

        if artifact is not None and Path(artifact).suffix in (".engine", ".plan"):
            engine_path = Path(artifact)
        else:
            source = Path(artifact) if artifact else model.onnx_path
            if artifact is None and precision == "int8":
                source = quantized_onnx(model, calibration, "trt-symmetric-qdq", quantize_symmetric_qdq)
            elif artifact is None and precision == "fp16":
                source = fp16_onnx(model)
            size = model.spec.profile.input_size
            engine_path = derived_file(model, "tensorrt", "model.engine",
                                       {"precision": precision, "graph": file_sha256(source), "trt": self.version(),
                                        "shape": [3, size, size]},
                                       lambda out: build_engine(source, (3, size, size), out))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not deserialize the engine")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        wanted = [n for n in model.output_names if n in outputs] or outputs
        return TrtSession(engine, device, precision, inputs, wanted)
