"""Models from libraries, built offline: `torchvision:NAME` and `timm:NAME`. Each one's reference
pre-processing is read from the library (torchvision's `weights.transforms()`, timm's `resolve_data_config`)
and reproduces its transform bit for bit; without a checkpoint the weights come from one fixed seed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from harness.errors import UnknownName, UsageError
from harness.model import ModelSpec
from harness.profile import Profile
from harness.tasks import CLASSIFY, SEGMENT

def _pil_resizes() -> dict:
    """torchvision's interpolation modes -> the harness's resize names: Resize on a PIL image calls Pillow's
    resize with that filter (antialias is Pillow's own), which these names run."""
    from torchvision.transforms import InterpolationMode

    return {InterpolationMode.BILINEAR: "pil-bilinear", InterpolationMode.BICUBIC: "pil-bicubic",
            InterpolationMode.NEAREST: "pil-nearest", InterpolationMode.LANCZOS: "pil-lanczos",
            InterpolationMode.BOX: "pil-box", InterpolationMode.HAMMING: "pil-hamming"}


def torchvision_spec(arch: str, checkpoint: Path | None) -> ModelSpec:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError:
        raise UnknownName("torchvision model", arch, torchvision.models.list_models()) from None
    family = _family(builder.__module__)
    _refuse_what_is_not_taken(arch, family)
    seed = None if checkpoint is not None else RANDOM_WEIGHTS_SEED
    published = _published_labels(arch)
    classes = _trained_classes(lambda: builder(**_offline_options(builder)), checkpoint, len(published))
    options = {} if classes is None else {"num_classes": classes}
    if family == "detection":
        from harness.torchvision_detection import detector_spec

        return detector_spec(arch, lambda **more: builder(**more, **options), checkpoint,
                             published if classes is None else (), seed,
                             lambda: _offline_build(builder, seed, **options))
    segmenter = family == "segmentation"
    geometry = "torchvision-resize" if segmenter else "torchvision-crop"
    profile = Profile(input_size=224, geometry=geometry)
    labels: tuple[str, ...] = ()
    try:  # the preprocessing of the default weights, read without downloading them
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        transforms = weights.transforms()
        interpolation = _pil_resizes()[transforms.interpolation]
        # a segmenter's preset resizes the shorter side and crops nothing: its input is that side, square
        # images only (harness.preprocess's torchvision-resize)
        size = transforms.resize_size[0] if segmenter else transforms.crop_size[0]
        profile = Profile(resize=interpolation, geometry=geometry, input_size=size,
                          resize_size=transforms.resize_size[0], mean=tuple(transforms.mean), std=tuple(transforms.std))
        labels = published if classes is None else ()
    except (ValueError, AttributeError, KeyError, TypeError):
        pass  # no published weights for this architecture: ImageNet defaults, overridable by --profile
    build = (lambda: SegmentationLogits(_offline_build(builder, seed, **options))) if segmenter else \
        (lambda: _offline_build(builder, seed, **options))
    return ModelSpec(name=f"torchvision:{arch}", task=SEGMENT if segmenter else CLASSIFY, profile=profile,
                     labels=labels, build=build, weights=checkpoint, source=f"torchvision:{arch}",
                     summary=f"torchvision {arch}", random_seed=seed)


class SegmentationLogits(torch.nn.Module):
    """A torchvision segmenter as the harness runs it: its `out` logits (N x classes x H x W at the input's
    size: the model upsamples them itself) as the graph's one output, not the dict it returns. Its state_dict
    is the torchvision model's own, so a checkpoint saved from torchvision loads as it is."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)["out"]

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state, strict=strict, assign=assign)


RANDOM_WEIGHTS_SEED = 0
# torchvision.models.<family>.<module>: every family but the classifiers (torchvision.models.<module>)
_FAMILIES = {"detection": "a detector", "segmentation": "a segmenter", "video": "a video classifier",
             "optical_flow": "an optical-flow model", "quantization": "a quantised (QAT) classifier"}


def _family(module: str) -> str:
    return module.split(".")[2] if module.count(".") >= 3 else ""


def _published_labels(arch: str) -> tuple[str, ...]:
    """The class names of the architecture's default weights (read from the enum, nothing downloaded)."""
    import torchvision

    try:
        return tuple(torchvision.models.get_model_weights(arch).DEFAULT.meta.get("categories") or ())
    except (ValueError, AttributeError, KeyError):
        return ()


def _refuse_what_is_not_taken(arch: str, family: str) -> None:
    """torchvision's image classifiers, segmenters and detectors are taken (harness.torchvision_detection says
    which detectors); the others take video or image pairs, or are quantised for another runtime. Treating one
    as a classifier would export a graph the harness then scores as logits."""
    if family in _FAMILIES and family not in ("segmentation", "detection"):
        raise UsageError(f"torchvision:{arch} is {_FAMILIES[family]}; the harness takes torchvision's image "
                         "classifiers, segmenters and detectors (export it to ONNX yourself and pass the .onnx "
                         "file with --task and a [head] profile)")


def _offline_options(builder) -> dict:
    """The builder's options that download nothing (no weights, no backbone weights)."""
    import inspect

    options = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        options["weights_backbone"] = None  # detection and segmentation builders fetch one by default
    return options


def _offline_build(builder, seed: int | None, **options):
    """A torchvision model built without any download; `options`: the builder's others (num_classes)."""
    return _seeded(lambda: builder(**_offline_options(builder), **options), seed)


def _trained_classes(build: Callable, checkpoint: Path | None, default: int) -> int | None:
    """The class count a checkpoint was trained for when it is not the library's `default` (a model fine-tuned
    on the user's classes): every output layer whose first dimension differs from the default-built model's
    scales with the class count (a classifier's fc, RetinaNet's anchors x classes, Faster R-CNN's classes and
    4 x classes), so each says it. None when every shape fits, or when the differing ones disagree (loading
    then names them, as for any checkpoint of another architecture)."""
    if checkpoint is None or not default:
        return None
    from harness.model import read_state_dict

    state = read_state_dict(checkpoint)
    with torch.device("meta"):
        expected = build().state_dict()
    counts = set()
    for key, tensor in expected.items():
        theirs = state.get(key)
        if not isinstance(theirs, torch.Tensor) or theirs.shape == tensor.shape:
            continue
        if theirs.dim() != tensor.dim() or theirs.shape[1:] != tensor.shape[1:] or not tensor.shape[0]:
            return None
        counts.add(theirs.shape[0] * default / tensor.shape[0])
    count = counts.pop() if len(counts) == 1 else None
    return int(count) if count is not None and count == int(count) and count > 0 else None


def _seeded(build: Callable, seed: int | None):
    """A library model built, without a checkpoint, from a fixed seed: the reference, the export and its
    cache key all see the same weights; the caller's random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if seed is not None else RANDOM_WEIGHTS_SEED)
        return build()


def timm_spec(arch: str, checkpoint: Path | None) -> ModelSpec:
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
    classes = _trained_classes(lambda: timm.create_model(arch, pretrained=False), checkpoint,
                               getattr(pretrained, "num_classes", 0) or 0)
    options = {} if classes is None else {"num_classes": classes}
    return ModelSpec(name=f"timm:{arch}", task=CLASSIFY, profile=_timm_profile(arch, config),
                     labels=_timm_labels(infer_imagenet_subset(pretrained.to_dict()) if pretrained and
                                         classes is None else None),
                     build=lambda: _seeded(lambda: timm.create_model(arch, pretrained=False, **options), seed),
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


def transformers_spec(location: str, checkpoint: Path | None) -> ModelSpec:
    """A Hugging Face sequence classifier or causal LM (config.json's `architectures` says which) from a local
    folder in save_pretrained's layout (config.json, and model.safetensors for trained weights; no weights:
    built from the config with the fixed seed), with the tokeniser saved beside it (or --tokenizer). Its
    reference truncation is the tokeniser's model_max_length, capped by the position table. Weights are read
    from safetensors only (a pytorch_model.bin is a pickle)."""
    import json
    import os

    from harness.errors import InputError
    from harness.tasks import CAUSAL_LM, TEXT_CLASSIFY

    folder = Path(location).resolve()
    if not (folder / "config.json").is_file():
        raise InputError(f"{location}: not a transformers model folder (save_pretrained's layout: config.json, "
                         "with model.safetensors for trained weights)")
    if (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").is_file():
        raise InputError(f"{location}: weights only in pytorch_model.bin, a pickle the harness never loads; save "
                         "them with save_pretrained(safe_serialization=True)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import inspect

    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    # the task is the one config.json's `architectures` names (save_pretrained writes the model's class)
    causal = any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in config.architectures or ())
    task, auto = (CAUSAL_LM, AutoModelForCausalLM) if causal else (TEXT_CLASSIFY, AutoModelForSequenceClassification)
    try:
        model_class = auto._model_mapping[type(config)]
    except KeyError:
        raise UsageError(f"{location}: a {config.model_type} model has no {task} class in transformers; the harness "
                         "takes sequence classifiers and causal LMs") from None
    from harness.models.text import TEXT_INPUTS, logits_module

    # a causal LM is served with ids and mask only (GPT-2's forward also takes token types it never trained)
    typed = not causal and "token_type_ids" in inspect.signature(model_class.forward).parameters
    names = TEXT_INPUTS if typed else TEXT_INPUTS[:2]
    trained = (folder / "model.safetensors").is_file() or checkpoint is not None
    seed = None if trained else RANDOM_WEIGHTS_SEED

    def build():
        if (folder / "model.safetensors").is_file():
            model = model_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        else:
            model = _seeded(lambda: model_class(config), seed)
        if checkpoint is not None:  # the transformers model's own state_dict (its keys, not the wrapper's)
            import torch

            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
        return logits_module(model, names)

    settings = folder / "tokenizer_config.json"
    limit = json.loads(settings.read_text()).get("model_max_length") if settings.is_file() else None
    positions = getattr(config, "max_position_embeddings", None) or 512
    labels = tuple(config.id2label[k] for k in sorted(config.id2label)) if config.id2label and not \
        all(str(name).startswith("LABEL_") for name in config.id2label.values()) else ()
    return ModelSpec(name=f"transformers:{folder.name}", task=task,
                     profile=Profile(labels=labels, max_length=min(int(limit or positions), positions)),
                     labels=labels, build=build,
                     source=f"transformers:{location}" + (f" with checkpoint {checkpoint}" if checkpoint else ""),
                     summary=f"transformers {model_class.__name__}", random_seed=seed, text_inputs=names,
                     tokenizer=folder if settings.is_file() else None)


LIBRARIES = {"torchvision": torchvision_spec, "timm": timm_spec, "transformers": transformers_spec}
