"""Instance segmentation: mask pasting against the libraries called directly, mask IoU and mask AP against
hand-computed cases, the harness's mask AP against pycocotools' own `segm` evaluation of its predictions
(1e-9), the COCO segmentation loader's checks, the stored-piece encoding, and the zoo model through every
command."""
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from harness.data import load_coco
from harness.data.instances import compressed_counts_total
from harness.errors import InputError
from harness.masks import MASK_PASTES, InstanceDetections, decode_masks, mask_iou, paste_masks
from harness.metrics import instance_mask_evaluation
from harness.preprocess import Geometry
from harness.tasks import get_task


def _rle(mask: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


def _probabilities(coefficients, prototypes):
    return 1 / (1 + np.exp(-(coefficients @ prototypes.reshape(len(prototypes), -1)))).reshape(
        len(coefficients), *prototypes.shape[1:])


@pytest.mark.parametrize("paste", MASK_PASTES)
def test_pasted_masks_equal_the_libraries_called_directly(paste):
    """A 36x22 image letterboxed on a 32x32 input (rows 6.2-25.8), 8x8 prototypes: their rows 2-5 (1.56-6.44
    rounded) are resized to the stored size (4.5x, 5.5x: no integer ratio, where nearest conventions part) by
    OpenCV (bilinear: INTER_LINEAR's half-pixel centres; nearest: INTER_NEAREST's floor) or by the
    align-corners / half-pixel-nearest formulas written out, cropped to the box by pixel index and
    thresholded: exactly the harness's RLE."""
    rng = np.random.default_rng(0)
    prototypes = rng.normal(0, 1, (3, 8, 8)).astype(np.float32)
    coefficients = rng.normal(0, 1.5, (2, 3)).astype(np.float32)
    width, height = 36, 22
    geometry = Geometry(32 / width, 32 / width, 0.0, (32 - height * 32 / width) / 2, width=width, height=height)
    boxes = np.array([[3.2, 1.0, 30.5, 20.0], [0.0, 0.0, width, height]], np.float32)
    threshold = 0.4 if paste == "nearest" else 0.5
    rles = paste_masks(coefficients, prototypes, boxes, geometry, 32, paste, threshold)
    region = _probabilities(coefficients, prototypes)[:, 2:6]
    rows_in, columns_in = region.shape[1:]
    expected = []
    for probability, (x0, y0, x1, y1) in zip(region, boxes):
        if paste == "bilinear":
            pasted = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
        elif paste == "nearest":
            pasted = cv2.resize(probability, (width, height), interpolation=cv2.INTER_NEAREST)
        elif paste == "nearest-exact":  # the source pixel whose span holds the output pixel's centre
            rows = np.minimum(((np.arange(height) + 0.5) * rows_in / height).astype(int), rows_in - 1)
            columns = np.minimum(((np.arange(width) + 0.5) * columns_in / width).astype(int), columns_in - 1)
            pasted = probability[rows][:, columns]
        else:  # align corners: output pixel i samples input position i * (in - 1) / (out - 1)
            ys = np.arange(height) * (rows_in - 1) / (height - 1)
            xs = np.arange(width) * (columns_in - 1) / (width - 1)
            y0f, x0f = np.floor(ys).astype(int), np.floor(xs).astype(int)
            y1f, x1f = np.minimum(y0f + 1, rows_in - 1), np.minimum(x0f + 1, columns_in - 1)
            wy, wx = (ys - y0f)[:, None], (xs - x0f)[None, :]
            top = probability[y0f][:, x0f] * (1 - wx) + probability[y0f][:, x1f] * wx
            bottom = probability[y1f][:, x0f] * (1 - wx) + probability[y1f][:, x1f] * wx
            pasted = top * (1 - wy) + bottom * wy
        columns, rows = np.arange(width)[None, :], np.arange(height)[:, None]
        inside = (columns >= x0) & (columns < x1) & (rows >= y0) & (rows < y1)
        expected.append((pasted > threshold) & inside)
    got = decode_masks(rles)
    assert got.shape == (2, height, width)
    assert [int(np.sum(g != e)) for g, e in zip(got, expected)] == [0, 0]
    assert got[0].sum() > 20 and not got[0][:, 31:].any() and not got[0][:, :3].any()


def test_mask_iou_and_mask_ap_of_hand_computed_cases():
    """Two 10x10 squares overlapping by 5x10: IoU 50 / 150 = 1/3 (pycocotools' mask IoU). Mask AP: a perfect
    prediction is AP 1; a prediction of IoU 0.6 (a 6x10 part of a 10x10 object) counts at AP50, not AP75:
    AP@[.5:.95] = 3 thresholds (.5, .55, .6) of 10."""
    a, b = np.zeros((20, 30), bool), np.zeros((20, 30), bool)
    a[5:15, 5:15], b[5:15, 10:20] = True, True
    assert mask_iou([_rle(a)], [_rle(b)])[0, 0] == pytest.approx(1 / 3)
    nothing = _rle(np.zeros_like(a))
    np.testing.assert_array_equal(mask_iou([nothing, _rle(a)], [nothing]), [[1.0], [0.0]])  # two empty masks agree
    part = np.zeros_like(a)
    part[5:15, 5:11] = True

    class Instance:
        boxes, box_labels, instance_masks = np.array([[5, 5, 15, 15]], np.float32), np.array([0]), (_rle(a),)
        crowd_boxes = crowd_labels = crowd_masks = None

    def predicted(mask):
        return InstanceDetections(np.array([[5, 5, 15, 15]], np.float32), np.array([0.9], np.float32),
                                  np.array([0]), (_rle(mask),))

    perfect, _ = instance_mask_evaluation([Instance()], [predicted(a)], 1)
    assert perfect == pytest.approx({"mask_map": 1.0, "mask_ap50": 1.0, "mask_ap75": 1.0})
    partial, _ = instance_mask_evaluation([Instance()], [predicted(part)], 1)
    assert partial["mask_ap50"] == pytest.approx(1.0) and partial["mask_ap75"] == 0.0
    assert partial["mask_map"] == pytest.approx(0.3)


def test_compressed_rle_totals_equal_pycocotools_and_overruns_are_caught():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        counts = _rle(mask)["counts"]
        assert compressed_counts_total(counts) == mask.size
    assert compressed_counts_total(b"P13700000`1") == 120  # the 10 x 12 example pycocotools encodes
    assert compressed_counts_total(b"P13700000`1P1") != 120  # two more runs: past the mask
    assert compressed_counts_total(b"P\x7f") is None and compressed_counts_total(b"P") is None  # bad byte, cut off


def _coco_file(tmp_path, segmentation, width=12, height=10):
    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (12, 10)).save(tmp_path / "images" / "a.png")
    image = {"id": 1, "file_name": "a.png"}
    if width:
        image.update(width=width, height=height)
    payload = {"images": [image], "categories": [{"id": 1, "name": "thing"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0,
                                "segmentation": segmentation}]}
    (tmp_path / "instances.json").write_text(json.dumps(payload))
    return tmp_path / "instances.json"


