"""PyTorch eager: the training system, hence the reference. CUDA FP32 runs with TF32 off and cuDNN's
deterministic algorithms, since TF32 and benchmark-selected algorithms are themselves deployment noise
(the sweep's `tf32` and `cudnn` axes switch them on); CUDA FP16/BF16 are torch.autocast; `compile` runs
the module through torch.compile (inductor) instead of eagerly."""
from __future__ import annotations

from contextlib import contextmanager

from harness.backends import Backend, Session

AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}
# CUDA numerics a deployment may switch on, each a load option (and a sweep axis); the first is the default
CUDNN_MODES = ("deterministic", "benchmark")
COMPILE_MODES = ("default", "max-autotune")


class TorchSession(Session):
    tap_methods = ("forward-hooks",)

    def __init__(self, module, device, precision, input_names, output_names, exported=None, tf32: bool = False,
                 cudnn: str = CUDNN_MODES[0]):
        super().__init__("torch", device, precision, input_names, output_names)
        self.module, self.exported = module, exported
        self.tf32, self.cudnn = tf32, cudnn
        self.compiled = hasattr(module, "_orig_mod")  # torch.compile's OptimizedModule

    @contextmanager
    def _cuda_numerics(self):
        """This session's TF32 and cuDNN settings around one run: torch keeps them process-wide, and a sweep
        holds the baseline's session beside the variant's."""
        import torch

        if self.device != "cuda":
            yield
            return
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            with torch.backends.cudnn.flags(enabled=True, benchmark=self.cudnn == "benchmark",
                                            deterministic=self.cudnn == "deterministic", allow_tf32=self.tf32):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul

    def module_outputs(self) -> dict[str, str]:
        """{ONNX tensor: torch module path} for the tensors a forward hook sees: a module's output is the
        last tensor (graph order) the export's name map puts in that module or below it. A module called
        more than once (a shared ReLU) shows its last call, which is also its last tensor."""
        from harness.onnx_graph import float_tensors, load

        if self.exported is None or not self.exported.name_map:
            return {}
        modules = {name for name, _ in self.module.named_modules() if name}
        last = {}
        for tensor in float_tensors(load(self.exported.onnx_path)):
            path = self.exported.module_of(tensor.name)
            while path:
                if path in modules:
                    last[path] = tensor.name
                path = path.rpartition(".")[0]
        return {tensor: path for path, tensor in last.items()}

    def _tappable(self, names, method):
        if self.compiled:
            return [], {n: "the module runs torch.compile'd: a forward hook would change the graph it compiles"
                        for n in names}
        present = self.module_outputs()
        why = "inside a torch module: forward hooks see module outputs only (aligned by the export's name map)"
        return [n for n in names if n in present], {n: why for n in names if n not in present}

    def _tap_runner(self, names, method):
        wanted = set(names)
        by_module = {path: tensor for tensor, path in self.module_outputs().items() if tensor in wanted}

        def run(feeds):
            captured = {}

            def hook(path):
                def keep(_module, _inputs, output):
                    if hasattr(output, "detach"):  # cloned: a later in-place op must not change what we saw
                        captured[by_module[path]] = output.detach().float().cpu().clone().numpy()
                return keep

            handles = [module.register_forward_hook(hook(path)) for path, module in self.module.named_modules()
                       if path in by_module]
            try:
                outputs = self._run(feeds)
            finally:
                for handle in handles:
                    handle.remove()
            return {**outputs, **captured}

        return run

    def _executed(self):
        from torch import nn

        from harness.onnx_graph import compute_precisions, load

        # every call of a convolution or linear layer (a head shared by 3 levels is 3), as the export traced
        # them; autocast runs them in its dtype (torch's autocast op lists), fp32 otherwise
        if self.exported is not None:
            compute = sum(compute_precisions(load(self.exported.onnx_path)).values())
        else:
            compute = sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in self.module.modules())
        precision = {"float16": "fp16", "bfloat16": "bf16"}.get(AUTOCAST.get(self.precision), "fp32")
        parameter = next(self.module.parameters(), None)
        where = self.device if parameter is None else parameter.device.type
        return ({precision: compute}, {where: compute}, self.device,
                "torch: the convolution and linear calls the export traced, under the session's autocast dtype")

    def _run(self, feeds):
        import torch

        autocast = AUTOCAST.get(self.precision)
        tensors = [torch.from_numpy(feeds[name]).to(self.device) for name in self.input_names]
        with torch.inference_mode(), self._cuda_numerics(), \
                torch.autocast(self.device, dtype=getattr(torch, autocast or "float32"), enabled=autocast is not None):
            result = self.module(*tensors)  # in the order the export named them (ModelSpec.input_names)
        if not isinstance(result, (tuple, list)):
            result = (result,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, result)}


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # transformers': torch's fused kernel, or the explicit softmax


def _set_attention(module, implementation: str) -> None:
    """A transformers model's attention implementation (the `attention` axis): every pretrained model inside
    `module` switched to `implementation`."""
    from harness.errors import UsageError

    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise UsageError(f"torch: attention is one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {implementation!r}")
    models = [m for m in module.modules() if hasattr(m, "set_attn_implementation")]
    if not models:
        raise UsageError("torch: attention: the model holds no transformers model whose attention can be chosen")
    for found in models:
        found.set_attn_implementation(implementation)


class TorchBackend(Backend):
    name = "torch"
    aliases = ("pytorch",)
    package = "torch"
    declared = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}
    load_options = ("tf32", "cudnn", "compile", "attention")

    def devices(self) -> list[str]:
        from harness.backends import nvidia_gpu_present

        if not nvidia_gpu_present():  # nothing to ask torch (an import of seconds)
            return ["cpu"]
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    def _load(self, model, device, precision, threads, tf32: bool = False, cudnn: str = CUDNN_MODES[0],
              compile: str | None = None, attention: str | None = None, **options) -> Session:
        import torch

        from harness.errors import BackendUnavailable, UsageError

        if not model.spec.has_torch:
            raise BackendUnavailable(f"torch: {model.spec.name} is an ONNX file, there is no torch model to run")
        if device != "cuda" and (tf32 or cudnn != CUDNN_MODES[0] or compile):
            raise UsageError(f"torch: tf32, cudnn and compile are options of the CUDA device, not of {device}")
        if cudnn not in CUDNN_MODES or compile not in (None, *COMPILE_MODES):
            raise UsageError(f"torch: cudnn is one of {', '.join(CUDNN_MODES)} (got {cudnn!r}); compile one of "
                             f"{', '.join(COMPILE_MODES)} (got {compile!r})")
        if threads:
            torch.set_num_threads(threads)
        module = model.spec.load_torch().to(device)
        if attention is not None:
            _set_attention(module, attention)
        if compile:
            module = torch.compile(module, mode=compile)
        return TorchSession(module, device, precision, model.input_names, model.output_names, model,
                            tf32=bool(tf32), cudnn=cudnn)
