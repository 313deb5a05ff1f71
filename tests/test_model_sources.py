"""MODEL can be a zoo name, torchvision:NAME + checkpoint, package.module:factory, or an .onnx file."""
import json
import re

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


def test_a_timm_classifier_through_compare_on_an_unlabelled_folder(tmp_path, harness_cli):
    """timm:NAME exported and run: the random-weights note, its weights named in the report, and ORT within
    float32 rounding of torch on a timm architecture (depthwise convs, hard-swish, squeeze-excite)."""
    import shutil

    from harness.data.benchmark import CLASSIFY_DIR

    for image in sorted(CLASSIFY_DIR.rglob("*.jpg"))[::25][:8]:
        shutil.copy(image, tmp_path / image.name)
    result = harness_cli("compare", "timm:mobilenetv3_small_050", "--dataset", str(tmp_path), "--backends", "ort",
                         "--json", "-")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "timm:mobilenetv3_small_050 has no --checkpoint: it runs random weights" in result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["name"] == "timm:mobilenetv3_small_050" and report["dataset"]["samples"] == 8
    assert report["model"]["weights"].startswith("random (torch seed 0)")
    row = report["results"][0]
    assert row["status"] == "ok" and 0 < row["outputs"]["max_abs"] < 1e-3, row


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


def _onnx_classifier(path, head: str) -> str:
    """A 64x64 ONNX model of 10 classes: global pooling then a 1x1 convolution ([N, 10, 1, 1] logits), the
    same flattened ([N, 10]), or a strided convolution's [N, 10, 4, 4] map (a dense-prediction output)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((10, 3, 1, 1)).astype(np.float32), "w")
    if head == "map":
        weights = numpy_helper.from_array(rng.standard_normal((10, 3, 16, 16)).astype(np.float32), "w")
        nodes = [helper.make_node("Conv", ["input", "w"], ["logits"], strides=[16, 16])]
    else:
        nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                 helper.make_node("Conv", ["pooled", "w"], ["logits" if head == "1x1" else "conv"])]
        if head == "flat":
            nodes.append(helper.make_node("Flatten", ["conv"], ["logits"]))
    shape = {"1x1": ["N", 10, 1, 1], "flat": ["N", 10], "map": ["N", 10, 4, 4]}[head]
    graph = helper.make_graph(nodes, head, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path / f"{head}.onnx"))
    return str(path / f"{head}.onnx")


def test_an_onnx_classifier_ending_in_a_1x1_conv_is_scored_and_a_map_output_is_refused(tmp_path, harness_cli):
    """[N, C, 1, 1] logits score exactly as the same logits flattened; an [N, C, H, W] map is not taken for
    a classifier's logits (it was scored as one, exit 0): one line naming the output, exit 2."""
    profile = tmp_path / "p.toml"
    profile.write_text('input_size = 64\nresize_size = 72\nlabels = ["circle", "square", "triangle", "star", '
                       '"ring", "cross", "hexagon", "diamond", "crescent", "arrow"]\n')
    reports = {}
    for head in ("1x1", "flat"):
        result = harness_cli("compare", _onnx_classifier(tmp_path, head), "--profile", str(profile), "--backends",
                             "ort", "--limit", "24", "--json", "-")
        assert result.returncode == 0, result.stderr
        reports[head] = json.loads(result.stdout)
    assert reports["1x1"]["reference"]["metric"] == reports["flat"]["reference"]["metric"]
    assert reports["1x1"]["results"][0]["outputs"]["top1_agreement"] == 1.0
    result = harness_cli("compare", _onnx_classifier(tmp_path, "map"), "--profile", str(profile), "--backends",
                         "ort", "--limit", "24", "--json", "-")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert re.search(r"output 'logits' is \d+x10x4x4: not a classifier's logits", result.stderr), result.stderr


def test_a_labels_file_maps_class_folders_named_otherwise(tmp_path, harness_cli, class_folders):
    """Class folders named the user's way (shape-00 ... shape-09): `--labels FILE` lists them in the model's
    class-index order, and the run scores exactly as on folders named as the model's labels; the same file
    in reverse order scores as a wrong mapping would."""
    labels = resolve_model("resnet_tiny").labels
    named = class_folders(tmp_path / "named", {label: label for label in labels}, 4)
    renamed = class_folders(tmp_path / "renamed", {label: f"shape-{k:02d}" for k, label in enumerate(labels)}, 4)
    (tmp_path / "labels.txt").write_text("".join(f"shape-{k:02d}\n" for k in range(len(labels))))
    (tmp_path / "reversed.json").write_text(json.dumps([f"shape-{k:02d}" for k in reversed(range(len(labels)))]))
    top1 = {}
    for run, args in {"named": [str(named)], "labels": [str(renamed), "--labels", str(tmp_path / "labels.txt")],
                      "reversed": [str(renamed), "--labels", str(tmp_path / "reversed.json")]}.items():
        result = harness_cli("compare", "--backends", "ort", "--dataset", *args, "--json", str(tmp_path / f"{run}.json"))
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads((tmp_path / f"{run}.json").read_text())
        assert report["dataset"]["samples"] == 40
        top1[run] = report["reference"]["metric"]["top1"]
    assert top1["labels"] == top1["named"] >= 0.85 and top1["reversed"] <= 0.25, top1
    unmapped = harness_cli("compare", "--backends", "ort", "--dataset", str(renamed))
    assert unmapped.returncode == 2 and "10 of its 10 class folders are not in the model's label map" in unmapped.stderr


def test_a_gate_describes_a_user_model_as_the_command_line_does(tmp_path, harness_cli, class_folders):
    """An .onnx file with its profile, task, labels file and INT8 calibration folder, all from the gate:
    validate gates its INT8 deployment (it used to fail every INT8 profile asking for --calibration, an
    option validate lacks)."""
    from harness.export import export

    model = tmp_path / "shapes.onnx"
    model.write_bytes(export(resolve_model("resnet_tiny")).onnx_path.read_bytes())
    labels = resolve_model("resnet_tiny").labels
    renamed = {label: f"shape-{k:02d}" for k, label in enumerate(labels)}
    class_folders(tmp_path / "val", renamed, 4)
    class_folders(tmp_path / "train", renamed, 6, skip=50)  # not the images evaluated
    (tmp_path / "labels.txt").write_text("".join(f"{name}\n" for name in renamed.values()))
    (tmp_path / "profile.toml").write_text("[pre]\ninput_size = 64\nresize_size = 72\n")
    (tmp_path / "gate.toml").write_text(
        'model = "shapes.onnx"\nprofile = "profile.toml"\ntask = "classify"\nlabels = "labels.txt"\n'
        'calibration = "train"\ndataset = "val"\n[[profiles]]\nname = "ort-int8"\nbackend = "onnxruntime"\n'
        'precision = "int8"\n[thresholds]\nmax_metric_drop = 0.1\n')
    result = harness_cli("validate", "--config", "gate.toml", "--json", "report.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dataset"]["samples"] == 40 and report["model"]["weights"] == "the ONNX file shapes.onnx"
    assert report["reference"]["profile"]["input_size"] == 64 and report["calibration"]["source"].startswith(
        "train (60 of 60 samples)"), report["calibration"]
    check = next(c for c in report["checks"] if c["threshold"] == "max_metric_drop")
    reference_top1 = float(check["message"].split("vs reference ")[1].split(":")[0])
    assert check["profile"] == "ort-int8" and check["passed"] and reference_top1 >= 0.85, check
    row = report["profiles"][0]
    assert row["precision_effective"] == "int8" and row["metric"]["top1"] >= 0.85, row
