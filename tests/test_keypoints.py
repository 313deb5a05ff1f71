"""Top-down keypoints: OKS by its formula, keypoint AP equal to pycocotools' own evaluation of the same
files, the affine crop against mmpose's warp matrices called through OpenCV, the SimCC decoders, the
loader's refusals, and the zoo keypoint model through every command."""
import contextlib
import io
import json
import math

import cv2
import numpy as np
import pytest

from harness.data import load_coco
from harness.data.benchmark import KEYPOINTS_DIR
from harness.errors import InputError
from harness.metrics import coco_keypoint_evaluation, object_keypoint_similarity
from harness.postprocess import decode_simcc
from harness.preprocess import apply_geometry
from harness.profile import Profile


def test_oks_is_the_coco_formula():
    truth = np.array([[10.0, 10.0, 2], [20.0, 20.0, 2], [0.0, 0.0, 0]])
    predicted = np.array([[13.0, 14.0, 1], [20.0, 20.0, 1], [99.0, 99.0, 1]])  # the unlabelled one is not counted
    area, sigmas = 400.0, (0.1, 0.05, 0.2)
    expected = (math.exp(-25 / (2 * area * (2 * 0.1) ** 2)) + 1.0) / 2
    assert object_keypoint_similarity(truth, predicted, area, sigmas) == pytest.approx(expected, abs=1e-12)


