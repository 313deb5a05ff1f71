"""torchvision's detectors through the harness: the reference input is their own GeneralizedRCNNTransform's output
bit for bit; what the harness detects (its decoding of a single-stage head's raw outputs, or a two-stage graph's
own post-processed detections) is what the torchvision model returns end to end in eager mode, on the stored
image (Mask R-CNN's masks and Keypoint R-CNN's keypoints too); a two-stage detector, one image a run, goes through
compare (Keypoint R-CNN on a person-keypoints file; OpenVINO's cells: the matrix); a single-stage one through
sysnoise's pre- and post-processing axes."""
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


def _checkpoint(arch: str, folder: Path, spec=None, images: int = 16) -> Path:
    """Random weights with BatchNorm re-estimated on benchmark images (else every output is ~1e-20 and every
    score ties); an R-CNN's class scores lifted for a few classes, as a trained model's are peaked, so
    detections pass its 0.05 threshold."""
    from harness.matrix import estimated_checkpoint

    paths = sorted((DETECT_DIR / "images").glob("*.jpg"))
    calibrate, evaluate = folder / "calibrate", folder / "evaluate"
    for target, chosen in ((calibrate, paths[10:10 + images]), (evaluate, paths[:2])):
        target.mkdir(parents=True)
        for path in chosen:
            shutil.copyfile(path, target / path.name)
    path = folder / f"{arch}.pt"
    estimated_checkpoint(spec or resolve_model(f"torchvision:{arch}"), calibrate, evaluate, path)
    if "rcnn" in arch:
        state = torch.load(path, weights_only=True)
        state["roi_heads.box_predictor.cls_score.bias"][1:4] += 4.0
        torch.save(state, path)
    return path


def _harness_and_eager(spec, module, preset, data: bytes):
    """One image through the harness (its pre-processing, the exported part of the model in torch, the task's
    post-processing on the stored image) and through the torchvision model itself in eager mode."""
    from harness.tasks import get_task

    pixels, geometry = to_pixels(data, spec.profile)
    with torch.inference_mode():
        outputs = module(torch.from_numpy(normalize(pixels[None], spec.profile)))
        expected = module.model([preset(Image.open(io.BytesIO(data)).convert("RGB"))])[0]
    raw = {name: value.numpy() for name, value in zip(spec.output_names, outputs)}
    return get_task(spec.task).predictions(raw, [geometry], spec.profile, spec.head)[0], expected


