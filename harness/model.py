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
from harness.heads import user_head
from harness.onnx_inputs import parse_input_options
from harness.profile import Profile, load_profile
from harness.tasks import CLASSIFY, DETECT, TEXT_CLASSIFY, get_task


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
    bound_inputs: tuple = ()                    # an .onnx file's non-image inputs and their constants
    fixed_batch: int | None = None              # an .onnx file's fixed image batch (run that many at a time)
    text_inputs: tuple[str, ...] = ()           # a text model's int64 [batch, sequence] inputs, in call order
    tokenizer: Path | None = None               # a text model's tokeniser folder (save_pretrained's layout)
    exporters: tuple[str, ...] = ("dynamo", "legacy")  # the torch exporters tried, in order (harness.export)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.text_inputs or (self.input_name,)

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
        if self.build is None:
            raise UsageError(f"model {self.name!r} is an ONNX file: there is no torch model to load")
        module = self.build()
        if self.weights is not None:
            state = read_state_dict(self.weights)
            _check_fits(module, state, self.weights, self.name)
            module.load_state_dict(state)
        return module.eval()


def read_state_dict(path: Path) -> dict:
    """A checkpoint's state_dict (tensors only: torch.load with weights_only, never an unpickled object)."""
    import torch

    if not Path(path).is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise InputError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state_dict (a mapping of parameter names to tensors), got "
                         f"{type(state).__name__}")
    return state


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


LIBRARY_SOURCES = ("torchvision:", "timm:", "transformers:")  # MODEL prefixes naming a library's model, never user code


def _zoo_spec(name: str) -> ModelSpec:
    from harness.models import ZOO

    if name not in ZOO:
        raise UnknownName("model", name, sorted(ZOO) + ["torchvision:NAME", "timm:NAME", "pkg.mod:factory", "PATH.onnx"])
    return ZOO[name]()


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


def _onnx_spec(path: Path, input_size: int | None, declared: dict) -> tuple[ModelSpec, tuple[str, ...]]:
    """The spec of an .onnx file (its inputs resolved against the declarations: harness.onnx_inputs), and the
    image's dynamic height/width dimensions that were not given."""
    import onnx

    from harness.onnx_inputs import resolve_graph_inputs, text_graph_inputs

    if not path.is_file():
        raise InputError(f"{path}: ONNX file not found")
    try:
        onnx.checker.check_model(str(path))  # by path: external data is resolved next to the file
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError...
        raise InputError(f"{path}: not a valid ONNX model ({type(err).__name__}: {str(err).splitlines()[0]})") \
            from None
    text = text_graph_inputs(path, proto)
    if text:
        return ModelSpec(name=path.stem, task=TEXT_CLASSIFY, profile=Profile(), onnx=path.resolve(),
                         input_name=text[0], output_names=tuple(o.name for o in proto.graph.output),
                         source=str(path), summary=f"ONNX text model {path.name}", text_inputs=text), ()
    inputs = resolve_graph_inputs(path, proto, declared, input_size)
    size = inputs.input_size or Profile().input_size
    return ModelSpec(name=path.stem, task=CLASSIFY, profile=Profile(input_size=size), onnx=path.resolve(),
                     input_name=inputs.image, output_names=tuple(o.name for o in proto.graph.output),
                     source=str(path), summary=f"ONNX file {path.name}", bound_inputs=inputs.bound,
                     fixed_batch=inputs.fixed_batch), inputs.dynamic