def test_keypoint_ap_equals_pycocotools_on_the_files(tmp_path):
    """The benchmark's own json through pycocotools (COCO(file), loadRes, summarize) against the harness's
    evaluation of the same predictions: noisy copies of the truth with scores."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = load_coco(KEYPOINTS_DIR / "keypoints.json")
    rng = np.random.default_rng(0)
    predictions = []
    for sample in data.samples:
        noisy = sample.keypoints.copy()
        noisy[:, :2] += rng.normal(0, rng.uniform(0.5, 6), size=(len(noisy), 2))
        noisy[:, 2] = rng.uniform(0.1, 1.0, len(noisy))
        predictions.append(noisy.astype(np.float32))
    ours, _ = coco_keypoint_evaluation([(s.image_id, s.boxes[0].tolist(), s.keypoints, s.area) for s in data.samples],
                                       predictions, data.samples[0].sigmas)
    results = []
    for sample, predicted in zip(data.samples, predictions):
        scores = predicted[:, 2][predicted[:, 2] > 0.2]
        results.append({"image_id": sample.image_id, "category_id": 1, "keypoints": predicted.ravel().tolist(),
                        "score": float(scores.mean()) if len(scores) else 0.0})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(KEYPOINTS_DIR / "keypoints.json"))
        evaluator = COCOeval(truth, truth.loadRes(results), "keypoints")
        evaluator.params.kpt_oks_sigmas = np.array(json.loads((KEYPOINTS_DIR / "keypoints.json").read_text())
                                                   ["categories"][0]["sigmas"])
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.2 < ours["ap"] < 0.95
    assert ours["ap"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert ours["ap50"] == pytest.approx(evaluator.stats[1], abs=1e-9)
    assert ours["ap75"] == pytest.approx(evaluator.stats[2], abs=1e-9)


@pytest.mark.parametrize("convention", ["legacy", "udp"])
def test_topdown_crop_is_mmposes_warp(convention):
    """mmpose's get_warp_matrix (legacy: the box's edges onto the input's) and get_udp_warp_matrix (onto
    the first and last pixel centres), at rotation 0, written out here from their formulas."""
    image = np.random.default_rng(1).integers(0, 255, size=(90, 130, 3), dtype=np.uint8)
    box, size, padding = np.array([40.0, 10.0, 70.0, 60.0]), 32, 1.25
    centre = (box[:2] + box[2:]) / 2
    scale = max(box[2] - box[0], box[3] - box[1]) * padding  # _fix_aspect_ratio at 1:1 after the padding
    if convention == "udp":
        k = (size - 1) / scale
        matrix = np.array([[k, 0, k * (-centre[0] + 0.5 * scale)], [0, k, k * (-centre[1] + 0.5 * scale)]])
    else:
        source = np.float32([centre, centre + [0, -0.5 * scale], centre + [-0.5 * scale, -0.5 * scale]])
        target = np.float32([[size / 2, size / 2], [size / 2, 0], [0, 0]])
        matrix = cv2.getAffineTransform(source, target)
    expected = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR)
    pixels, geometry = apply_geometry(image, Profile(geometry="topdown", input_size=size, resize="cv2-linear",
                                                     crop_convention=convention, box_padding=padding), box=box)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 matrices
    corner = geometry.points_to_image(np.array([[0.0, 0.0]]))[0]
    np.testing.assert_allclose(corner, centre - scale / 2, atol=1e-4)


def test_simcc_decoders():
    bins = np.arange(128)
    centre = 40.3 * 2  # bins at split ratio 2: x = 40.3 px
    logits = np.log(np.exp(-0.5 * ((bins - centre) / 2.0) ** 2) + 1e-9)[None]
    argmax = decode_simcc(logits, logits, 2.0, "simcc-argmax")
    shift = decode_simcc(logits, logits, 2.0, "simcc-argmax-shift")
    dark = decode_simcc(logits, logits, 2.0, "simcc-dark")
    # peak bin 81 (x 40.5); its left neighbour (bin 80, 0.6 bins from the centre) is the larger
    assert argmax[0, 0] == 40.5 and shift[0, 0] == pytest.approx(40.375)
    assert abs(dark[0, 0] - 40.3) < abs(argmax[0, 0] - 40.3) and abs(dark[0, 0] - 40.3) < 0.05
    assert 0 < argmax[0, 2] <= 1


def test_keypoint_file_errors_name_the_file_and_entry(tmp_path):
    payload = json.loads((KEYPOINTS_DIR / "keypoints.json").read_text())
    payload["annotations"][2]["keypoints"] = payload["annotations"][2]["keypoints"][:-3]
    (tmp_path / "k.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match=r"k\.json: annotations\[2\]\.keypoints must be 33 finite numbers"):
        load_coco(tmp_path / "k.json")
    payload = json.loads((KEYPOINTS_DIR / "keypoints.json").read_text())
    del payload["categories"][0]["sigmas"]
    (tmp_path / "k.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match="one positive OKS sigma per keypoint"):
        load_coco(tmp_path / "k.json")


def test_zoo_keypoint_model_through_every_command(through_every_command):
    """compare (HTML with the keypoints drawn), sysnoise, drift, validate, report and diff on simcc_tiny."""
    report, axes, open_gallery = through_every_command("simcc_tiny", 24, "crop,keypoint_decode", "--bootstrap-rounds", "20")
    assert report["model"]["task"] == "keypoints"
    assert set(report["reference"]["metric"]) == {"ap", "ap50", "ap75"}
    assert [v["name"] for v in axes["crop"]["variants"]] == ["udp", "padding-1.0", "padding-1.5"]
    assert [v["name"] for v in axes["keypoint_decode"]["variants"]] == ["simcc-argmax-shift", "simcc-dark", "flip-test"]
    open_gallery()  # labelled, reference and candidate keypoints on each flipped instance


def test_flip_test_in_the_graph_equals_mmposes_flip_vectors(tmp_path):
    """The rewritten graph against the model run twice by hand: the mirrored crop's x bins reversed, its
    left/right keypoints swapped, the two averaged (mmpose's flip_vectors + mean)."""
    import onnx
    import onnxruntime
    import torch

    from harness.export import export
    from harness.model import resolve_model
    from harness.noise.graph import rewrite

    spec = resolve_model("simcc_tiny")
    exported = export(spec, cache_dir=tmp_path)
    proto = onnx.load(str(exported.onnx_path))
    assert rewrite(proto, flip_test=("simcc_x", "simcc_y", tuple(map(tuple, spec.head["flip_pairs"])))) == 11
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    crops = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    flipped_x, flipped_y = session.run(None, {"input": crops})
    model = spec.load_torch()
    with torch.no_grad():
        plain_x, plain_y = (t.numpy() for t in model(torch.from_numpy(crops)))
        mirror_x, mirror_y = (t.numpy() for t in model(torch.from_numpy(crops[..., ::-1].copy())))
    order = list(range(plain_x.shape[1]))
    for left, right in spec.head["flip_pairs"]:
        order[left], order[right] = right, left
    np.testing.assert_allclose(flipped_x, (plain_x + mirror_x[:, order, ::-1]) / 2, atol=1e-4)
    np.testing.assert_allclose(flipped_y, (plain_y + mirror_y[:, order]) / 2, atol=1e-4)


def test_an_instance_without_extent_is_one_counted_failure(tmp_path, harness_cli):
    """A zero-size box cannot be cropped around: that instance fails alone, listed with its reason."""
    import shutil

    payload = json.loads((KEYPOINTS_DIR / "keypoints.json").read_text())
    payload["images"] = payload["images"][:3]
    payload["annotations"] = [a for a in payload["annotations"] if a["image_id"] <= 3]
    payload["annotations"][0]["bbox"][2:] = [0, 0]
    (tmp_path / "images").mkdir()
    for image in payload["images"]:
        shutil.copy(KEYPOINTS_DIR / "images" / image["file_name"], tmp_path / "images")
    (tmp_path / "keypoints.json").write_text(json.dumps(payload))
    result = harness_cli("compare", "simcc_tiny", "--dataset", str(tmp_path), "--backends", "ort", "--json",
                         str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    dataset = json.loads((tmp_path / "report.json").read_text())["dataset"]
    assert dataset["samples"] == len(payload["annotations"]) - 1
    assert dataset["failed_samples"] == 1
    (failure,) = dataset["failed"]
    assert failure["sample"] == "00000.jpg#1" and "has no extent to crop around" in failure["reason"]
