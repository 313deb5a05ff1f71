"""ONNX Runtime: CPU execution provider; CUDA and TensorRT execution providers as devices where present."""
from __future__ import annotations

from harness.backends import Backend, Session

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtSession(Session):
    def __init__(self, session, device, precision, input_names, output_names):
        super().__init__("onnxruntime", device, precision, input_names, output_names)
        self.session = session

    def _run(self, feeds):
        return dict(zip(self.output_names, self.session.run(list(self.output_names), feeds)))


class OrtBackend(Backend):
    name = "onnxruntime"
    aliases = ("ort",)
    package = "onnxruntime"

    def devices(self) -> list[str]:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
        return [device for device, provider in PROVIDERS.items() if provider in have]

    def _load(self, model, device, precision, threads, optimize: bool = True, **options) -> Session:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not optimize:  # the tensor reference: every ONNX op runs as written
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = [PROVIDERS[device]] + (["CPUExecutionProvider"] if device != "cpu" else [])
        session = ort.InferenceSession(str(model.onnx_path), opts, providers=providers)
        outputs = [o.name for o in session.get_outputs()]
        wanted = [name for name in model.output_names if name in outputs] or outputs
        return OrtSession(session, device, precision, [i.name for i in session.get_inputs()], wanted)