def test_coco_segmentations_load_as_rle_and_bad_ones_are_one_line(tmp_path):
    square = np.zeros((10, 12), bool)
    square[1:5, 1:5] = True
    polygon = load_coco(_coco_file(tmp_path, [[1, 1, 5, 1, 5, 5, 1, 5]]))
    assert polygon.task == "instances" and coco_mask.area(polygon.samples[0].instance_masks[0]) == 16
    compressed = load_coco(_coco_file(tmp_path, {"size": [10, 12], "counts": _rle(square)["counts"].decode()}))
    np.testing.assert_array_equal(decode_masks(compressed.samples[0].instance_masks), square[None])
    flat = square.T.ravel().astype(int)  # column-major runs, starting with background
    runs = [len(list(group)) for _, group in __import__("itertools").groupby(flat)]
    uncompressed = load_coco(_coco_file(tmp_path, {"size": [10, 12], "counts": [0, *runs] if flat[0] else runs}))
    np.testing.assert_array_equal(decode_masks(uncompressed.samples[0].instance_masks), square[None])
    assert load_coco(_coco_file(tmp_path, [])).task == "detect"  # a converter's empty list: a detection set
    for segmentation, problem in (({"size": [10, 12], "counts": "P13700000`1P1"}, "malformed or do not cover"),
                                  ({"size": [12, 10], "counts": "P13700000`1"}, "is not its image's"),
                                  ({"size": [10, 12], "counts": [100, 10]}, "summing to 10 x 12"),
                                  ([[1, 1, 5, 1]], "at least 3 finite"), ("oops", "list of polygons or an RLE")):
        with pytest.raises(InputError, match=problem) as error:
            load_coco(_coco_file(tmp_path, segmentation))
        assert "annotations[0]" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="integer 'width' and 'height'"):
        load_coco(_coco_file(tmp_path, [[1, 1, 5, 1, 5, 5]], width=0))


