"""Semantic segmentation: the metric against hand-computed and set-operation cases, the post-processing
variants against the libraries called directly, label maps through the geometry, the loader's refusals, the
stored-piece encoding, and the zoo segmenter through every command."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.data import load_dataset
from harness.data.segmentation import load_segmentation, read_label_map
from harness.errors import HarnessError, InputError
from harness.metrics import bootstrap_miou_delta, confusion_matrix, segmentation_metrics
from harness.postprocess import MASK_RESIZES, label_map
from harness.preprocess import IGNORE_LABEL, apply_geometry, label_map_to_input
from harness.profile import Profile
from harness.tasks import get_task


def test_miou_of_a_hand_computed_case():
    truth = np.array([[0, 0, 1], [1, 2, IGNORE_LABEL]], np.uint8)
    predicted = np.array([[0, 1, 1], [1, 2, 2]], np.uint8)
    confusion = confusion_matrix(truth, predicted, 4)  # class 3: in neither map, so in no mean
    assert confusion.sum() == 5  # the ignored pixel is not counted
    metrics = segmentation_metrics(confusion)
    # IoU: class 0 1/2 (one hit, union 2), class 1 2/3, class 2 1/1; accuracy: 1/2, 2/2, 1/1
    assert metrics["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3, abs=1e-12)
    assert metrics["pixel_acc"] == pytest.approx(4 / 5, abs=1e-12)
    assert metrics["mean_acc"] == pytest.approx((1 / 2 + 1 + 1) / 3, abs=1e-12)


def test_miou_equals_per_class_set_operations_on_random_maps():
    rng = np.random.default_rng(3)
    truths = [rng.integers(0, 6, size=(17, 23)).astype(np.uint8) for _ in range(5)]
    predictions = [np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 6, t.shape)).astype(np.uint8)
                   for t in truths]
    truths[0][:3] = IGNORE_LABEL
    confusion = sum(confusion_matrix(t, p, 6) for t, p in zip(truths, predictions))
    truth, predicted = np.concatenate([t.ravel() for t in truths]), np.concatenate([p.ravel() for p in predictions])
    counted = truth != IGNORE_LABEL
    ious = [np.sum((truth == c) & (predicted == c) & counted) / np.sum(((truth == c) | (predicted == c)) & counted)
            for c in range(6)]
    assert segmentation_metrics(confusion)["miou"] == pytest.approx(np.mean(ious), abs=1e-12)


def test_miou_interval_is_zero_for_equal_predictions_and_below_zero_for_a_worse_one():
    rng = np.random.default_rng(0)
    truths = [rng.integers(0, 3, size=(8, 8)).astype(np.uint8) for _ in range(30)]
    same = np.stack([confusion_matrix(t, t, 3) for t in truths])
    assert bootstrap_miou_delta(same, same, rounds=200) == (0.0, 0.0)
    worse = np.stack([confusion_matrix(t, np.where(rng.random(t.shape) < 0.2, 0, t).astype(np.uint8), 3)
                      for t in truths])
    low, high = bootstrap_miou_delta(same, worse, rounds=200)
    assert low <= high < 0


@pytest.mark.parametrize("geometry_name", ["squash", "letterbox"])
def test_label_map_variants_equal_the_libraries_called_directly(geometry_name):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(90, 120, 3), dtype=np.uint8)  # not square: letterbox pads
    profile = Profile(geometry=geometry_name, input_size=32)
    _, geometry = apply_geometry(image, profile)
    logits = rng.standard_normal((5, 32, 32)).astype(np.float32)
    rows = 32 if geometry_name == "squash" else round(90 * 32 / 120)  # letterbox: the unpadded rows only
    region = torch.from_numpy(logits[:, :rows])[None]
    for align in (False, True):
        expected = F.interpolate(region, size=(90, 120), mode="bilinear", align_corners=align)[0].argmax(0).numpy()
        method = "logits-bilinear-align-corners" if align else "logits-bilinear"
        np.testing.assert_array_equal(label_map(logits, geometry, 32, method), expected)
    nearest = cv2.resize(logits[:, :rows].argmax(0).astype(np.uint8), (120, 90), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(label_map(logits, geometry, 32, "argmax-nearest"), nearest)
    assert len({label_map(logits, geometry, 32, m).tobytes() for m in MASK_RESIZES}) == 3  # each one differs


def test_label_map_refuses_a_cropping_geometry():
    image = np.zeros((90, 120, 3), np.uint8)
    _, geometry = apply_geometry(image, Profile(geometry="shorter-crop", input_size=32))
    with pytest.raises(HarnessError, match="squash or letterbox"):
        label_map(np.zeros((3, 32, 32), np.float32), geometry, 32, "logits-bilinear")


def test_label_maps_reach_the_input_by_nearest_and_pad_with_ignore():
    mask = np.random.default_rng(2).integers(0, 11, size=(60, 90)).astype(np.uint8)
    letterboxed = label_map_to_input(mask, Profile(geometry="letterbox", input_size=30))
    np.testing.assert_array_equal(letterboxed[:20], np.asarray(Image.fromarray(mask).resize((30, 20), Image.NEAREST)))
    assert (letterboxed[20:] == IGNORE_LABEL).all()
    assert set(np.unique(letterboxed[:20])) <= set(np.unique(mask))  # never an interpolated value


def _segmentation_set(root, masks: dict, classes="background\nthing\n"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(classes)
    for name, mask in masks.items():  # None: an image without its label map
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{name}.jpg")
        if mask is not None:
            Image.fromarray(mask, "RGB" if mask.ndim == 3 else "L").save(root / "masks" / f"{name}.png")
    return root


def test_segmentation_loader_lists_an_image_without_a_label_map_and_refuses_bad_maps(tmp_path):
    good = np.array([[0, 1], [255, 1]], np.uint8)
    data = load_dataset(_segmentation_set(tmp_path / "a", {"x": good, "y": None}))
    assert data.task == "segment" and [s.id for s in data.samples] == ["images/x.jpg"]
    assert data.skipped == [{"path": str(tmp_path / "a" / "images" / "y.jpg"), "reason": "no label map y.png in masks/"}]
    np.testing.assert_array_equal(read_label_map(data.samples[0], 2), good)
    colours = load_segmentation(_segmentation_set(tmp_path / "b", {"x": np.zeros((2, 2, 3), np.uint8)}))
    with pytest.raises(InputError, match=r"x\.png: label map in mode RGB"):
        read_label_map(colours.samples[0], 2)
    with pytest.raises(InputError, match=r"x\.png: value 7 is no class"):
        read_label_map(load_segmentation(_segmentation_set(tmp_path / "c", {"x": np.full((2, 2), 7, np.uint8)}))
                       .samples[0], 2)
    with pytest.raises(InputError, match="classes.txt"):
        data.aligned_to(("thing", "background"))


def test_a_segmentation_piece_round_trips_and_a_short_one_is_refused():
    from harness.store import BadPiece, decode_piece, encode_piece

    maps = [np.arange(6, dtype=np.uint8).reshape(2, 3), np.zeros((4, 1), np.uint8)]
    task, ids, back, _, _, _ = decode_piece(encode_piece("segment", ["a", "b"], maps, None, None, {}))
    assert task == "segment" and ids == ["a", "b"]
    for a, b in zip(maps, back):
        np.testing.assert_array_equal(a, b)
    arrays = get_task("segment").encode_predictions(maps)
    arrays["pixels"] = arrays["pixels"][:-1]
    with pytest.raises(BadPiece, match="pixels"):
        get_task("segment").decode_predictions(np.load(_npz(arrays)), 2)


def _npz(arrays):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    return buffer


def test_zoo_segmenter_through_every_command(through_every_command):
    """compare (HTML with overlays), sysnoise, drift, validate, report and diff on deeplabv3_tiny."""
    report, axes, open_gallery = through_every_command("deeplabv3_tiny", 12, "mask_resize,ceil_mode")
    assert report["model"]["task"] == "segment"
    reference = report["reference"]["metric"]
    assert set(reference) == {"miou", "pixel_acc", "mean_acc"} and 0 < reference["miou"] <= 1
    assert [v["name"] for v in axes["mask_resize"]["variants"]] == ["logits-bilinear-align-corners", "argmax-nearest"]
    assert all(v["ci95"] is not None for a in axes.values() for v in a["variants"])  # mIoU intervals: every variant
    open_gallery()  # class maps over each flipped image


def test_a_segmenter_with_a_cropping_geometry_is_refused_before_any_work():
    from dataclasses import replace

    import harness.models as zoo
    from harness.errors import UsageError
    from harness.model import resolve_model

    spec = resolve_model("deeplabv3_tiny")
    profile = spec.profile.replace(geometry="shorter-crop")
    zoo.ZOO["cropping_segmenter"] = lambda: replace(spec, name="cropping_segmenter", profile=profile)
    try:
        with pytest.raises(UsageError, match="whole-image maps, and geometry 'shorter-crop' crops"):
            resolve_model("cropping_segmenter")
    finally:
        del zoo.ZOO["cropping_segmenter"]


def _segment_subset(root, names, classes):
    """The embedded segmentation split's first images and masks under `root`, classes.txt naming `classes`."""
    import shutil

    from harness.data.benchmark import SEGMENT_DIR

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for name in names:
        shutil.copy(SEGMENT_DIR / "images" / f"{name}.jpg", root / "images")
        shutil.copy(SEGMENT_DIR / "masks" / f"{name}.png", root / "masks")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_a_torchvision_segmenter_through_sysnoise_with_its_own_transform_as_reference(tmp_path, harness_json):
    """torchvision's LR-ASPP on the square segmentation images: random weights with BatchNorm statistics
    re-estimated on other images (untouched, every pixel gets one class and every variant is trivially
    identical), its 21 outputs named by --labels (the split's 11 classes, then 10 unused). The reference mIoU
    is torchvision's preset + the model + F.interpolate of the logits to the stored size, called directly; a
    pre-processing axis (the decoder) and a post-processing one (mask_resize) run and move the class maps."""
    from harness.data.benchmark import SEGMENT_DIR
    from harness.matrix import estimated_checkpoint
    from harness.model import resolve_model

    classes = [*(SEGMENT_DIR / "classes.txt").read_text().split(), *(f"unused-{k}" for k in range(11, 21))]
    names = [f"{k:05d}" for k in range(4)]
    data = _segment_subset(tmp_path / "data", names, classes)
    calibrate = tmp_path / "calibrate"
    calibrate.mkdir()
    for k in range(140, 144):
        (calibrate / f"{k:05d}.jpg").write_bytes((SEGMENT_DIR / "images" / f"{k:05d}.jpg").read_bytes())
    spec = resolve_model("torchvision:lraspp_mobilenet_v3_large")
    checkpoint = tmp_path / "lraspp.pt"
    estimated_checkpoint(spec, calibrate, data / "images", checkpoint)
    (tmp_path / "labels.txt").write_text("\n".join(classes) + "\n")
    report = harness_json("sysnoise", "torchvision:lraspp_mobilenet_v3_large", "--checkpoint", str(checkpoint),
                          "--labels", str(tmp_path / "labels.txt"), "--dataset", str(data), "--axes",
                          "decoder,mask_resize", "--batch-size", "4")

    import torchvision

    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    transform = torchvision.models.segmentation.LRASPP_MobileNet_V3_Large_Weights.DEFAULT.transforms()
    confusion = np.zeros((21, 21), np.int64)
    images = [Image.open(data / "images" / f"{name}.jpg").convert("RGB") for name in names]
    with torch.inference_mode():  # one batch of the four, as the harness's --batch-size 4 runs them
        batch = model.eval()(torch.stack([transform(image) for image in images]))["out"]
        for name, image, logits in zip(names, images, batch):
            predicted = F.interpolate(logits[None], size=image.size[::-1], mode="bilinear", align_corners=False)[0]
            truth = np.array(Image.open(data / "masks" / f"{name}.png"))
            confusion += confusion_matrix(truth, predicted.argmax(0).numpy().astype(np.uint8), 21)
    reference = report["reference"]["metric"] if "reference" in report else report["reference_metric"]
    assert reference["miou"] == pytest.approx(segmentation_metrics(confusion)["miou"], abs=1e-9)
    rows = {(axis["axis"], v["name"]): v for axis in report["axes"] for v in axis["variants"]}
    assert all(row["status"] in ("ok", "identical") for row in rows.values())
    assert rows["decoder", "pil-draft-2"]["flip_rate"] > 0 and rows["mask_resize", "argmax-nearest"]["flip_rate"] > 0


