"""The zoo on the embedded benchmark: ONNX Runtime matches torch, and each model reaches its stated metric.

One pass per model feeds both backends the same tensors (harness.compare), so these are the numbers
`harness compare` prints.
"""
import numpy as np
import pytest
import torch

from harness.backends import get_backend
from harness.compare import Target, compare
from harness.data import embedded_benchmark
from harness.export import export
from harness.model import resolve_model
from harness.models import ZOO
from harness.models.train import RECIPES, train

CLASSIFIERS = [name for name in ZOO if ZOO[name]().task == "classify"]
DETECTORS = [name for name in ZOO if ZOO[name]().task == "detect"]
SEGMENTERS = [name for name in ZOO if ZOO[name]().task == "segment"]
KEYPOINT_MODELS = [name for name in ZOO if ZOO[name]().task == "keypoints"]
INSTANCE_SEGMENTERS = [name for name in ZOO if ZOO[name]().task == "instances"]
# Same input tensor, same graph: the only difference is kernel arithmetic (summation order).
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def zoo_reports():
    reports = {}

    def get(name):
        if name not in reports:
            spec = resolve_model(name)
            target = Target(get_backend("ort"), "cpu", "fp32")
            reports[name] = compare(export(spec), embedded_benchmark(spec.task), [target], batch_size=50)
        return reports[name]
    return get


def test_the_zoo_has_the_papers_families():
    assert {"resnet_tiny", "mobilenetv2_tiny"} <= set(CLASSIFIERS) and DETECTORS == ["fcos_tiny"]
    resnet = resolve_model("resnet_tiny").load_torch()
    assert any(isinstance(m, torch.nn.MaxPool2d) and m.stride == 2 for m in resnet.modules())
    mobilenet = resolve_model("mobilenetv2_tiny").load_torch()
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in mobilenet.modules())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_ort_matches_torch_and_the_stated_accuracy(name, zoo_reports):
    report = zoo_reports(name)
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert report["processed"] == len(embedded_benchmark("classify")) and not report["failed"]
    assert row["outputs"]["max_abs"] < LOGIT_ATOL
    assert row["outputs"]["top1_agreement"] == 1.0 and row["outputs"]["flips"] == 0
    stated = resolve_model(name).stated["top1"]
    top1 = report["reference"]["metric"]["top1"]
    assert top1 >= 0.90
    assert top1 == pytest.approx(stated, abs=0.005)  # one flipped sample of 1000 is 0.001
    assert row["metric"]["top1"] == top1


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_map_on_ort_equals_torch(name, zoo_reports):
    report = zoo_reports(name)
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    ref = report["reference"]["metric"]
    assert abs(row["metric"]["map"] - ref["map"]) < 0.001
    assert abs(row["metric"]["ap50"] - ref["ap50"]) < 0.001
    assert ref["ap50"] >= 0.5
    assert ref["map"] == pytest.approx(resolve_model(name).stated["map"], abs=0.01)
    assert row["outputs"]["max_abs"] < LOGIT_ATOL


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_miou_on_ort_equals_torch_and_the_stated_miou(name, zoo_reports):
    report = zoo_reports(name)
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert report["processed"] == len(embedded_benchmark("segment")) and not report["failed"]
    reference = report["reference"]["metric"]
    assert abs(row["metric"]["miou"] - reference["miou"]) < 0.001
    assert row["outputs"]["max_abs"] < LOGIT_ATOL
    stated = resolve_model(name).stated
    for key in ("miou", "pixel_acc"):
        assert reference[key] == pytest.approx(stated[key], abs=0.0005)


@pytest.mark.parametrize("name", KEYPOINT_MODELS)
def test_keypoint_ap_on_ort_equals_torch_and_the_stated_ap(name, zoo_reports):
    report = zoo_reports(name)
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert report["processed"] == len(embedded_benchmark("keypoints")) and not report["failed"]
    reference = report["reference"]["metric"]
    assert abs(row["metric"]["ap"] - reference["ap"]) < 0.001
    assert row["outputs"]["max_abs"] < LOGIT_ATOL
    for key in ("ap", "ap50", "ap75"):
        assert reference[key] == pytest.approx(resolve_model(name).stated[key], abs=0.0005)


@pytest.mark.parametrize("name", INSTANCE_SEGMENTERS)
def test_instance_segmenter_mask_ap_on_ort_equals_torch_and_its_boxes_are_the_frozen_detectors(name, zoo_reports):
    """The mask branch trains on top of fcos_tiny with the detector frozen: its box AP is fcos_tiny's, to the
    last bit of the evaluation."""
    report = zoo_reports(name)
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert report["processed"] == len(embedded_benchmark("instances")) and not report["failed"]
    reference = report["reference"]["metric"]
    assert abs(row["metric"]["mask_map"] - reference["mask_map"]) < 0.001
    assert row["outputs"]["max_abs"] < LOGIT_ATOL
    for key in ("mask_map", "mask_ap50", "mask_ap75"):
        assert reference[key] == pytest.approx(resolve_model(name).stated[key], abs=0.0005)
    assert reference["box_map"] == zoo_reports("fcos_tiny")["reference"]["metric"]["map"]


def test_segmenter_has_deeplabs_parts():
    from torchvision.models.segmentation.deeplabv3 import ASPP

    (name,) = SEGMENTERS
    model = resolve_model(name).load_torch()
    assert any(isinstance(m, ASPP) for m in model.modules())
    assert any(isinstance(m, torch.nn.MaxPool2d) and m.stride == 2 for m in model.modules())
    assert any(isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1 for m in model.modules())


def test_detector_graph_ends_at_raw_head_outputs(tmp_path):
    import onnx

    exported = export(resolve_model("fcos_tiny"), cache_dir=tmp_path)
    proto = onnx.load(str(exported.onnx_path))
    assert [o.name for o in proto.graph.output] == [f"{kind}_s{stride}" for stride in (8, 16, 32)
                                                    for kind in ("cls_logits", "box_reg", "centerness")]
    ops = {n.op_type for n in proto.graph.node}
    assert "Resize" in ops                       # the FPN's upsampling, a real deployment choice
    assert not ops & {"NonMaxSuppression", "TopK", "Exp"}  # decoding and NMS are post-processing


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_is_deterministic(name):
    spec = resolve_model(name)
    first = train(spec, RECIPES[name], steps=3, train_count=160, log=lambda _: None)
    second = train(spec, RECIPES[name], steps=3, train_count=160, log=lambda _: None)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    shipped = spec.load_torch().state_dict()
    assert not all(torch.equal(a, shipped[k]) for k, a in first.state_dict().items() if a.is_floating_point())
    np.testing.assert_equal(sorted(first.state_dict()), sorted(shipped))
