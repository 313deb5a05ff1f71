"""ONNX Runtime: CPU execution provider; CUDA and TensorRT execution providers as devices where present.

FP16 is the graph converted by onnxconverter-common (inputs/outputs kept float32); on the CPU provider
this measures FP16 weight/activation rounding, not FP16 arithmetic. INT8 is onnxruntime.quantization's
static QDQ quantization (per-channel weights, MinMax activations) with the shared calibration set.
Both converted graphs are cached by content hash.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from harness.backends import Backend, Session

# the name ONNX Runtime gives a tensor whose FP16 op it runs in FP32 on CPU, the casts around it removed
# (onnxruntime/core/optimizer/insert_cast_transformer.cc)
PRECISION_FREE_CAST = "InsertedPrecisionFreeCast_"
# ORT's NCHWc transformer names a node it converts after the tensor it computes, and leaves that tensor in
# its blocked layout where the next NCHWc kernel reads it (onnxruntime/core/optimizer/nchwc_transformer.cc)
NCHWC_SUFFIX, NCHWC_DOMAIN = "_nchwc", "com.microsoft.nchwc"
UNBLOCKED = "__harness_nchw"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtSession(Session):
    tap_methods = ("graph-outputs", "kernel-boundary")

    def __init__(self, session, device, precision, input_names, output_names, graph=None, make_options=None,
                 providers=None):
        # graph and precision conversions are baked into `graph` (FP16 / QDQ files): a cut of it loads at fp32
        super().__init__("onnxruntime", device, precision, input_names, output_names, graph=graph,
                         load_precision="fp32")
        self.session = session
        self.make_options, self.providers = make_options, providers

    def _run(self, feeds):
        return dict(zip(self.output_names, run_without_copies(self.session, list(self.output_names), feeds)))

    def _tappable(self, names, method):
        from harness.onnx_graph import float_tensors, load

        if method == "graph-outputs":
            present = {t.name for t in float_tensors(load(self.graph))}
            why = "not a float tensor of the deployed graph (renamed, folded or removed by its conversion)"
            return [n for n in names if n in present], {n: why for n in names if n not in present}
        found = {**self._blocked_names(names), **self._kernel_names(names)}
        why = ("inside a fused ONNX Runtime kernel: no node of its optimised graph outputs it, in any layout (e.g. a "
               "Conv's output that the next Conv adds in its own kernel)")
        return [n for n in names if n in found], {n: why for n in names if n not in found}

    def _kernel_names(self, names) -> dict[str, str]:
        """{tensor: the output of ONNX Runtime's optimised graph that holds its value}: the tensor itself, or,
        where ORT runs an FP16 op in FP32 and drops the casts around it (its InsertCastTransformer on CPU),
        the FP32 tensor it renames `InsertedPrecisionFreeCast_<name>`: the value the deployment carries."""
        present = {output for node in self._optimized_graph().graph.node for output in node.output}
        return {n: found for n in names
                for found in (n, PRECISION_FREE_CAST + n) if found in present}

    def _blocked_names(self, names) -> dict[str, tuple[str, int]]:
        """{tensor: (the blocked NCHWc output that holds it, its channels)} for the tensors ORT keeps only in
        its NCHWc layout (a MaxPool, a Conv or a Conv+Add whose output only NCHWc kernels read): drift taps
        them through a ReorderOutput of its own, after the kernel, so the kernels run as untapped."""
        import onnx

        from harness.onnx_graph import load

        deployed = load(self.graph)
        # which tensor a node named after T outputs: T; but a Conv that later took in the Add after it (a 4th,
        # Sum input) outputs that Add's sum, and one that took in its activation, a tensor the graph never names
        adds = {i: node.output[0] for node in deployed.graph.node if node.op_type == "Add" for i in node.input}
        holds = {}
        for node in self._optimized_graph().graph.node:
            if node.domain != NCHWC_DOMAIN or any(a.name == "activation" for a in node.attribute):
                continue
            named = node.name.removesuffix(NCHWC_SUFFIX).removeprefix(PRECISION_FREE_CAST)
            fused_sum = node.op_type == "Conv" and len(node.input) > 3
            if node.name.endswith(NCHWC_SUFFIX) and (not fused_sum or named in adds):
                holds[adds[named] if fused_sum else named] = node.output[0]
        blocked = {n: holds[n] for n in names if n in holds}
        if not blocked:
            return {}
        shapes = {v.name: v.type.tensor_type.shape.dim
                  for v in onnx.shape_inference.infer_shapes(deployed).graph.value_info}
        return {n: (output, shapes[n][1].dim_value) for n, output in blocked.items()
                if n in shapes and len(shapes[n]) == 4 and shapes[n][1].dim_value > 0}

    def _unblocked_graph(self, blocked: dict[str, tuple[str, int]]) -> Path:
        """ORT's optimised graph plus a ReorderOutput (blocked NCHWc -> NCHW) for each blocked tensor, named
        `<tensor>` + UNBLOCKED."""
        import hashlib

        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(self._optimized_graph())
        for name, (source, channels) in sorted(blocked.items()):
            proto.graph.node.append(onnx.helper.make_node("ReorderOutput", [source], [name + UNBLOCKED],
                                                          domain=NCHWC_DOMAIN, channels=channels))
        key = hashlib.sha256(repr(sorted(blocked.items())).encode()).hexdigest()[:16]
        path = Path(self._optimized_folder.name) / f"unblocked-{key}.onnx"
        if not path.exists():
            onnx.save(proto, str(path))
        return path

    def _optimized_graph(self):
        """The graph ONNX Runtime really runs for this session's file and options (its optimisers' fusions
        and inserted casts included), as SessionOptions.optimized_model_filepath saves it. The file is kept
        while the session lives (its layouts follow this CPU: it is not for a cache other machines share)."""
        if getattr(self, "_optimized", None) is None:
            import onnx
            import onnxruntime as ort

            self._optimized_folder = tempfile.TemporaryDirectory(prefix="harness-ort-optimized-")
            options = self.make_options()
            options.optimized_model_filepath = str(Path(self._optimized_folder.name) / "optimized.onnx")
            ort.InferenceSession(str(self.graph), options, providers=self.providers)
            self._optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
            self._optimized_path = Path(options.optimized_model_filepath)
        return self._optimized

    def _executed(self):
        from harness.onnx_graph import compute_precisions

        return (compute_precisions(self._optimized_graph()), self._node_providers(), PROVIDERS[self.device],
                "ONNX Runtime's optimised graph (optimized_model_filepath); node placement from its profiler")

    def _node_providers(self) -> dict[str, int]:
        """{execution provider: nodes} from ONNX Runtime's profiler over one run of zeros: the assignment
        its partitioner made, fallbacks to the CPU provider included."""
        import json

        import numpy as np
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as folder:
            options = self.make_options()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "profile")
            session = ort.InferenceSession(str(self.graph), options, providers=self.providers)
            feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape],
                                      np.int64 if i.type == "tensor(int64)" else np.float32)
                     for i in session.get_inputs()}
            session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        placed = {event["name"]: event["args"]["provider"] for event in events
                  if event.get("cat") == "Node" and "provider" in event.get("args", {})}
        counts: dict[str, int] = {}
        for provider in placed.values():
            counts[provider] = counts.get(provider, 0) + 1
        return counts

    def _tap_runner(self, names, method):
        """graph-outputs: the deployed graph with the tensors as outputs (ORT optimises it again, and may fuse
        otherwise). kernel-boundary: ORT's own optimised graph, not optimised again, with the kernel outputs
        that hold the tensors as outputs: the kernels run as in the untapped session."""
        import onnxruntime as ort

        from harness.onnx_graph import with_outputs

        options = self.make_options()
        # a tapped run's outputs are most of its memory (hundreds of MB a sample at ResNet-50 size): without
        # ORT's arena they go back to the system when dropped, instead of the arena keeping its peak
        options.enable_cpu_mem_arena = False
        if method == "graph-outputs":
            graph, sources = self.graph, {n: n for n in names}
        else:
            sources = self._kernel_names(names)
            blocked = {n: found for n, found in self._blocked_names(names).items() if n not in sources}
            graph = self._unblocked_graph(blocked) if blocked else self._optimized_path
            sources.update({n: n + UNBLOCKED for n in blocked})
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(with_outputs(graph, list(sources.values()))), options,
                                       providers=self.providers)
        wanted = [*self.output_names, *(sources[n] for n in names)]
        labels = [*self.output_names, *names]
        return lambda feeds: dict(zip(labels, run_without_copies(session, wanted, feeds)))


def run_without_copies(session, names: list[str], feeds: dict) -> list:
    """InferenceSession.run, less its copy of every output: OrtValue.numpy() views ORT's own buffer (and
    keeps it alive). A tapped ResNet-50 run returns 106 MB a sample; copying it cost time and, while both
    copies lived, memory. A model with a non-tensor output (a sequence, a map) is run plainly."""
    import numpy as np
    import onnxruntime as ort

    values = session.run_with_ort_values(names, {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
                                                 for name, value in feeds.items()})
    if not all(value.is_tensor() for value in values):
        return session.run(names, feeds)
    return [value.numpy() for value in values]


def quantize_qdq(onnx_path: Path, calibration, out: Path, symmetric: bool = False) -> None:
    """onnxruntime.quantization static QDQ (per-channel int8 weights, MinMax int8 activations), after its
    own pre-processing (shape inference, folding). symmetric: zero-point 0 everywhere, as TensorRT wants."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.samples())

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = out.with_name("prepared.onnx").resolve()
    source = Path(onnx_path).resolve()  # before the chdir below: a relative path would name the scratch folder
    # ORT's symbolic shape inference, when it cannot infer every shape, saves `sym_shape_infer_temp.onnx`
    # and its data into the current folder before it gives up (onnxruntime/tools/symbolic_shape_infer.py;
    # an earlier zoo detector did, and the two files got committed); run it in a scratch folder instead
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        quant_pre_process(str(source), str(prepared))
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
    quantize_static(str(prepared), str(Path(out).resolve()), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    prepared.unlink()


def quantize_dynamic_int8(onnx_path: Path, out: Path) -> None:
    """onnxruntime.quantization's dynamic quantization: INT8 weights, activations quantized per batch at run
    time (no calibration): ORT's recipe for transformers."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(Path(onnx_path).resolve()), str(Path(out).resolve()), weight_type=QuantType.QInt8)


class OrtBackend(Backend):
    name = "onnxruntime"
    aliases = ("ort",)
    package = "onnxruntime"
    declared = {device: ("fp32", "fp16", "int8") for device in ("cpu", "cuda", "tensorrt")}
    load_options = ("optimize", "calibration", "artifact", "spinning", "arena")

    def devices(self) -> list[str]:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
        return [device for device, provider in PROVIDERS.items() if provider in have]

    def _load(self, model, device, precision, threads, optimize: bool = True, calibration=None,
              artifact: Path | None = None, spinning: bool = True, arena: bool = True, **options) -> Session:
        import onnxruntime as ort

        from harness.artifacts import fp16_onnx, quantized_onnx, weight_quantized

        source = Path(artifact) if artifact else model.onnx_path
        if artifact is None and precision == "fp16":
            source = fp16_onnx(model)
        elif artifact is None and precision == "int8" and model.spec.text_inputs:
            source = weight_quantized(model, "ort-dynamic", "model.onnx", quantize_dynamic_int8, ("onnxruntime", "onnx"))
        elif artifact is None and precision == "int8":
            source = quantized_onnx(model, calibration, "ort-qdq", quantize_qdq, ("onnxruntime", "onnx"))

        def make_options():
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            if not spinning:  # idle intra-op threads stop busy-waiting: CPU work between runs is not starved
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if not arena:  # the caller keeps outputs that are most of a run's memory: not pooled at their peak
                opts.enable_cpu_mem_arena = False
            if not optimize:  # the tensor reference: every ONNX op runs as written
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return opts

        providers = [PROVIDERS[device]] + (["CPUExecutionProvider"] if device != "cpu" else [])
        session = ort.InferenceSession(str(source), make_options(), providers=providers)
        if device != "cpu" and PROVIDERS[device] not in session.get_providers():
            from harness.errors import BackendUnavailable

            raise BackendUnavailable(f"onnxruntime: {PROVIDERS[device]} did not initialise "
                                     f"(session runs on {', '.join(session.get_providers())})")
        outputs = [o.name for o in session.get_outputs()]
        wanted = [name for name in model.output_names if name in outputs] or outputs
        return OrtSession(session, device, precision, [i.name for i in session.get_inputs()], wanted, Path(source),
                          make_options, providers)