@pytest.mark.parametrize("arch", ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_the_harness_detects_what_the_torchvision_model_returns_end_to_end(arch, tmp_path):
    """The harness's run (its pre-processing, the exported part of the model in torch, its decoding or the
    graph's own detections, boxes mapped back to the stored image) against `model([image])` in eager mode:
    the same detections in the same order, boxes to 1e-4 px (a bicubic resize in the transform fails it)."""
    spec = resolve_model(f"torchvision:{arch}", checkpoint=_checkpoint(arch, tmp_path))
    module = spec.load_torch()
    preset = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    photos = [sorted((DETECT_DIR / "images").glob("*.jpg"))[0].read_bytes(), _photo(301, 301)]
    found = 0
    for data in photos:
        got, expected = _harness_and_eager(spec, module, preset, data)
        assert len(got.scores) == len(expected["scores"]), arch
        np.testing.assert_allclose(got.boxes, expected["boxes"].numpy(), rtol=1e-6, atol=1e-4)
        assert np.array_equal(got.scores, expected["scores"].numpy())
        assert np.array_equal(got.labels, expected["labels"].numpy())
        found += len(got.scores)
    assert found >= 10, found


def test_a_resize_variant_resizes_the_decoded_image_before_normalising_as_a_deployment_does():
    """The resize axis on a torchvision detector: an OpenCV resize takes the decoded uint8 image to the size the
    transform would make (799 for a 97 px square under min_size 800), then it is normalised and padded with 0."""
    import cv2

    spec = resolve_model("torchvision:retinanet_resnet50_fpn")
    profile = spec.profile.replace(resize="cv2-linear")
    data = _photo(97, 97)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    resized = cv2.resize(decoded, (799, 799), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    expected = np.zeros((800, 800, 3), np.float32)
    expected[:799, :799] = (resized - np.float32(spec.profile.mean)) / np.float32(spec.profile.std)
    pixels, geometry = to_pixels(data, profile)
    assert np.allclose(pixels, expected, rtol=0, atol=1e-6) and not np.array_equal(
        pixels, to_pixels(data, spec.profile)[0])
    assert geometry.scale_x == 799 / 97


def test_mask_rcnn_masks_are_torchvisions_own_pasted_on_the_stored_image(tmp_path):
    """Mask R-CNN is an instance segmenter: its graph's detections and 28 x 28 mask probabilities, pasted by
    torchvision's paste_masks_in_image at the boxes mapped to the stored image and kept above 0.5, are what the
    model returns in eager mode (run at min_size 320 on both sides, to be quick)."""
    from dataclasses import replace

    from pycocotools import mask as coco_mask

    from harness.tasks import get_task

    spec = resolve_model("torchvision:maskrcnn_resnet50_fpn")
    assert spec.task == "instances" and "mask_paste" not in get_task("instances").post_axes_of(spec)
    spec = replace(spec, profile=spec.profile.replace(resize_size=320, input_size=320))
    spec = replace(spec, weights=_checkpoint("maskrcnn_resnet50_fpn", tmp_path, spec, images=4))
    module = spec.load_torch()
    module.model.transform.min_size = (320,)
    preset = torchvision.models.get_model_weights("maskrcnn_resnet50_fpn").DEFAULT.transforms()
    found = 0
    for data in [sorted((DETECT_DIR / "images").glob("*.jpg"))[0].read_bytes()]:
        got, expected = _harness_and_eager(spec, module, preset, data)
        assert np.array_equal(got.labels, expected["labels"].numpy()), "same detections, same order"
        np.testing.assert_allclose(got.boxes, expected["boxes"].numpy(), rtol=1e-6, atol=1e-4)
        masks = coco_mask.decode(list(got.masks)).transpose(2, 0, 1).astype(bool)
        assert np.array_equal(masks, expected["masks"][:, 0].numpy() > 0.5)
        found += int(masks.any(axis=(1, 2)).sum())
    assert found >= 10, found


def test_no_colour_conversion_is_offered_or_taken_at_a_normalised_model_input():
    """The detectors' transform hands the model normalised floats: a YUV round trip "at the model input" would
    act on them as if they were pixels (measured: every detection flipped, silently), so the colour axis
    offers its conversions at decode only, and a profile asking for the other placement is refused."""
    from harness.errors import UsageError
    from harness.noise import VARIANT_BUILDERS

    spec = resolve_model("torchvision:ssdlite320_mobilenet_v3_large")
    names = [variant.name for variant in VARIANT_BUILDERS["color"](spec, "onnxruntime")]
    assert "yuv420-bt601-full-i420" in names and not any("@" in name for name in names), names
    with pytest.raises(UsageError, match="hands the model normalised floats"):
        spec.profile.replace(color="yuv420-bt601-full-i420", color_at="model-input")


def _keypoint_rcnn_at_320(tmp_path):
    """Keypoint R-CNN with BatchNorm re-estimated at min_size 320 (to be quick: the graph starts after the
    transform, so a profile's sizes are all that change), its person score lowered so that a few dozen people
    pass the 0.05 threshold, not 100 an image (its keypoint head runs 8 convolutions of 512 channels on each:
    seconds an image)."""
    from dataclasses import replace

    spec = resolve_model("torchvision:keypointrcnn_resnet50_fpn")
    spec = replace(spec, profile=spec.profile.replace(resize_size=320, input_size=320))
    state = spec.load_torch().state_dict()
    state["roi_heads.box_predictor.cls_score.bias"][1] -= 6.5  # _checkpoint lifts it by 4 again
    (tmp_path / "seeded").mkdir(parents=True)
    torch.save(state, tmp_path / "seeded" / "lowered.pt")
    spec = replace(spec, weights=tmp_path / "seeded" / "lowered.pt", random_seed=None)
    path = _checkpoint("keypointrcnn_resnet50_fpn", tmp_path, spec, images=4)
    return replace(spec, weights=path)


def test_keypoint_rcnn_keypoints_are_torchvisions_own_on_the_stored_image(tmp_path):
    """Keypoint R-CNN is a keypoint detector: its graph's people and keypoints, mapped back to the stored image,
    are what the model returns in eager mode (keypoints through torchvision's resize_keypoints), 1e-4 px."""
    from harness.tasks import get_task

    spec = _keypoint_rcnn_at_320(tmp_path)
    assert spec.task == "keypoint-detect" and spec.labels[:3] == ("nose", "left_eye", "right_eye")
    assert get_task(spec.task).post_axes_of(spec) == ()
    module = spec.load_torch()
    module.model.transform.min_size = (320,)
    preset = torchvision.models.get_model_weights("keypointrcnn_resnet50_fpn").DEFAULT.transforms()
    found = 0
    for path in sorted((DETECT_DIR / "images").glob("*.jpg"))[1:3]:
        got, expected = _harness_and_eager(spec, module, preset, path.read_bytes())
        assert np.array_equal(got.labels, expected["labels"].numpy()), "same people, same order"
        assert np.array_equal(got.scores, expected["scores"].numpy())
        np.testing.assert_allclose(got.boxes, expected["boxes"].numpy(), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(got.keypoints, expected["keypoints"].numpy(), rtol=1e-6, atol=1e-4)
        found += len(got.scores)
    assert found >= 10, found


def test_keypoint_rcnn_goes_through_compare_one_image_at_a_time_on_a_person_keypoints_file(tmp_path, harness_cli,
                                                                                        person_keypoints):
    """A two-stage detector's graph ends in its own NMS: exported at batch 1 with its detections padded and counted,
    run one image at a time, compared as they are; Keypoint R-CNN's on a COCO person-keypoints file's whole
    images, with COCO keypoint AP and person box AP on both sides (random weights: the AP itself is ~0)."""
    spec = _keypoint_rcnn_at_320(tmp_path / "weights")
    data = person_keypoints(tmp_path / "people", images=2)
    profile = tmp_path / "320.toml"
    profile.write_text("[pre]\ninput_size = 320\nresize_size = 320\n")
    result = harness_cli("compare", "torchvision:keypointrcnn_resnet50_fpn", "--checkpoint", str(spec.weights),
                         "--profile", str(profile), "--dataset", str(data), "--limit", "2", "--backends", "ort",
                         "--timed-runs", "0", "--json", "-")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "batch is fixed at 1" in result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["task"] == "keypoint-detect" and report["dataset"]["samples"] == 2
    assert set(report["reference"]["metric"]) == {"ap", "ap50", "ap75", "box_map"}, report["reference"]
    [row] = report["results"]
    assert row["status"] == "ok" and row["metric"].keys() == report["reference"]["metric"].keys(), row
    assert row["outputs"]["top1_agreement"] == 1.0 and row["outputs"]["max_abs_per_output"]["count"] == 0, row


def test_sysnoise_sweeps_a_torchvision_detectors_pre_and_post_processing(tmp_path, harness_cli):
    """SSDlite fine-tuned on the embedded detection split's ten shapes (random weights of its 11-class build, its
    BatchNorm re-estimated), labelled by --labels: the decoder (pre) and NMS (post) axes run on it and are scored
    by COCO mAP against the split's boxes."""
    from harness.data.benchmark import DETECT_DIR as split
    from harness.tasks import get_task

    arch = "ssdlite320_mobilenet_v3_large"
    classes = get_task("detect").benchmark().classes
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = torchvision.models.get_model_builder(arch)(weights=None, weights_backbone=None,
                                                           num_classes=len(classes) + 1)
    (tmp_path / "seed").mkdir()
    torch.save(model.state_dict(), tmp_path / "seed" / "shapes.pt")
    spec = resolve_model(f"torchvision:{arch}", checkpoint=tmp_path / "seed" / "shapes.pt")
    assert spec.labels == () and spec.head["type"] == "anchors"
    checkpoint = _checkpoint(arch, tmp_path / "weights", spec, images=8)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(("__background__", *classes)) + "\n")
    swept = harness_cli("sysnoise", f"torchvision:{arch}", "--checkpoint", str(checkpoint), "--labels", str(labels),
                        "--dataset", str(split / "instances.json"), "--axes", "decoder,nms", "--limit", "4",
                        "--json", "-")
    assert swept.returncode == 0, swept.stderr[-2000:]
    report = json.loads(swept.stdout)
    assert report["model"]["task"] == "detect" and report["dataset"]["samples"] == 4
    axes = {axis["axis"]: axis["variants"] for axis in report["axes"]}
    assert set(axes) == {"decoder", "nms"} and all(len(variants) >= 3 for variants in axes.values()), axes
    assert all(v["status"] == "ok" and set(v["metric"]) >= {"map", "ap50"} for vs in axes.values() for v in vs)
    # NMS variants act on the harness's decoding: a class-agnostic or another threshold changes the detections
    assert any(not v["identical_to_reference"] for v in axes["nms"]), axes["nms"]
