"""MODEL can be a zoo name, torchvision:NAME + checkpoint, package.module:factory, or an .onnx file."""
import json

import numpy as np
import torch
import torchvision

from harness.model import resolve_model


def test_torchvision_profile_comes_from_weights_transforms(tmp_path):
    spec = resolve_model("torchvision:resnet18")
    transforms = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert spec.profile.input_size == transforms.crop_size[0] == 224
    assert spec.profile.crop_resize_size == transforms.resize_size[0] == 256
    assert spec.profile.mean == tuple(transforms.mean) and spec.profile.resize == "pil-bilinear"
    assert len(spec.labels) == 1000 and spec.labels[0] == "tench"


def test_torchvision_checkpoint_and_profile_toml(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict(), weights)
    profile = tmp_path / "p.toml"
    profile.write_text('[pre]\ninput_size = 96\nresize_size = 110\nresize = "cv2-area"\n')
    spec = resolve_model("torchvision:mobilenet_v3_small", checkpoint=weights, profile_path=profile)
    assert (spec.profile.input_size, spec.profile.resize_size, spec.profile.resize) == (96, 110, "cv2-area")
    module = spec.load_torch()
    expected = torch.load(weights)["features.0.0.weight"]
    assert torch.equal(module.state_dict()["features.0.0.weight"], expected)


def test_factory_and_onnx_file(tmp_path, harness_cli):
    spec = resolve_model("harness.models.resnet:TinyResNet")
    assert spec.has_torch and isinstance(spec.build(), torch.nn.Module)
    # an .onnx file: no torch model, so the reference is ORT without graph optimisation
    result = harness_cli("export", "--json", "-")
    onnx_path = json.loads(result.stdout)["onnx"]
    profile = tmp_path / "p.toml"
    profile.write_text('input_size = 64\nresize_size = 72\nlabels = ["circle", "square", "triangle", "star", '
                       '"ring", "cross", "hexagon", "diamond", "crescent", "arrow"]\n')
    result = harness_cli("compare", onnx_path, "--profile", str(profile), "--backends", "ort", "--limit", "40",
                         "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reference"]["backend"] == "onnxruntime" and "graph optimisations disabled" in report["reference"]["note"]
    assert report["model"]["exporter"] == "user-onnx"
    row = report["results"][0]
    assert row["outputs"]["top1_agreement"] == 1.0 and row["outputs"]["max_abs"] < 1e-4
    assert report["reference"]["metric"]["top1"] >= 0.85


def test_bad_profile_keys_are_named(tmp_path):
    import pytest

    from harness.errors import UsageError

    profile = tmp_path / "p.toml"
    profile.write_text("input_sise = 3\n")
    with pytest.raises(UsageError, match="p.toml: unknown profile key 'input_sise'"):
        resolve_model("resnet_tiny", profile_path=profile)
    assert np.isfinite(resolve_model("resnet_tiny").profile.mean).all()
