"""torchvision's detectors through the harness: the reference input is their own GeneralizedRCNNTransform's output
bit for bit; what the harness detects (its decoding of a single-stage head's raw outputs, or a two-stage graph's
own post-processed detections) is what the torchvision model returns end to end in eager mode, on the stored
image; and a two-stage detector, one image a run, goes through compare on ONNX Runtime and OpenVINO."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from harness.data.benchmark import DETECT_DIR
from harness.errors import SampleError
from harness.model import resolve_model
from harness.preprocess import normalize, to_pixels

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real photo in a wheel we have


def _photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((width, height), Image.LANCZOS).save(buffer, fmt, quality=92)
    return buffer.getvalue()


def _preset(arch: str):
    """The detector's own pre-processing: its weights' transforms (PIL image -> float tensor in [0, 1]), then
    the model's GeneralizedRCNNTransform (built on the meta device: it holds no weights)."""
    builder = torchvision.models.get_model_builder(arch)
    with torch.device("meta"):
        transform = builder(weights=None, weights_backbone=None).eval().transform
    preset = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return lambda data: transform([preset(Image.open(io.BytesIO(data)).convert("RGB"))])[0].tensors[0].numpy()


@pytest.mark.parametrize("arch,sides", [
    # 97 px: floor(97 * (800 / 97)) is 799, which the transform pads to 800 (so does the harness)
    ("retinanet_resnet50_fpn", ((97, 97), (301, 301), (800, 800), (1001, 1001))),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", ((77, 77), (320, 320), (513, 513))),
    # SSD's fixed size squashes any aspect: non-square photos are taken
    ("ssdlite320_mobilenet_v3_large", ((333, 257), (257, 333), (320, 320))),
    ("ssd300_vgg16", ((333, 257), (1001, 499))),  # mean 0.48..., std 1/255
])
def test_the_reference_input_is_the_detectors_own_transform_bit_for_bit(arch, sides):
    spec = resolve_model(f"torchvision:{arch}")
    transformed = _preset(arch)
    for width, height in sides:
        for fmt in ("JPEG", "PNG"):
            data = _photo(width, height, fmt)
            expected = transformed(data)
            pixels, geometry = to_pixels(data, spec.profile)
            got = normalize(pixels[None], spec.profile)[0]
            assert got.shape == expected.shape and np.array_equal(got, expected), (arch, width, height, fmt)
            assert geometry.width == width and geometry.scale_x * width <= spec.profile.input_size


def test_a_detector_that_keeps_the_aspect_refuses_a_photo_that_is_not_square_in_one_sample():
    spec = resolve_model("torchvision:retinanet_resnet50_fpn")
    with pytest.raises(SampleError, match="333x257: torchvision's detection transform resizes it to 1036x800 and "
                                          "pads that to a multiple of 32; the harness runs one 800x800 input"):
        to_pixels(_photo(333, 257), spec.profile)


def _checkpoint(arch: str, folder: Path) -> Path:
    """Random weights with BatchNorm re-estimated on benchmark images (else every output is ~1e-20 and every
    score ties); Faster R-CNN's class scores lifted for a few classes, as a trained model's are peaked, so
    detections pass its 0.05 threshold."""
    from harness.matrix import estimated_checkpoint

    images = sorted((DETECT_DIR / "images").glob("*.jpg"))
    calibrate, evaluate = folder / "calibrate", folder / "evaluate"
    for target, chosen in ((calibrate, images[10:26]), (evaluate, images[:2])):
        target.mkdir(parents=True)
        for path in chosen:
            shutil.copyfile(path, target / path.name)
    path = folder / f"{arch}.pt"
    estimated_checkpoint(resolve_model(f"torchvision:{arch}"), calibrate, evaluate, path)
    if arch.startswith("fasterrcnn"):
        state = torch.load(path, weights_only=True)
        state["roi_heads.box_predictor.cls_score.bias"][1:4] += 4.0
        torch.save(state, path)
    return path


@pytest.mark.parametrize("arch", ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_the_harness_detects_what_the_torchvision_model_returns_end_to_end(arch, tmp_path):
    """The harness's run (its pre-processing, the exported part of the model in torch, its decoding or the
    graph's own detections, boxes mapped back to the stored image) against `model([image])` in eager mode:
    the same detections in the same order, boxes to 1e-4 px. Breaking the anchors (a wrong stride) or the
    box mapping fails it."""
    from harness.tasks import get_task

    spec = resolve_model(f"torchvision:{arch}", checkpoint=_checkpoint(arch, tmp_path))
    module = spec.load_torch()
    preset = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    photos = [path.read_bytes() for path in sorted((DETECT_DIR / "images").glob("*.jpg"))[:2]] + [_photo(301, 301)]
    found = 0
    for data in photos:
        pixels, geometry = to_pixels(data, spec.profile)
        with torch.inference_mode():
            outputs = module(torch.from_numpy(normalize(pixels[None], spec.profile)))
            expected = module.model([preset(Image.open(io.BytesIO(data)).convert("RGB"))])[0]
        raw = {name: value.numpy() for name, value in zip(spec.output_names, outputs)}
        got = get_task("detect").predictions(raw, [geometry], spec.profile, spec.head)[0]
        assert len(got.scores) == len(expected["scores"]), arch
        np.testing.assert_allclose(got.boxes, expected["boxes"].numpy(), rtol=1e-6, atol=1e-4)
        assert np.array_equal(got.scores, expected["scores"].numpy())
        assert np.array_equal(got.labels, expected["labels"].numpy())
        found += len(got.scores)
    assert found >= 10, found


def test_a_two_stage_detector_runs_one_image_at_a_time_through_compare(tmp_path, harness_cli):
    """Faster R-CNN's graph ends in its own NMS: exported at batch 1 with its detections padded and counted,
    compared as they are (its post-processing axes do not apply)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((DETECT_DIR / "images").glob("*.jpg"))[:4]:
        shutil.copyfile(path, folder / path.name)
    checkpoint = _checkpoint("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path / "weights")
    result = harness_cli("compare", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--checkpoint",
                         str(checkpoint), "--dataset", str(folder), "--backends", "ort,openvino", "--json", "-")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "batch is fixed at 1" in result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["task"] == "detect" and report["dataset"]["samples"] == 4
    for row in report["results"]:
        outputs = row["outputs"]
        assert row["status"] == "ok" and outputs["max_abs_per_output"]["count"] == 0, row
        assert outputs["max_abs_per_output"]["boxes"] < 0.05 and outputs["top1_agreement"] == 1.0, row
