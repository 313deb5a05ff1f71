"""PyTorch eager: the training system, hence the reference. CUDA FP32 runs with TF32 off, since TF32 is
itself a deployment noise; CUDA FP16/BF16 are torch.autocast."""
from __future__ import annotations

from harness.backends import Backend, Session


AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}


class TorchSession(Session):
    def __init__(self, module, device, precision, input_names, output_names):
        super().__init__("torch", device, precision, input_names, output_names)
        self.module = module

    def _run(self, feeds):
        import torch

        (array,) = feeds.values()
        autocast = AUTOCAST.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device, dtype=getattr(torch, autocast or "float32"),
                                                    enabled=autocast is not None):
            result = self.module(torch.from_numpy(array).to(self.device))
        if not isinstance(result, (tuple, list)):
            result = (result,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, result)}


class TorchBackend(Backend):
    name = "torch"
    aliases = ("pytorch",)
    package = "torch"
    declared = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}

    def devices(self) -> list[str]:
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    def _load(self, model, device, precision, threads, **options) -> Session:
        import torch

        if not model.spec.has_torch:
            from harness.errors import BackendUnavailable

            raise BackendUnavailable(f"torch: {model.spec.name} is an ONNX file, there is no torch model to run")
        if threads:
            torch.set_num_threads(threads)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        module = model.spec.load_torch().to(device)
        return TorchSession(module, device, precision, [model.input_name], model.output_names)