@dataclass(frozen=True)
class ModelRequest:
    """The model as the command line or a gate names it (MODEL and its options): picklable, checked on the
    driver, resolved where the work runs."""

    model: str | None = None
    checkpoint: Path | None = None
    profile: Path | None = None
    allow_code: bool = False
    input_shape: str | None = None
    task: str | None = None
    labels: Path | None = None
    inputs: tuple[str, ...] = ()                # --input NAME=VALUE, each (harness.onnx_inputs)
    postprocess: str | None = None              # --postprocess package.module:function (harness.heads.UserHead)
    tokenizer: Path | None = None               # --tokenizer FOLDER: a text model's tokeniser

    @property
    def title(self) -> str:
        return self.model or "the default model"

    def check(self) -> None:
        """The user's files and values checked before the model is built (which imports torch and may
        export): a bad one is one line in a second, not after the work."""
        for _, check in self.checks():
            check()

    def checks(self) -> list[tuple[str, Callable]]:
        """(the option's name, its check) for each option given."""
        given = [("input_shape", self.input_shape, lambda: parse_input_shape(self.input_shape)),
                 ("profile", self.profile, lambda: load_profile(self.profile, Profile(), self.allow_code)),
                 ("task", self.task, lambda: get_task(self.task)),
                 ("labels", self.labels, lambda: read_labels(self.labels)),
                 ("inputs", self.inputs or None, self._check_inputs),
                 ("postprocess", self.postprocess, lambda: user_head(self.postprocess, ())),
                 ("tokenizer", self.tokenizer, self._check_tokenizer)]
        return [(name, check) for name, value, check in given if value is not None]

    def _check_inputs(self) -> None:
        """The declarations parsed and, for an .onnx file, held against its graph (a cheap read)."""
        declared = parse_input_options(self.inputs)
        if self.model and self.model.endswith(".onnx") and Path(self.model).is_file():
            from_profile = load_profile(self.profile, Profile(), self.allow_code).inputs if self.profile else {}
            size = parse_input_shape(self.input_shape) if self.input_shape else None
            _onnx_spec(Path(self.model), size, {**from_profile, **declared})

    def _check_tokenizer(self) -> None:
        from harness.tokenization import load_tokenizer

        load_tokenizer(str(self.tokenizer), "fast", None, None)

    def resolve(self) -> ModelSpec:
        return resolve_model(self.model, self.checkpoint, self.profile, self.task, self.allow_code, self.input_shape,
                             self.labels, self.inputs, self.postprocess, self.tokenizer)


def with_user_postprocessing(spec: ModelSpec, function: str, task: str | None) -> ModelSpec:
    """The model with the user's post-processing as its head: a detector (an .onnx file says nothing of its
    task, so --postprocess makes it one unless --task said otherwise)."""
    if task is None and spec.onnx is not None:
        spec = replace(spec, task=DETECT)
    if spec.task != DETECT:
        raise UsageError(f"--postprocess {function}: returns detections; {spec.name} is a {spec.task} model "
                         "(pass --task detect if it is a detector)")
    return replace(spec, head=user_head(function, spec.output_names))


def read_labels(path: Path) -> tuple[str, ...]:
    """--labels FILE: the model's class names in class-index order, one per line (a `.json` file: a list of
    strings). A dataset's class folders are matched against these names."""
    import collections

    from harness.files import read_json, read_text

    path = Path(path)
    if path.suffix.lower() == ".json":
        labels = read_json(path, "labels file")
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise InputError(f"{path}: expected a JSON list of class names (strings)")
    else:
        labels = read_text(path, "labels file").rstrip("\r\n").splitlines()
    labels = [label.strip() for label in labels]
    blank = [str(k + 1) for k, label in enumerate(labels) if not label]
    if blank or not labels:
        raise InputError(f"{path}: " + (f"no class name on line {', '.join(blank[:5])}" if blank else "no class names")
                         + " (one class name per line, in class-index order)")
    repeated = sorted(label for label, count in collections.Counter(labels).items() if count > 1)
    if repeated:
        raise InputError(f"{path}: class names repeated: {', '.join(repeated[:5])}; each index needs its own name")
    return tuple(labels)


def _head_of(head: dict, spec: ModelSpec, source: Path) -> dict:
    """A profile file's [head]: the outputs it names must be the graph's (an .onnx file's are known now)."""
    from harness.heads import checked_head

    try:
        return checked_head(head, spec.output_names if spec.onnx is not None else None)
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None