def test_an_instance_piece_round_trips_and_a_short_one_is_refused():
    from harness.store import BadPiece, decode_piece, encode_piece

    square = np.zeros((10, 12), bool)
    square[2:6, 3:9] = True
    predictions = [InstanceDetections(np.array([[3, 2, 9, 6], [0, 0, 1, 1]], np.float32), np.array([0.9, 0.2], np.float32),
                                      np.array([1, 0]), (_rle(square), _rle(~square))),
                   InstanceDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), ())]
    task, ids, back, _, _, _ = decode_piece(encode_piece("instances", ["a", "b"], predictions, None, None, {}))
    assert task == "instances" and ids == ["a", "b"] and len(back[1].masks) == 0
    np.testing.assert_array_equal(decode_masks(back[0].masks), np.stack([square, ~square]))
    np.testing.assert_array_equal(back[0].boxes, predictions[0].boxes)
    arrays = get_task("instances").encode_predictions(predictions)
    arrays["mask_counts"] = arrays["mask_counts"][:-1]
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with pytest.raises(BadPiece, match="mask_counts"):
        get_task("instances").decode_predictions(np.load(buffer), 2)


def test_mask_ap_equals_pycocotools_on_the_file_with_the_zoo_models_predictions():
    """yolact_tiny's own predictions of 24 benchmark images, written as a COCO results list (RLE strings) and
    evaluated by pycocotools against the split's instances.json (COCO(file), loadRes, summarize): the
    harness's mask AP equals it to 1e-9."""
    import contextlib
    import io

    import torch
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from harness.data.benchmark import DETECT_DIR
    from harness.model import resolve_model
    from harness.preprocess import normalize, to_pixels

    spec, task = resolve_model("yolact_tiny"), get_task("instances")
    data = task.benchmark().limit(24)
    pixels, geometries = zip(*(to_pixels(data.read(s), spec.profile) for s in data.samples))
    with torch.no_grad():
        outputs = spec.load_torch()(torch.from_numpy(normalize(np.stack(pixels), spec.profile)))
    named = {name: output.numpy() for name, output in zip(spec.output_names, outputs)}
    predictions = task.predictions(named, list(geometries), spec.profile, spec.head)
    ours = task.evaluate(data.samples, predictions, len(spec.labels)).metrics
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(DETECT_DIR / "instances.json"))
        ids = {image["file_name"]: image["id"] for image in truth.dataset["images"]}
        results = [{"image_id": ids[sample.id], "category_id": int(label) + 1, "score": float(score),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
                   for sample, p in zip(data.samples, predictions) for label, score, rle in zip(p.labels, p.scores, p.masks)]
        evaluator = COCOeval(truth, truth.loadRes(results), "segm")
        evaluator.params.imgIds = [ids[sample.id] for sample in data.samples]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.1 < ours["mask_map"] < 0.9
    for key, stat in (("mask_map", 0), ("mask_ap50", 1), ("mask_ap75", 2)):
        assert ours[key] == pytest.approx(evaluator.stats[stat], abs=1e-9), key


def test_zoo_instance_segmenter_through_every_command(through_every_command):
    """compare (HTML with mask overlays, opened in chromium), sysnoise, drift, validate, report and diff on
    yolact_tiny. The graph axes (upsample, ceil mode) run on it in the README's sweep, whose test checks them."""
    report, axes, open_gallery = through_every_command("yolact_tiny", 12, "mask_paste", "--bootstrap-rounds", "20")
    assert report["model"]["task"] == "instances"
    reference = report["reference"]["metric"]
    assert set(reference) == {"mask_map", "mask_ap50", "mask_ap75", "box_map"} and 0 < reference["mask_map"] <= 1
    assert [v["name"] for v in axes["mask_paste"]["variants"]] == ["bilinear-align-corners", "nearest",
                                                                    "nearest-exact", "threshold-0.4"]
    # each changes the masks, and only them: identity is judged on every part of a prediction
    assert not any(v["identical_to_reference"] for v in axes["mask_paste"]["variants"])
    open_gallery()
