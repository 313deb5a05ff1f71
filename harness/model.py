"""ModelSpec: where a model comes from, its task, its I/O and the training profile it was trained with.

MODEL on the command line is one of (resolve_model):
  a zoo name (`harness zoo list`), `torchvision:NAME` (+ --checkpoint; the profile is read from
  `weights.transforms()`), `timm:NAME` (+ --checkpoint; the profile is timm's resolve_data_config +
  create_transform for it), `package.module:factory` (a callable returning an nn.Module or a ModelSpec),
  or a path to an `.onnx` file (no torch model: the reference is ONNX Runtime FP32, no graph optimisation).
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from harness.errors import InputError, UnknownName, UsageError
from harness.profile import Profile, load_profile
from harness.tasks import CLASSIFY, get_task


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str                                   # a harness.tasks name
    profile: Profile                            # the training profile: the reference side
    labels: tuple[str, ...] = ()
    build: Callable | None = None               # -> torch.nn.Module with random weights
    weights: Path | None = None                 # state_dict for build()
    onnx: Path | None = None                    # a ready ONNX file (then build is None)
    input_name: str = "input"
    output_names: tuple[str, ...] = ("logits",)
    head: dict = field(default_factory=dict)    # post-processing facts (e.g. FCOS strides)
    source: str = ""
    summary: str = ""
    stated: dict = field(default_factory=dict)  # metric on the embedded benchmark, as in models/README.md
    random_seed: int | None = None              # a library model without a checkpoint: built from this seed

    @property
    def weights_source(self) -> str:
        """What the weights are, for every report's model block."""
        if self.onnx is not None:
            return f"the ONNX file {self.onnx.name}"
        if self.weights is not None:
            return f"checkpoint {self.weights}"
        if self.random_seed is not None:
            return f"random (torch seed {self.random_seed}): accuracy means nothing, agreement between backends does"
        return "as built by its factory"

    @property
    def has_torch(self) -> bool:
        return self.build is not None

    def load_torch(self):
        """The eval-mode nn.Module with its weights loaded."""
        import torch

        if self.build is None:
            raise UsageError(f"model {self.name!r} is an ONNX file: there is no torch model to load")
        module = self.build()
        if self.weights is not None:
            if not Path(self.weights).is_file():
                raise InputError(f"{self.weights}: weights file not found")
            try:
                state = torch.load(self.weights, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises several unrelated types for a bad file
                raise InputError(f"{self.weights}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            if not isinstance(state, dict):
                raise InputError(f"{self.weights}: not a state_dict (a mapping of parameter names to tensors), "
                                 f"got {type(state).__name__}")
            _check_fits(module, state, self.weights, self.name)
            module.load_state_dict(state)
        return module.eval()


def _check_fits(module, state: dict, path: Path, name: str) -> None:
    """A checkpoint for another architecture names its missing and unexpected keys (a few of each) and the
    first shapes that differ, instead of torch's page-long message."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = [f"{len(keys)} {what} ({few(keys)})" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", reshaped)) if keys]
    if problems:
        raise InputError(f"{path}: does not fit {name}: {'; '.join(problems)}")


def names_code(model: str | None) -> bool:
    """MODEL as `package.module:factory`: a name that imports and calls code."""
    return bool(model) and ":" in model and not model.startswith(LIBRARY_SOURCES) and not model.endswith(".onnx")


LIBRARY_SOURCES = ("torchvision:", "timm:")  # MODEL prefixes naming a library's model, never user code


def _zoo_spec(name: str) -> ModelSpec:
    from harness.models import ZOO

    if name not in ZOO:
        raise UnknownName("model", name, sorted(ZOO) + ["torchvision:NAME", "timm:NAME", "pkg.mod:factory", "PATH.onnx"])
    return ZOO[name]()


def _pil_resizes() -> dict:
    """torchvision's interpolation modes -> the harness's resize names: Resize on a PIL image calls Pillow's
    resize with that filter (antialias is Pillow's own), which these names run."""
    from torchvision.transforms import InterpolationMode

    return {InterpolationMode.BILINEAR: "pil-bilinear", InterpolationMode.BICUBIC: "pil-bicubic",
            InterpolationMode.NEAREST: "pil-nearest", InterpolationMode.LANCZOS: "pil-lanczos",
            InterpolationMode.BOX: "pil-box", InterpolationMode.HAMMING: "pil-hamming"}


def _torchvision_spec(arch: str, checkpoint: Path | None) -> ModelSpec:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError:
        raise UnknownName("torchvision model", arch, torchvision.models.list_models()) from None
    profile = Profile(input_size=224, geometry="torchvision-crop")
    labels: tuple[str, ...] = ()
    try:  # the preprocessing of the default weights, read without downloading them
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        transforms = weights.transforms()
        interpolation = _pil_resizes()[transforms.interpolation]
        profile = Profile(resize=interpolation, geometry="torchvision-crop", input_size=transforms.crop_size[0],
                          resize_size=transforms.resize_size[0], mean=tuple(transforms.mean),
                          std=tuple(transforms.std))
        labels = tuple(weights.meta.get("categories") or ())
    except (ValueError, AttributeError, KeyError, TypeError):
        pass  # no published weights for this architecture: ImageNet defaults, overridable by --profile
    task = CLASSIFY
    seed = None if checkpoint is not None else RANDOM_WEIGHTS_SEED
    return ModelSpec(name=f"torchvision:{arch}", task=task, profile=profile, labels=labels,
                     build=lambda: _offline_build(builder, seed), weights=checkpoint,
                     source=f"torchvision:{arch}", summary=f"torchvision {arch}", random_seed=seed)


RANDOM_WEIGHTS_SEED = 0


def _offline_build(builder, seed: int | None):
    """A torchvision model built without any download (no weights, no backbone weights)."""
    import inspect

    options = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        options["weights_backbone"] = None  # detection and segmentation builders fetch one by default
    return _seeded(lambda: builder(**options), seed)


def _seeded(build: Callable, seed: int | None):
    """A library model built, without a checkpoint, from a fixed seed: the reference, the export and its
    cache key all see the same weights; the caller's random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if seed is not None else RANDOM_WEIGHTS_SEED)
        return build()


def _timm_spec(arch: str, checkpoint: Path | None) -> ModelSpec:
    """A timm classifier, built offline (`pretrained=False`); its reference pre-processing is what timm's
    `resolve_data_config` + `create_transform` make for it, read from its pretrained config."""
    try:
        import timm
        from timm.data import infer_imagenet_subset, resolve_data_config
        from timm.models import get_pretrained_cfg
    except ImportError as err:
        raise UsageError(f"timm:{arch} needs timm ({err}): pip install timm") from None
    if not timm.is_model(arch):
        raise UnknownName("timm model", arch, timm.list_models())
    pretrained = get_pretrained_cfg(arch)
    config = resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained else {})
    seed = None if checkpoint is not None else RANDOM_WEIGHTS_SEED
    return ModelSpec(name=f"timm:{arch}", task=CLASSIFY, profile=_timm_profile(arch, config),
                     labels=_timm_labels(infer_imagenet_subset(pretrained.to_dict()) if pretrained else None),
                     build=lambda: _seeded(lambda: timm.create_model(arch, pretrained=False), seed),
                     weights=checkpoint, source=f"timm:{arch}", summary=f"timm {arch}", random_seed=seed)


def _timm_profile(arch: str, config: dict) -> Profile:
    """timm's eval transform (transforms_imagenet_eval) as a profile: crop_mode "center" is torchvision's
    Resize(floor(size / crop_pct)) + CenterCrop, "squash" resizes both sides to that and centre-crops."""
    import math

    from timm.data.transforms import str_to_interp_mode

    _, height, width = config["input_size"]
    mode = config.get("crop_mode") or "center"
    if height != width or mode not in ("center", "squash"):
        raise UsageError(f"timm:{arch}: timm evaluates it at {height}x{width} with crop_mode {mode!r}; the harness "
                         "reproduces square inputs with crop_mode center or squash, bit for bit, and no other")
    resize_size = math.floor(height / (config.get("crop_pct") or 0.875))
    return Profile(resize=_pil_resizes()[str_to_interp_mode(config["interpolation"])],
                   geometry="torchvision-crop" if mode == "center" else "squash", input_size=height,
                   resize_size=resize_size, mean=tuple(config["mean"]), std=tuple(config["std"]))


def _timm_labels(subset: str | None) -> tuple[str, ...]:
    """ImageNet-1k: torchvision's category names (the same classes, in the same order), so a folder per WordNet
    id maps onto them; another ImageNet subset: timm's WordNet ids for it; anything else: none."""
    if subset == "imagenet-1k":
        from torchvision.models import ResNet18_Weights

        return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if subset:
        from timm.data import ImageNetInfo

        return tuple(ImageNetInfo(subset).label_names())
    return ()


def _factory_spec(target: str) -> ModelSpec:
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"cannot import model factory {target!r} ({type(err).__name__}: {err})") from None
    made = factory()
    if isinstance(made, ModelSpec):
        return made
    return ModelSpec(name=target, task=CLASSIFY, profile=Profile(), build=factory, source=target,
                     summary=f"factory {target}")


def parse_input_shape(text: str) -> int:
    """--input-shape: 'S', 'HxW', 'CxHxW' or 'NxCxHxW' -> the square side S the pre-processing produces."""
    parts = [p.strip() for p in str(text).lower().replace("*", "x").split("x")]
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 2, 3, 4):
        raise UsageError(f"--input-shape {text!r}: expected S, HxW, CxHxW or NxCxHxW with positive integers")
    dims = [int(p) for p in parts]
    if len(dims) >= 3 and dims[-3] != 3:
        raise UsageError(f"--input-shape {text!r}: {dims[-3]} channels; image models here take 3 (RGB/BGR)")
    height, width = dims[-2:] if len(dims) > 1 else (dims[0], dims[0])
    if height != width:
        raise UsageError(f"--input-shape {text!r}: {height}x{width} is not square; the pre-processing makes "
                         "square inputs (shorter-crop, letterbox, squash)")
    return height


def _onnx_spec(path: Path, input_size: int | None = None) -> tuple[ModelSpec, bool]:
    """The spec of an .onnx file, and whether its input size is dynamic (and was not given)."""
    import onnx

    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    try:
        onnx.checker.check_model(str(path))  # by path: external data is resolved next to the file
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError...
        raise InputError(f"{path}: not a valid ONNX model ({type(err).__name__}: {str(err).splitlines()[0]})") \
            from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InputError(f"{path}: expected one image input, found {len(inputs)}: {', '.join(inputs)}")
    image_input = next(i for i in proto.graph.input if i.name == inputs[0])
    dims = image_input.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise InputError(f"{path}: input {inputs[0]!r} has {len(dims)} dimensions; an image model takes N x 3 x H x W")
    fixed = dims[-1].dim_value if dims[-1].dim_value and dims[-2].dim_value else None
    if fixed and input_size and input_size != fixed:
        raise UsageError(f"--input-shape {input_size}: {path} has a fixed input of {dims[-2].dim_value}x{fixed}")
    size = input_size or fixed or Profile().input_size
    return ModelSpec(name=path.stem, task=CLASSIFY, profile=Profile(input_size=size), onnx=path.resolve(),
                     input_name=inputs[0], output_names=tuple(o.name for o in proto.graph.output),
                     source=str(path), summary=f"ONNX file {path.name}"), not (input_size or fixed)


def resolve_model(name: str | None, checkpoint: Path | None = None, profile_path: Path | None = None,
                  task: str | None = None, allow_code: bool = False, input_shape: str | None = None) -> ModelSpec:
    """MODEL string (+ options) -> ModelSpec. None means the zoo's default classifier. `name` comes from the
    command line (a factory there is the user's own choice); `allow_code` lets the profile file name code."""
    from harness.models import DEFAULT_CLASSIFIER

    name = name or DEFAULT_CLASSIFIER
    input_size = parse_input_shape(input_shape) if input_shape else None
    dynamic = False
    if name.endswith(".onnx"):
        spec, dynamic = _onnx_spec(Path(name), input_size)
    elif name.startswith(LIBRARY_SOURCES):
        library, _, arch = name.partition(":")
        spec = {"torchvision": _torchvision_spec, "timm": _timm_spec}[library](arch, checkpoint)
    elif ":" in name:
        spec = _factory_spec(name)
    else:
        spec = _zoo_spec(name)
    if checkpoint is not None and not name.startswith(LIBRARY_SOURCES):
        spec = replace(spec, weights=checkpoint)
    if profile_path is not None:
        profile = load_profile(profile_path, spec.profile, allow_code)
        dynamic = dynamic and profile.input_size == spec.profile.input_size
        spec = replace(spec, profile=profile, labels=profile.labels or spec.labels)
    if task is not None:
        spec = replace(spec, task=task)
    if input_size and spec.profile.input_size != input_size:
        spec = replace(spec, profile=spec.profile.replace(input_size=input_size))
    whole = spec.profile.geometry == "letterbox" or (spec.profile.geometry == "squash" and spec.profile.resize_size
                                                     in (None, spec.profile.input_size))
    if get_task(spec.task).needs_whole_image and not whole:
        raise UsageError(f"{spec.name}: a {spec.task} model is evaluated on whole-image maps, and geometry "
                         f"{spec.profile.geometry!r} crops the image; set geometry = \"squash\" (without a larger "
                         "resize_size) or \"letterbox\" in the --profile file")
    if spec.random_seed is not None:
        _note(f"{spec.name} has no --checkpoint: it runs random weights (torch seed {spec.random_seed}), so its "
              "accuracy means nothing; agreement between backends still does")
    if dynamic:
        size = spec.profile.input_size
        _note(f"{name}: the input's height and width are dynamic; evaluating at {size}x{size} px (set the size "
              "with --input-shape or a profile's input_size)")
    return spec


def _note(text: str) -> None:
    """One line on stderr, once: a worker started again after a crashed cell (harness.executor) resolves the
    model again and stays quiet about it."""
    import os

    if os.environ.get("HARNESS_WORKER") != "1":
        print(f"harness: note: {text}", file=sys.stderr)