def resolve_model(name: str | None, checkpoint: Path | None = None, profile_path: Path | None = None,
                  task: str | None = None, allow_code: bool = False, input_shape: str | None = None,
                  labels_path: Path | None = None, inputs: tuple[str, ...] = (),
                  postprocess: str | None = None, tokenizer: Path | None = None) -> ModelSpec:
    """MODEL string (+ options) -> ModelSpec. None means the zoo's default classifier. `name` comes from the
    command line (a factory there is the user's own choice); `allow_code` lets the profile file name code.
    The task is `task`, else the profile file's, else the source's; the labels `labels_path`'s, else the
    profile file's, else the source's."""
    from harness.models import DEFAULT_CLASSIFIER

    name = name or DEFAULT_CLASSIFIER
    input_size = parse_input_shape(input_shape) if input_shape else None
    dynamic: tuple[str, ...] = ()
    if name.endswith(".onnx"):
        declared = load_profile(profile_path, Profile(), allow_code).inputs if profile_path is not None else {}
        spec, dynamic = _onnx_spec(Path(name), input_size, {**declared, **parse_input_options(inputs)})
    elif inputs:
        raise UsageError(f"--input {inputs[0]}: inputs are declared for an .onnx file; {name} is built in torch "
                         "and takes the image alone")
    elif name.startswith(LIBRARY_SOURCES):
        from harness.libraries import LIBRARIES

        library, _, arch = name.partition(":")
        spec = LIBRARIES[library](arch, checkpoint)
    elif ":" in name:
        spec = _factory_spec(name)
    else:
        spec = _zoo_spec(name)
    if checkpoint is not None and not name.startswith(LIBRARY_SOURCES):
        spec = replace(spec, weights=checkpoint)
    if profile_path is not None:
        profile = load_profile(profile_path, spec.profile, allow_code)
        dynamic = dynamic if profile.input_size == spec.profile.input_size else ()
        spec = replace(spec, profile=profile, labels=profile.labels or spec.labels)
        task = task or profile.task
        if profile.head:
            spec = replace(spec, head=_head_of(profile.head, spec, profile_path))
    if task is not None:
        spec = replace(spec, task=get_task(task).name)
        if get_task(task).reads_text != bool(spec.text_inputs):
            kind = "a text" if spec.text_inputs else "an image"
            raise UsageError(f"{name} is {kind} model: task {spec.task} takes "
                             f"{'text (input_ids)' if get_task(task).reads_text else 'images'}")
    if labels_path is not None:
        spec = replace(spec, labels=read_labels(labels_path))
    if tokenizer is not None:
        spec = replace(spec, tokenizer=Path(tokenizer).resolve())
    if spec.text_inputs and spec.tokenizer is None:
        raise UsageError(f"{name}: a text model (inputs {', '.join(spec.text_inputs)}) needs its tokeniser: "
                         "--tokenizer FOLDER (save_pretrained's layout)")
    if postprocess is not None:
        spec = with_user_postprocessing(spec, postprocess, task)
    get_task(spec.task).require_head(spec)  # a detector without a declared layout: one line, before any work
    if input_size and spec.profile.input_size != input_size:
        spec = replace(spec, profile=spec.profile.replace(input_size=input_size))
    whole = spec.profile.geometry in ("letterbox", "torchvision-resize", "torchvision-detect") or (
        spec.profile.geometry == "squash" and spec.profile.resize_size in (None, spec.profile.input_size))
    if get_task(spec.task).needs_whole_image and not whole:
        raise UsageError(f"{spec.name}: a {spec.task} model is evaluated on whole-image maps, and geometry "
                         f"{spec.profile.geometry!r} crops the image; set geometry = \"squash\" (without a larger "
                         "resize_size) or \"letterbox\" in the --profile file")
    if spec.random_seed is not None:
        _note(f"{spec.name} has no --checkpoint: it runs random weights (torch seed {spec.random_seed}), so its "
              "accuracy means nothing; agreement between backends still does")
    if dynamic:
        size = spec.profile.input_size
        _note(f"{name}: the image input's {' and '.join(dynamic)} are dynamic; evaluating at {size}x{size} px (set "
              f"the size with --input-shape, --input {spec.input_name}=1x3xSxS or a profile's input_size)")
    if spec.fixed_batch:
        _note(f"{name}: the image input's batch is fixed at {spec.fixed_batch}: evaluated {spec.fixed_batch} "
              "sample(s) at a time")
    return spec


def _note(text: str) -> None:
    """One line on stderr, once: a worker started again after a crashed cell (harness.executor) resolves the
    model again and stays quiet about it."""
    import os

    if os.environ.get("HARNESS_WORKER") != "1":
        print(f"harness: note: {text}", file=sys.stderr)
