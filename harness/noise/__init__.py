"""Noise axes of the SysNoise paper (arXiv 2307.00280): named sets of alternatives for one part of the
deployment system. A sweep varies one axis at a time against the training profile.

Each variant says what it changes (profile fields, a backend/precision, or a graph rewrite) and what it
is measured against (its baseline): pre- and post-processing variants against the training reference;
`backend` against the reference; `precision` against the same backend at FP32, and graph rewrites
against the same backend running the unrewritten graph, so those noises are not confounded with
backend noise (DESIGN.md, "What reference means").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UnknownName, UsageError
from harness.placement import Placement

# --combine adds axes cumulatively in the paper's order
GRAPH_REWRITE_AXES = ("ceil_mode", "upsample")  # rewrites of image ops: Task.graph_axes says which apply
PAPER_ORDER = ("tokenizer", "unicode", "case", "truncation", "padding", "decoder", "resize", "crop", "color", "precision", "ceil_mode", "upsample", "nms", "box_decode",
               "points", "mask_resize", "mask_paste", "keypoint_decode")


@dataclass(frozen=True)
class Variant:
    name: str
    profile: dict = field(default_factory=dict)     # Profile field changes (pre/post stages)
    target: Placement | None = None                 # where a model-stage variant runs the model
    graph: dict = field(default_factory=dict)       # ONNX rewrite (harness.noise.graph.rewrite kwargs)
    options: dict = field(default_factory=dict)     # backend load options (the CUDA numerics of torch)
    baseline: str = "reference"                     # reference | same-backend-fp32 | unrewritten-graph
    note: str = ""


@dataclass(frozen=True)
class Axis:
    name: str
    stage: str                                      # pre | model | post
    description: str
    tasks: tuple[str, ...] | None = None            # the tasks it acts on, when not every task's (Task attributes)

    def applies_to(self) -> list[str]:
        """The task families whose models this axis varies (`--list-axes` says so)."""
        from harness.tasks import registry

        def acts(task) -> bool:
            if self.tasks is not None:
                return task.name in self.tasks
            if self.stage == "pre":
                return self.name in task.pre_axes
            if self.stage == "post":
                return self.name in task.post_axes
            return self.name not in GRAPH_REWRITE_AXES or self.name in task.graph_axes
        return [task.name for task in registry().values() if acts(task)]

    def variants(self, spec, graph_backend: str) -> list[Variant]:
        """Its variants for this model; none where the model's task has no such stage (a text model has no
        JPEG decoder, an image model no tokeniser, a transformer no pooling to ceil)."""
        from harness.tasks import get_task

        task = get_task(spec.task)
        if (self.stage == "pre" and self.name not in task.pre_axes) or \
                (self.name in GRAPH_REWRITE_AXES and self.name not in task.graph_axes) or \
                (self.tasks is not None and task.name not in self.tasks):
            return []
        return VARIANT_BUILDERS[self.name](spec, graph_backend) + USER_VARIANTS.get(self.name, [])


def cuda_missing() -> str | None:
    """Why this machine cannot run the GPU variants (None: it can): no NVIDIA GPU, or a torch without CUDA."""
    from harness.backends import nvidia_gpu_present

    if not nvidia_gpu_present():
        return "no NVIDIA GPU on this machine"
    import torch

    return None if torch.cuda.is_available() else f"torch {torch.__version__} cannot use the GPU (no CUDA build)"


def decoders_missing() -> dict[str, str]:
    """Decoder -> why this machine cannot run it (no GPU for nvJPEG, a package not installed)."""
    import importlib.util

    from harness.preprocess import CUDA_DECODERS, DECODER_PACKAGES

    no_cuda = cuda_missing()
    missing = dict.fromkeys(CUDA_DECODERS, no_cuda) if no_cuda else {}
    for decoder, package in DECODER_PACKAGES.items():
        if importlib.util.find_spec(package) is None:
            missing[decoder] = f"the {package} package is not installed"
    return missing


def _profile_axis(field_name: str, registry_name: str):
    def build(spec, graph_backend):
        from harness import preprocess

        registry = getattr(preprocess, registry_name)
        if field_name == "decoder":
            missing = decoders_missing()
            registry = {name: f for name, f in registry.items() if name not in missing}
        if field_name == "resize" and spec.profile.geometry == "topdown":  # a crop is warped, not resized
            from harness.topdown import WARPS as registry
        reference = getattr(spec.profile, field_name)
        # a user's `package.module:function` sits in the registry once imported; it is a user variant
        return [Variant(name, {field_name: name}) for name in registry if name != reference and ":" not in name]
    return build


def _color_variants(spec, graph_backend):
    """Every colour mode converted where the training profile's system converts it (`color_at`, by default
    at decode, full resolution, as a camera ISP or video decoder delivers it), and each conversion that is
    not a pure channel order once more at the other placement, named NAME@PLACE (an NPU converting its
    model input after the resize)."""
    from harness.preprocess import CHANNEL_ORDERS
    from harness.profile import COLOR_PLACEMENTS, NORMALISING_GEOMETRIES

    here = spec.profile.color_at
    variants = [Variant(v.name, {**v.profile, "color_at": here})
                for v in _profile_axis("color", "COLORS")(spec, graph_backend)]
    if spec.profile.geometry in NORMALISING_GEOMETRIES:  # its model input is normalised floats, never an image
        return variants
    other = next(place for place in COLOR_PLACEMENTS if place != here)
    return variants + [Variant(f"{v.name}@{other}", {"color": v.name, "color_at": other})
                       for v in variants if v.name not in CHANNEL_ORDERS]


def _backend_variants(spec, graph_backend):
    from harness.backends import registry

    return [Variant(b.name, target=Placement(b.name)) for b in registry().values()
            if b.available()[0] and "cpu" in b.devices() and b.name != "torch"]


def _precision_variants(spec, graph_backend):
    """Each backend's lower precisions against it at FP32: on the CPU, and on the GPU where there is one
    (NAME-cuda-PRECISION; torch's are autocast)."""
    from harness.backends import registry

    variants = []
    for backend in registry().values():
        if not backend.available()[0]:
            continue
        devices = backend.devices()
        for device in ("cpu", "cuda"):
            if device not in devices or (backend.name == "torch" and not spec.has_torch):
                continue
            for precision in backend.precisions(device):
                # int4 is weight-only compression of a transformer's MatMuls: no variant of an image model
                if precision == "int4" and not spec.text_inputs:
                    continue
                if precision != "fp32" and not (backend.name == "tvm" and precision == "fp16"):
                    name = f"{backend.name}-{precision}" if device == "cpu" else f"{backend.name}-{device}-{precision}"
                    variants.append(Variant(name, target=Placement(backend.name, device, precision),
                                            baseline="same-backend-fp32"))
    return variants


# the CUDA numerics of the torch backend (backends.pytorch), each against torch CUDA FP32 with TF32 off and
# cuDNN deterministic: {axis: [(variant, load options)]}
CUDA_NUMERICS = {"tf32": [("on", {"tf32": True})],
                 "cudnn": [("benchmark", {"cudnn": "benchmark"})],
                 "compile": [("default", {"compile": "default"}), ("max-autotune", {"compile": "max-autotune"})]}


def _cuda_numerics(axis: str):
    def build(spec, graph_backend):
        if cuda_missing() or not spec.has_torch:
            return []
        return [Variant(name, target=Placement("torch", "cuda", "fp32"), options=options, baseline="same-backend-fp32")
                for name, options in CUDA_NUMERICS[axis]]
    return build


def unavailable(axis: str, spec) -> str | None:
    """Why an axis offers no (or not every) variant on this machine or this model, for --list-axes and a sweep's
    report; None: it offers all."""
    from harness.tasks import get_task

    task = get_task(spec.task)
    if axis in task.post_axes and axis not in task.post_axes_of(spec):
        return (f"does not apply to {spec.name}: {task.post_processed_by(spec, axis)} does this step, and what it "
                "makes is compared as it is")
    missing = cuda_missing()
    if axis in CUDA_NUMERICS:
        return missing or (None if spec.has_torch else f"{spec.name} is an ONNX file: there is no torch model")
    if axis == "decoder" and (decoders := decoders_missing()):
        return "; ".join(f"{decoder}: {why}" for decoder, why in decoders.items())
    if axis == "precision" and missing:
        return f"GPU precisions (torch CUDA autocast fp16/bf16, other backends' CUDA precisions): {missing}"
    return None


def _ceil_variants(spec, graph_backend):
    return [Variant("ceil", graph={"ceil_mode": True}, target=Placement(graph_backend),
                    baseline="unrewritten-graph", note="every MaxPool/AveragePool with ceil_mode=1")]


def _upsample_variants(spec, graph_backend):
    from harness.noise.graph import COORDINATE_MODES

    return [Variant(f"{mode}-{coordinate}", graph={"resize_mode": mode, "coordinate_mode": coordinate},
                    target=Placement(graph_backend), baseline="unrewritten-graph")
            for mode in ("nearest", "linear") for coordinate in COORDINATE_MODES]


VARIANT_BUILDERS = {
    **{axis: _cuda_numerics(axis) for axis in CUDA_NUMERICS},
    "decoder": _profile_axis("decoder", "DECODERS"),
    "resize": _profile_axis("resize", "RESIZERS"),
    "color": _color_variants,
    "backend": _backend_variants,
    "precision": _precision_variants,
    "ceil_mode": _ceil_variants,
    "upsample": _upsample_variants,
}
AXES = {
    "decoder": Axis("decoder", "pre", "JPEG decoder: Pillow, OpenCV, torchvision, FFmpeg, libjpeg-turbo fast "
                                      "IDCT + plain upsampling, DCT-domain 1/2 reduced decoding, nvJPEG on the GPU"),
    "resize": Axis("resize", "pre", "interpolation of the resize (geometry fixed: shorter side, centre crop), or of a "
                                    "top-down crop's warp"),
    "color": Axis("color", "pre", "channel order and YUV 4:2:0 round trips (BT.601/709, full/limited, I420/NV12), "
                                  "at decode (full resolution, as a camera or video decoder) and, NAME@model-input, "
                                  "after the resize"),
    "precision": Axis("precision", "model", "FP16/BF16/INT8 on each backend (CPU, and GPU where there is one; "
                                          "torch CUDA by autocast; INT4 weights of a text model on OpenVINO), "
                                          "against that backend at FP32"),
    "backend": Axis("backend", "model", "every installed backend at FP32, against the reference"),
    "ceil_mode": Axis("ceil_mode", "model", "pooling ceil mode flipped in the exported graph"),
    "upsample": Axis("upsample", "model", "Resize mode and coordinate transformation rewritten in the graph"),
    "tf32": Axis("tf32", "model", "GPU: TF32 matrix multiplies and convolutions on torch CUDA, against TF32 off"),
    "cudnn": Axis("cudnn", "model", "GPU: cuDNN's benchmark-selected algorithms on torch CUDA, against its "
                                    "deterministic ones"),
    "compile": Axis("compile", "model", "GPU: torch.compile (inductor; default and max-autotune modes) on torch "
                                        "CUDA, against eager; only when named in --axes"),
}


# the profile field a user's `package.module:function` replaces, per axis
USER_FIELDS = {"decoder": "decoder", "resize": "resize", "color": "color", "nms": "nms"}
USER_VARIANTS: dict[str, list[Variant]] = {}


def add_user_variant(text: str) -> None:
    """'AXIS=package.module:function' -> one more variant of that axis (validated by importing it)."""
    from harness import postprocess, preprocess
    from harness.plugins import load_user_function

    axis, _, target = text.partition("=")
    axis = axis.strip()
    if axis not in USER_FIELDS or ":" not in target:
        raise UsageError(f"--variant {text!r}: expected AXIS=package.module:function with AXIS one of "
                         f"{', '.join(USER_FIELDS)}")
    registry = {"decoder": preprocess.DECODERS, "resize": preprocess.RESIZERS, "color": preprocess.COLORS,
                "nms": postprocess.NMS}[axis]
    load_user_function(registry, axis, target.strip())
    USER_VARIANTS.setdefault(axis, []).append(Variant(target.strip(), {USER_FIELDS[axis]: target.strip()},
                                                      note="user variant"))


# named in --axes only: torch.compile's max-autotune mode compiles for minutes, which no one asked to wait for
NOT_DEFAULT = ("compile",)


def get_axes(names: str | None) -> list[Axis]:
    if names is None:
        return [AXES[name] for name in AXES if name not in NOT_DEFAULT]
    axes = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in AXES:
            raise UnknownName("noise axis", name, list(AXES))
        axes.append(AXES[name])
    if not axes:
        raise UsageError(f"--axes {names!r} names no axis; known: {', '.join(AXES)}")
    return axes


def _nms_variants(spec, graph_backend):
    from harness.postprocess import NMS

    reference = spec.profile
    variants = [Variant(name, {"nms": name}) for name in NMS if name != reference.nms and ":" not in name]
    variants += [Variant(f"iou-{iou}", {"iou_threshold": iou}) for iou in (0.5, 0.7) if iou != reference.iou_threshold]
    variants += [Variant(f"score-{score}", {"score_threshold": score}) for score in (0.1, 0.3)]
    variants += [Variant(f"max-{count}", {"max_detections": count}) for count in (10, 300)
                 if count != reference.max_detections]
    return variants


def _box_decode_variants(spec, graph_backend):
    from harness.postprocess import BOX_DECODES

    return [Variant(name, {"box_decode": name}) for name in BOX_DECODES if name != spec.profile.box_decode]


def _post_processing(axis: str, build):
    """A post-processing axis: its variants where the model's task has that stage (Task.post_axes)."""
    def variants(spec, graph_backend):
        from harness.tasks import get_task

        return build(spec, graph_backend) if axis in get_task(spec.task).post_axes_of(spec) else []
    return variants


def _point_variants(spec, graph_backend):
    """Every point placement a runtime may compute other than the one the head was trained with."""
    from harness.postprocess import POINT_PLACEMENTS, point_placement

    trained = point_placement(spec.head, spec.profile)
    return [Variant(name, {"points": name}) for name in POINT_PLACEMENTS if name != trained]


def _mask_resize_variants(spec, graph_backend):
    from harness.postprocess import MASK_RESIZES

    return [Variant(name, {"mask_resize": name}) for name in MASK_RESIZES if name != spec.profile.mask_resize]


def _mask_paste_variants(spec, graph_backend):
    """Instance masks pasted onto the image another way (bilinear or nearest, with or without half-pixel
    centres), and thresholded at 0.4 instead of 0.5."""
    from harness.masks import MASK_PASTES

    reference = spec.profile
    return [Variant(name, {"mask_paste": name}) for name in MASK_PASTES if name != reference.mask_paste] + \
        [Variant(f"threshold-{value}", {"mask_threshold": value}) for value in (0.4,) if value != reference.mask_threshold]


def _keypoint_decode_variants(spec, graph_backend):
    from harness.postprocess import KEYPOINT_DECODES

    head = spec.head
    pairs = tuple(tuple(pair) for pair in head.get("flip_pairs", ()))  # hashable: it keys the model config
    flip = [Variant("flip-test", graph={"flip_test": (head["x"], head["y"], pairs)},
                    target=Placement(graph_backend), baseline="unrewritten-graph",
                    note="the mirrored crop runs beside the crop, its bins flipped back and averaged (mmpose)")] \
        if head.get("flip_pairs") else []
    return [Variant(name, {"keypoint_decode": name}) for name in KEYPOINT_DECODES
            if name != spec.profile.keypoint_decode] + flip


def _crop_variants(spec, graph_backend):
    """A top-down crop taken otherwise: the other pixel convention, less or more padding around the box."""
    from harness.profile import CROP_CONVENTIONS

    if spec.profile.geometry != "topdown":
        return []
    reference = spec.profile
    return [Variant(name, {"crop_convention": name}) for name in CROP_CONVENTIONS
            if name != reference.crop_convention] + \
        [Variant(f"padding-{padding}", {"box_padding": padding}) for padding in (1.0, 1.5)
         if padding != reference.box_padding]


VARIANT_BUILDERS["nms"] = _post_processing("nms", _nms_variants)
VARIANT_BUILDERS["keypoint_decode"] = _post_processing("keypoint_decode", _keypoint_decode_variants)
VARIANT_BUILDERS["crop"] = _crop_variants
VARIANT_BUILDERS["mask_resize"] = _post_processing("mask_resize", _mask_resize_variants)
VARIANT_BUILDERS["mask_paste"] = _post_processing("mask_paste", _mask_paste_variants)
VARIANT_BUILDERS["points"] = _post_processing("points", _point_variants)
VARIANT_BUILDERS["box_decode"] = _post_processing("box_decode", _box_decode_variants)
AXES["nms"] = Axis("nms", "post", "NMS implementation (torchvision, ONNX NonMaxSuppression on ORT, OpenCV, "
                                  "NumPy), class-agnostic, IoU/score thresholds, max detections")
AXES["box_decode"] = Axis("box_decode", "post", "box decoding: no clipping, legacy +1 pixel convention, float16")
AXES["points"] = Axis("points", "post", "point/anchor placement the runtime computes: on the stride grid or "
                                        "spread evenly over the input, at the cell centre (offset 0.5) or corner (0)")
AXES["mask_resize"] = Axis("mask_resize", "post", "segmentation logits to the label's resolution: bilinear with and "
                                                "without align_corners, or argmax then nearest")
AXES["mask_paste"] = Axis("mask_paste", "post", "instance masks onto the image: bilinear or nearest, with or without "
                                              "the half-pixel offset; threshold 0.4 instead of 0.5")
AXES["keypoint_decode"] = Axis("keypoint_decode", "post", "SimCC bins to coordinates: argmax, a quarter-bin shift "
                                                        "toward the larger neighbour, DARK sub-bin refinement; "
                                                        "flip test (in the graph) on")
AXES["crop"] = Axis("crop", "pre", "top-down crop of an instance's box: UDP vs legacy pixel convention, box padding")


from harness.noise import text_axes  # noqa: E402,F401 - registers the text pre-processing axes