def test_an_unlabelled_folder_compares_a_segmenter_by_agreement(harness_json, tmp_path):
    """A folder of images without masks: the rows are the agreement with the reference (a segmenter has no
    class distribution, so no KL: the delta of a metric one side lacks is left out, where it used to raise)."""
    from harness.data.benchmark import SEGMENT_DIR

    for k in range(4):
        (tmp_path / f"{k:05d}.jpg").write_bytes((SEGMENT_DIR / "images" / f"{k:05d}.jpg").read_bytes())
    report = harness_json("compare", "deeplabv3_tiny", "--dataset", str(tmp_path), "--backends", "onnxruntime,openvino",
                          "--precision", "fp32,int8")
    rows = {(row["backend"], row["precision"]): row for row in report["results"]}
    row = rows["onnxruntime", "fp32"]
    assert row["status"] == "ok" and row["metric"]["top1_agreement"] == 1.0 and row["metric"]["kl"] is None
    assert "kl" not in row["delta"] and row["delta"]["top1_agreement"] == 0
    # a changed class map of an unlabelled image is shown without a label (there is no mask to read)
    flips = [flip for row in report["results"] for flip in row["flipped"]]
    assert flips and all(flip["label"] is None and flip["changed_fraction"] > 0.01 for flip in flips)
