"""The reference is the training system exactly: a torchvision model's input tensor is the one its own
`weights.transforms()` makes from the PIL image, bit for bit, and a model built without a checkpoint has the
same (seeded) weights wherever it is built."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from harness.data.benchmark import CLASSIFY_DIR
from harness.model import resolve_model
from harness.preprocess import normalize, to_pixels

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real photo in a wheel we have


def _classification_weights_by_interpolation() -> dict:
    """One torchvision classifier per interpolation its published weights use (read offline)."""
    chosen = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        chosen.setdefault(transforms.interpolation, name)
    return chosen


WEIGHTS = _classification_weights_by_interpolation()


def _photos() -> list[tuple[str, bytes]]:
    """The real photo at several sizes and aspects (portrait, landscape, odd sides, smaller than the crop's
    resize), as JPEG and PNG, plus 200 benchmark images."""
    photo = Image.open(PHOTO).convert("RGB")
    out = []
    for width, height in ((512, 600), (600, 512), (333, 257), (257, 333), (225, 300), (1001, 499), (240, 240)):
        for fmt in ("JPEG", "PNG"):
            buffer = io.BytesIO()
            photo.resize((width, height), Image.LANCZOS).save(buffer, fmt, quality=92)
            out.append((f"hopper-{width}x{height}.{fmt.lower()}", buffer.getvalue()))
    benchmark = sorted(CLASSIFY_DIR.rglob("*.jpg"))[::5]
    return out + [(path.name, path.read_bytes()) for path in benchmark]


def _differing(spec, transform) -> list[str]:
    """The photos whose reference tensor is not the library transform's output, bit for bit."""
    differing = []
    for name, data in _photos():
        expected = transform(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
        pixels, _ = to_pixels(data, spec.profile)
        got = normalize(pixels[None], spec.profile)[0]
        if got.shape != expected.shape or not np.array_equal(got, expected):
            differing.append(name)
    return differing


def test_torchvision_weights_use_the_interpolations_tested_here():
    assert set(WEIGHTS) >= {torchvision.transforms.InterpolationMode.BILINEAR,
                            torchvision.transforms.InterpolationMode.BICUBIC}


@pytest.mark.parametrize("arch", sorted(set(WEIGHTS.values())))
def test_the_reference_tensor_is_torchvisions_own_bit_for_bit(arch):
    spec = resolve_model(f"torchvision:{arch}")
    differing = _differing(spec, torchvision.models.get_model_weights(arch).DEFAULT.transforms())
    assert differing == [], f"{arch}: {len(differing)} images differ from weights.transforms(), e.g. {differing[:3]}"


# one timm model per eval transform the harness reproduces: bicubic centre crop at crop_pct 0.95 (ResNet's
# A1 recipe), bilinear at 0.875 with mean/std 0.5 (TF ports), a ViT (bicubic, 0.9, mean/std 0.5), and the
# squash mode at crop_pct 0.9 (NFNet)
TIMM_MODELS = ("resnet18", "tf_mobilenetv3_small_100", "vit_small_patch16_224", "dm_nfnet_f0")


@pytest.mark.parametrize("arch", TIMM_MODELS)
def test_the_reference_tensor_is_timms_own_bit_for_bit(arch):
    from timm.data import create_transform, resolve_data_config

    spec = resolve_model(f"timm:{arch}")
    model = spec.load_torch()
    config = resolve_data_config({}, model=model)  # what timm's own scripts (validate.py, inference.py) do
    differing = _differing(spec, create_transform(**config))
    assert differing == [], f"{arch}: {len(differing)} images differ from timm's transform, e.g. {differing[:3]}"
    assert model.pretrained_cfg["architecture"] == arch and model.num_classes == 1000
    assert len(spec.labels) == 1000 and spec.labels[0] == "tench" and spec.random_seed == 0


def test_timm_models_it_cannot_reproduce_are_refused_in_one_line():
    from harness.errors import UnknownName, UsageError

    with pytest.raises(UsageError, match=r"timm:deepseek_vit_412m: timm evaluates it at \d+x\d+ with crop_mode "
                                         r"'border'; the harness reproduces square inputs"):
        resolve_model("timm:deepseek_vit_412m")
    with pytest.raises(UnknownName, match=r"unknown timm model 'resnet5O'; \d{4} are known, the closest: .*"
                                          r"Did you mean 'resnet50'\?"):
        resolve_model("timm:resnet5O")


def test_a_model_without_checkpoint_is_built_from_one_seed_everywhere():
    spec = resolve_model("torchvision:resnet18")
    first, second = spec.load_torch().state_dict(), resolve_model("torchvision:resnet18").load_torch().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(123)  # the caller's own random state is neither used nor changed
    state = torch.random.get_rng_state()
    spec.load_torch()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert spec.random_seed == 0 and spec.weights_source.startswith("random (torch seed 0)")


def test_a_detection_builder_is_built_offline_and_not_taken_for_a_classifier():
    """torchvision's detectors fetch backbone weights by default, even with weights=None; and one used to be
    exported and scored as a classifier. A detector is a detector now (Keypoint R-CNN a keypoint detector); what is no
    image model is refused in one line."""
    from harness.errors import UsageError
    from harness.libraries import _offline_build

    model = _offline_build(torchvision.models.get_model_builder("ssdlite320_mobilenet_v3_large"), seed=0)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    spec = resolve_model("torchvision:ssdlite320_mobilenet_v3_large")
    assert spec.task == "detect" and spec.head["type"] == "anchors" and spec.labels[1] == "person"
    with pytest.raises(UsageError, match="^torchvision:r3d_18 is a video classifier; the harness takes torchvision's "
                                         "image classifiers, segmenters and detectors"):
        resolve_model("torchvision:r3d_18")
    spec = resolve_model("torchvision:keypointrcnn_resnet50_fpn")
    assert spec.task == "keypoint-detect" and spec.head["keypoints"] == "keypoints" and len(spec.labels) == 17


SEGMENTERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")


@pytest.mark.parametrize("arch", SEGMENTERS)
def test_a_torchvision_segmenters_reference_is_its_presets_own_on_square_images_and_refuses_others(arch):
    """SemanticSegmentation resizes the shorter side to 520 and crops nothing: on square photos (smaller,
    equal to and larger than 520, JPEG and PNG) the reference tensor is the preset's bit for bit; a photo that
    is not square would need a 520 x long input, which the harness's one input size a profile cannot hold: one
    sample's SampleError naming both sizes, never a silently squashed image."""
    from harness.errors import SampleError

    spec = resolve_model(f"torchvision:{arch}")
    assert spec.task == "segment" and spec.labels[:2] == ("__background__", "aeroplane") and len(spec.labels) == 21
    assert (spec.profile.geometry, spec.profile.input_size) == ("torchvision-resize", 520)
    transform = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    photo = Image.open(PHOTO).convert("RGB")
    for side in (301, 520, 777):
        for fmt in ("JPEG", "PNG"):
            buffer = io.BytesIO()
            photo.resize((side, side), Image.LANCZOS).save(buffer, fmt, quality=92)
            expected = transform(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).numpy()
            pixels, geometry = to_pixels(buffer.getvalue(), spec.profile)
            assert np.array_equal(normalize(pixels[None], spec.profile)[0], expected), (side, fmt)
            assert geometry.scale_x == geometry.scale_y == 520 / side
    buffer = io.BytesIO()
    photo.resize((333, 257)).save(buffer, "PNG")
    with pytest.raises(SampleError, match="333x257 is not square: torchvision's resize keeps the aspect, so its "
                                          "input would be 673x520"):
        to_pixels(buffer.getvalue(), spec.profile)
    module = spec.load_torch()
    with torch.inference_mode():
        assert module(torch.zeros(1, 3, 520, 520)).shape == (1, 21, 520, 520)  # `out` alone, at the input's size
    assert set(module.state_dict()) == set(module.model.state_dict())  # a torchvision checkpoint loads as it is


def test_a_backend_refuses_an_option_it_would_ignore(tmp_path, harness_cli):
    """`--backends torch --artifact FILE` used to report an ok row, max abs 0.0, naming an artefact torch
    never ran."""
    from harness.backends import get_backend
    from harness.errors import UsageError
    from harness.export import export

    exported = export(resolve_model("resnet_tiny"))
    with pytest.raises(UsageError, match=r"torch: does not take artifact \(it takes tf32, cudnn, compile, attention\)"):
        get_backend("torch").load(exported, artifact=exported.onnx_path)
    get_backend("torch").load(exported, calibration=None, spinning=False)  # hints any backend may leave alone
    (tmp_path / "deployed.onnx").write_bytes(exported.onnx_path.read_bytes())
    result = harness_cli("compare", "--backends", "torch", "--artifact", str(tmp_path / "deployed.onnx"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "harness: error: --artifact: torch cannot run a deployed file (it runs the model itself); use a backend "
        "that loads one: onnxruntime, openvino, tensorrt, tvm"], result.stderr


def test_one_onnx_model_has_one_reference_in_every_command(tmp_path, harness_cli):
    """compare and drift ran ONNX Runtime without graph optimisations as the reference of a bare .onnx
    model, sysnoise and validate with them: four commands, two references. Now one, named in each report."""
    import json

    from harness.export import export

    model = tmp_path / "model.onnx"
    model.write_bytes(export(resolve_model("resnet_tiny")).onnx_path.read_bytes())
    (tmp_path / "gate.toml").write_text(f'model = "{model}"\nlimit = 8\n[thresholds]\nmax_metric_drop = 0.5\n')
    runs = {"compare": ["compare", str(model), "--backends", "ort", "--limit", "8"],
            "sysnoise": ["sysnoise", str(model), "--axes", "color", "--limit", "8"],
            "drift": ["drift", str(model), "--limit", "4"],
            "validate": ["validate", "--config", str(tmp_path / "gate.toml")]}
    blocks = {}
    for name, args in runs.items():
        result = harness_cli(*args, "--json", str(tmp_path / f"{name}.json"))
        assert result.returncode == 0, (name, result.stderr[-2000:])
        reference = json.loads((tmp_path / f"{name}.json").read_text())["reference"]
        blocks[name] = {key: reference[key] for key in ("backend", "device", "precision", "graph_optimizations")}
    assert all(block == {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "graph_optimizations": False}
               for block in blocks.values()), blocks


@pytest.mark.parametrize("source,classes,task", [("torchvision:mobilenet_v3_small", 5, "classify"),
                                                 ("torchvision:lraspp_mobilenet_v3_large", 3, "segment"),
                                                 ("torchvision:ssdlite320_mobilenet_v3_large", 7, "detect"),
                                                 ("timm:mobilenetv4_conv_small", 4, "classify")])
def test_a_checkpoint_fine_tuned_on_other_classes_builds_the_model_it_fits(source, classes, task, tmp_path):
    """A user's checkpoint trained on their own classes: the class count is read from its output layers' shapes
    (every one that differs from the default build says the same count), the model is built with it, and the
    library's label names are dropped (the user's come with --labels). A checkpoint of another architecture still
    names what does not fit."""
    import timm

    from harness.errors import InputError

    library, _, arch = source.partition(":")
    if library == "timm":
        model = timm.create_model(arch, pretrained=False, num_classes=classes)
    else:
        builder = torchvision.models.get_model_builder(arch)
        extra = {"weights_backbone": None} if task != "classify" else {}
        model = builder(weights=None, num_classes=classes, **extra)
    torch.save(model.state_dict(), tmp_path / "tuned.pt")
    spec = resolve_model(source, checkpoint=tmp_path / "tuned.pt")
    assert spec.task == task and spec.labels == ()
    loaded = spec.load_torch()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match="does not fit"):
        resolve_model(source, checkpoint=tmp_path / "other.pt").load_torch()
