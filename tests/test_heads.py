"""Detection head layouts other than the zoo's FCOS maps: a YOLO-style dense output decoded by the harness
(so its NMS and box-decoding axes apply), and a graph that post-processes itself (taken as it is; those
axes do not apply). Their decoding against the family's own post-processing, and each through the
commands as an .onnx file a user brings."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from harness.data.benchmark import DETECT_DIR
from harness.profile import Profile

PLUGINS = str(Path(__file__).parent / "plugins")
sys.path.insert(0, PLUGINS)
from harness_test_yolo import TinyYolo  # noqa: E402

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross", "hexagon", "diamond", "crescent", "arrow")
# YOLOv5's NMS IoU and ultralytics' max_det; boxes unclipped, as ultralytics' NMS sees them (it clips after
# scaling them to the image)
PROFILE = Profile(geometry="letterbox", input_size=128, box_decode="no-clip", score_threshold=0.25,
                  iou_threshold=0.45, max_detections=300, nms="ultralytics-offset")


def _yolo_outputs(count: int = 6) -> np.ndarray:
    """Real outputs of the random-init TinyYolo on benchmark images, [N, 4 + C, A]."""
    from harness.preprocess import normalize, to_pixels

    images = sorted((DETECT_DIR / "images").glob("*.jpg"))[:count]
    batch = np.stack([normalize(to_pixels(path.read_bytes(), PROFILE)[0], PROFILE) for path in images])
    torch.manual_seed(0)
    with torch.no_grad():
        return TinyYolo(len(CLASSES)).eval()(torch.from_numpy(batch)).numpy()


def _ultralytics_nms(rows: torch.Tensor, objectness: bool, conf: float, iou: float, max_det: int):
    """ultralytics.utils.ops.non_max_suppression for one image (multi_label off, no class filter), as its
    source reads: rows [A, 4 + C] (or [A, 5 + C]) with xywh boxes."""
    if objectness:  # YOLOv5: conf = obj_conf * cls_conf
        rows = torch.cat([rows[:, :4], rows[:, 5:] * rows[:, 4:5]], 1)
    candidates = rows[rows[:, 4:].amax(1) > conf]
    box = torch.cat([candidates[:, :2] - candidates[:, 2:4] / 2, candidates[:, :2] + candidates[:, 2:4] / 2], 1)
    score, label = candidates[:, 4:].max(1, keepdim=True)
    x = torch.cat((box, score, label.float()), 1)[score.view(-1) > conf]
    x = x[x[:, 4].argsort(descending=True)[:30000]]
    offsets = x[:, 5:6] * 7680  # max_wh: one class's boxes never overlap another's
    keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou)[:max_det]
    return x[keep, :4].numpy(), x[keep, 4].numpy(), x[keep, 5].long().numpy()


@pytest.mark.parametrize("layout,objectness", [("channels-first", False), ("anchors-first", False),
                                               ("anchors-first", True)])
def test_yolo_decoding_and_nms_equal_ultralytics_non_max_suppression(layout, objectness):
    from harness.heads import head_layout

    outputs = _yolo_outputs()
    if objectness:  # a YOLOv5 row: box, objectness, class probabilities
        rng = np.random.default_rng(0)
        objectness_column = rng.uniform(0.2, 1.0, (outputs.shape[0], 1, outputs.shape[2])).astype(np.float32)
        outputs = np.concatenate([outputs[:, :4], objectness_column, outputs[:, 4:]], axis=1)
    graph_output = outputs if layout == "channels-first" else outputs.transpose(0, 2, 1).copy()
    head = {"type": "yolo", "output": "output0", "layout": layout, "box": "xywh", "objectness": objectness}
    compared = candidates = 0

    def scores_of(rows):
        rows = rows.T if layout == "channels-first" else rows
        return (rows[:, 5:] * rows[:, 4:5] if objectness else rows[:, 4:]).max(axis=1)

    for k in range(len(outputs)):
        ours = head_layout(head).decode({"output0": graph_output[k]}, PROFILE, head)
        boxes, scores, labels = _ultralytics_nms(torch.from_numpy(outputs[k].T.copy()), objectness,
                                                 PROFILE.score_threshold, PROFILE.iou_threshold,
                                                 PROFILE.max_detections)
        # equal scores (saturated sigmoids) come out in either order: both sides in one canonical order
        ours_order, their_order = (np.lexsort((b[:, 1], b[:, 0], -s)) for b, s in ((ours.boxes, ours.scores),
                                                                                    (boxes, scores)))
        assert np.array_equal(ours.labels[ours_order], labels[their_order])
        assert np.array_equal(ours.scores[ours_order], scores[their_order])
        np.testing.assert_allclose(ours.boxes[ours_order], boxes[their_order], rtol=0, atol=1e-5)
        compared += len(labels)
        candidates += int((scores_of(graph_output[k]) > PROFILE.score_threshold).sum())
    assert 0.5 * candidates < compared < 0.95 * candidates  # NMS dropped real boxes, and kept most


def _torchvision_detector_outputs(builder, size: int, count: int):
    """A torchvision detector (random init from seed 0) run in eager mode on benchmark images, as its
    forward runs after its transform: (the model, its raw head outputs, its own post-processing's detections
    of them). Its classification bias is zeroed: RetinaNet's 0.01 prior would leave every score below any
    threshold."""
    from harness.preprocess import normalize, to_pixels
    from torchvision.models.detection.image_list import ImageList

    profile = Profile(geometry="squash", input_size=size)
    images = sorted((DETECT_DIR / "images").glob("*.jpg"))[:count]
    batch = torch.from_numpy(np.stack([normalize(to_pixels(p.read_bytes(), profile)[0], profile) for p in images]))
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None).eval()
    classification = getattr(model.head.classification_head, "cls_logits", None)
    if isinstance(classification, torch.nn.Conv2d):
        torch.nn.init.zeros_(classification.bias)
    with torch.no_grad():
        features = list(model.backbone(batch).values())
        outputs = model.head(features)
        anchors = model.anchor_generator(ImageList(batch, [(size, size)] * count), features)
        if hasattr(model.anchor_generator, "sizes"):  # RetinaNet selects level by level
            per_level = [f.size(2) * f.size(3) * model.anchor_generator.num_anchors_per_location()[0] for f in features]
            detections = model.postprocess_detections({k: list(v.split(per_level, dim=1)) for k, v in outputs.items()},
                                                      [list(a.split(per_level)) for a in anchors], [(size, size)] * count)
        else:
            detections = model.postprocess_detections(outputs, anchors, [(size, size)] * count)
    return model, {k: v.numpy() for k, v in outputs.items()}, detections


def _decodes_as_torchvision(head: dict, model, outputs, expected, size: int) -> None:
    from harness.heads import checked_head, head_layout

    weights = {"box_coder_weights": list(model.box_coder.weights)} if hasattr(model.box_coder, "weights") else {}
    head = checked_head({"type": "anchors", "cls_logits": "cls_logits", "bbox_regression": "bbox_regression",
                         "top_k": model.topk_candidates, **weights, **head}, list(outputs))
    profile = Profile(geometry="squash", input_size=size, score_threshold=model.score_thresh,
                      iou_threshold=model.nms_thresh, max_detections=model.detections_per_img)
    for image, reference in enumerate(expected):
        found = head_layout(head).decode({k: v[image] for k, v in outputs.items()}, profile, head)
        assert len(reference["scores"]) > 50 and len(found.scores) == len(reference["scores"])
        np.testing.assert_allclose(found.boxes, reference["boxes"].numpy(), atol=1e-5, rtol=0)
        assert np.array_equal(found.scores, reference["scores"].numpy())
        assert np.array_equal(found.labels, reference["labels"].numpy())


def test_anchor_decoding_and_nms_equal_torchvision_retinanet_postprocess_detections():
    """The anchors head, declared from the model's own generator and coder settings, keeps what RetinaNet's
    postprocess_detections keeps on the same raw outputs: the same boxes (to 1e-5), scores and labels, in
    the same order."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    size = 320  # not a multiple of the coarsest stride (128): its grid is 3, its anchor step 320 // 3
    model, outputs, expected = _torchvision_detector_outputs(retinanet_resnet50_fpn, size, 3)
    generator = model.anchor_generator
    _decodes_as_torchvision({"strides": [8, 16, 32, 64, 128], "sizes": [list(level) for level in generator.sizes],
                             "aspect_ratios": [list(level) for level in generator.aspect_ratios]},
                            model, outputs, expected, size)


def test_centerness_scores_and_linear_boxes_equal_torchvision_fcos_postprocess_detections():
    """FCOS as an anchors head: one anchor per place (sizes 8..128), scores sqrt(sigmoid(class) *
    sigmoid(centerness)), boxes by BoxLinearCoder; the same detections as FCOS.postprocess_detections."""
    from torchvision.models.detection import fcos_resnet50_fpn

    size = 320
    model, outputs, expected = _torchvision_detector_outputs(fcos_resnet50_fpn, size, 2)
    generator = model.anchor_generator
    _decodes_as_torchvision({"strides": [8, 16, 32, 64, 128], "sizes": [list(level) for level in generator.sizes],
                             "aspect_ratios": [list(level) for level in generator.aspect_ratios],
                             "centerness": "bbox_ctrness", "box_coder": "linear"}, model, outputs, expected, size)


def test_default_box_decoding_and_nms_equal_torchvision_ssd_postprocess_detections():
    """generator "default-boxes" with softmax scores keeps what SSDlite's postprocess_detections keeps
    (per class, background excluded), on a random-init ssdlite320_mobilenet_v3_large's outputs."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    size = 320
    model, outputs, expected = _torchvision_detector_outputs(ssdlite320_mobilenet_v3_large, size, 2)
    generator = model.anchor_generator
    _decodes_as_torchvision({"generator": "default-boxes", "scores": "softmax",
                             "strides": [16, 32, 64, 128, 256, 512], "aspect_ratios": generator.aspect_ratios,
                             "min_ratio": 0.2, "max_ratio": 0.95},  # ssdlite320_mobilenet_v3_large's
                            model, outputs, expected, size)


def _export(module: torch.nn.Module, path: Path, output_names: list[str]) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(module.eval(), (torch.zeros(1, 3, 128, 128),), str(path), input_names=["images"],
                      output_names=output_names, dynamic_axes={"images": {0: "batch"}}, dynamo=False,
                      opset_version=17)
    return path


def _profile(path: Path, head: str) -> Path:
    labels = ", ".join(f'"{name}"' for name in CLASSES)
    path.write_text(f'task = "detect"\nlabels = [{labels}]\n[pre]\ninput_size = 128\ngeometry = "letterbox"\n'
                    f'[post]\nbox_decode = "no-clip"\nscore_threshold = 0.25\n[head]\n{head}')
    return path


def test_a_yolo_onnx_file_through_compare_and_sysnoise(tmp_path, harness_cli):
    torch.manual_seed(0)
    model = _export(TinyYolo(len(CLASSES)), tmp_path / "yolo.onnx", ["output0"])
    profile = _profile(tmp_path / "yolo.toml", 'type = "yolo"\noutput = "output0"\n')
    compared = harness_cli("compare", str(model), "--profile", str(profile), "--backends", "ort,openvino",
                           "--limit", "12", "--json", "-")
    assert compared.returncode == 0, compared.stderr[-2000:]
    report = json.loads(compared.stdout)
    assert report["model"]["task"] == "detect" and report["dataset"]["samples"] == 12
    for row in report["results"]:
        assert row["status"] == "ok" and row["outputs"]["max_abs"] < 1e-3, row
    swept = harness_cli("sysnoise", str(model), "--profile", str(profile), "--axes", "nms,box_decode", "--limit", "12",
                        "--bootstrap-rounds", "0", "--json", "-")
    assert swept.returncode == 0, swept.stderr[-2000:]
    axes = {axis["axis"]: [v["name"] for v in axis["variants"]] for axis in json.loads(swept.stdout)["axes"]}
    assert "torchvision-agnostic" in axes["nms"] and "legacy-plus-one" in axes["box_decode"], axes


class _TinyRetina(torch.nn.Module):
    """torchvision's own RetinaNetHead (32 channels, 3 anchors per place) on two strided levels (8, 16): the
    raw outputs a RetinaNet export ends in when its anchor decoding and NMS are left to the harness."""

    def __init__(self):
        from torchvision.models.detection.retinanet import RetinaNetHead

        super().__init__()
        self.stem = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(c, 32, 3, 2, 1), torch.nn.ReLU())
                                          for c in (3, 32, 32)])
        self.down = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, 2, 1), torch.nn.ReLU())
        self.head = RetinaNetHead(32, 3, len(CLASSES))
        torch.nn.init.zeros_(self.head.classification_head.cls_logits.bias)  # scores around 0.5, not 0.01

    def forward(self, x):
        level8 = self.stem(x)
        outputs = self.head([level8, self.down(level8)])
        return outputs["cls_logits"], outputs["bbox_regression"]


ANCHORS_HEAD = ('type = "anchors"\ncls_logits = "cls_logits"\nbbox_regression = "bbox_regression"\n'
                'strides = [8, 16]\nsizes = [[16], [32]]\n')  # 3 aspect ratios: 3 anchors per place


def test_an_anchors_onnx_file_through_compare_and_sysnoise(tmp_path, harness_cli):
    torch.manual_seed(0)
    model = _export(_TinyRetina(), tmp_path / "retina.onnx", ["cls_logits", "bbox_regression"])
    profile = _profile(tmp_path / "retina.toml", ANCHORS_HEAD)
    compared = harness_cli("compare", str(model), "--profile", str(profile), "--backends", "ort,openvino",
                           "--limit", "8", "--json", "-")
    assert compared.returncode == 0, compared.stderr[-2000:]
    report = json.loads(compared.stdout)
    assert report["model"]["task"] == "detect" and report["reference"]["metric"]["ap50"] > 0, report["reference"]
    for row in report["results"]:
        assert row["status"] == "ok" and row["outputs"]["max_abs"] < 1e-3, row
    swept = harness_cli("sysnoise", str(model), "--profile", str(profile), "--axes", "nms,box_decode", "--limit", "8",
                        "--bootstrap-rounds", "0", "--json", "-")
    assert swept.returncode == 0, swept.stderr[-2000:]
    axes = {axis["axis"]: {v["name"]: v["status"] for v in axis["variants"]}
            for axis in json.loads(swept.stdout)["axes"]}
    assert axes["nms"]["torchvision-agnostic"] == "ok" and axes["box_decode"]["fp16"] == "ok", axes
    wrong = _profile(tmp_path / "wrong.toml", ANCHORS_HEAD.replace("strides = [8, 16]", "strides = [8, 32]"))
    result = harness_cli("compare", str(model), "--profile", str(wrong), "--backends", "ort", "--limit", "2")
    assert result.returncode == 2 and "the declared levels make 816 anchors at 128 px" in result.stderr, result.stderr


def test_a_users_own_postprocessing_named_on_the_command_line(tmp_path, harness_cli):
    """--postprocess package.module:function replaces the harness's decoding: a function doing what
    ultralytics does scores exactly as the built-in yolo layout set up as ultralytics; the harness's NMS and
    box-decoding axes then do not apply; a function returning the wrong count is one line, exit 2; a profile
    file cannot name such a function."""
    torch.manual_seed(0)
    model = _export(TinyYolo(len(CLASSES)), tmp_path / "yolo.onnx", ["output0"])
    as_ultralytics = 'nms = "ultralytics-offset"\n[head]\ntype = "yolo"\noutput = "output0"\n'
    builtin = _profile(tmp_path / "builtin.toml", "").read_text().replace("[head]\n", as_ultralytics)
    (tmp_path / "builtin.toml").write_text(builtin)
    (tmp_path / "user.toml").write_text(builtin.split("nms =")[0])
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [PLUGINS, os.environ.get("PYTHONPATH")]))}
    reports = {}
    for name, options in (("builtin", ()), ("user", ("--postprocess", "harness_test_postprocess:ultralytics_style"))):
        result = harness_cli("compare", str(model), "--profile", str(tmp_path / f"{name}.toml"), "--backends", "ort",
                             "--limit", "12", "--json", "-", *options, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        reports[name] = json.loads(result.stdout)
    assert reports["user"]["model"]["task"] == "detect"
    assert reports["user"]["reference"]["metric"] == reports["builtin"]["reference"]["metric"]
    assert reports["builtin"]["reference"]["metric"]["ap50"] > 0, reports["builtin"]["reference"]
    listed = harness_cli("sysnoise", str(model), "--profile", str(tmp_path / "user.toml"), "--postprocess",
                         "harness_test_postprocess:ultralytics_style", "--list-axes", env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for axis in ("nms", "box_decode"):  # no variant: the user's function does its own, as the listing says
        assert listed.stdout.split(f"{axis} (post)")[1].splitlines()[1].strip() == (
            f"unavailable here: does not apply to {model.stem}: its --postprocess function (head 'user') does this "
            "step, and what it makes is compared as it is"), listed.stdout
    broken = harness_cli("compare", str(model), "--profile", str(tmp_path / "user.toml"), "--postprocess",
                         "harness_test_postprocess:one_short", "--backends", "ort", "--limit", "4", env=env)
    assert broken.returncode == 2 and broken.stderr.strip().count("\n") == 0, broken.stderr[-2000:]
    assert "--postprocess harness_test_postprocess:one_short: returned list of 3; expected one" in broken.stderr
    (tmp_path / "file.toml").write_text(builtin.split("nms =")[0] + '[head]\ntype = "user"\nfunction = "os:system"\n')
    refused = harness_cli("compare", str(model), "--profile", str(tmp_path / "file.toml"), "--backends", "ort")
    assert refused.returncode == 2 and "name your post-processing on the command line" in refused.stderr


def test_a_factory_declares_task_head_and_profile_through_its_model_spec(harness_cli):
    """MODEL as package.module:factory returning a ModelSpec (the README's example): a torch detector with
    its yolo head and letterbox profile, compared against its own export on two backends."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [PLUGINS, os.environ.get("PYTHONPATH")]))}
    result = harness_cli("compare", "harness_test_yolo:tiny_yolo_spec", "--backends", "ort,openvino", "--limit",
                         "8", "--json", "-", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["model"]["task"] == "detect" and report["reference"]["backend"] == "torch"
    assert report["reference"]["profile"]["geometry"] == "letterbox" and report["reference"]["metric"]["ap50"] > 0
    for row in report["results"]:
        assert row["status"] == "ok" and row["outputs"]["max_abs"] < 1e-3, row


class _Postprocessed(torch.nn.Module):
    """A detector whose graph ends in its own selection: the 20 best anchors' boxes (xyxy), scores and labels."""

    def __init__(self):
        super().__init__()
        self.yolo = TinyYolo(len(CLASSES))

    def forward(self, x):
        rows = self.yolo(x).transpose(1, 2)                        # [N, A, 4 + C]
        scores, labels = rows[..., 4:].max(-1)
        top = scores.topk(20, dim=1).indices
        picked = torch.gather(rows[..., :4], 1, top[..., None].expand(-1, -1, 4))
        boxes = torch.cat([picked[..., :2] - picked[..., 2:] / 2, picked[..., :2] + picked[..., 2:] / 2], -1)
        return boxes, torch.gather(scores, 1, top), torch.gather(labels, 1, top)


def test_a_postprocessed_graph_is_taken_as_it_is_and_the_nms_axes_do_not_apply(tmp_path, harness_cli):
    model = _export(_Postprocessed(), tmp_path / "nms-inside.onnx", ["boxes", "scores", "labels"])
    profile = _profile(tmp_path / "p.toml", 'type = "postprocessed"\nboxes = "boxes"\nscores = "scores"\n'
                                            'labels = "labels"\n')
    listed = harness_cli("sysnoise", str(model), "--profile", str(profile), "--list-axes")
    assert listed.returncode == 0, listed.stderr[-2000:]
    nms_line = listed.stdout.split("nms (post)")[1].splitlines()[1]
    assert nms_line.strip() == (f"unavailable here: does not apply to {model.stem}: its graph (head 'postprocessed') "
                                "does this step, and what it makes is compared as it is"), listed.stdout
    compared = harness_cli("compare", str(model), "--profile", str(profile), "--backends", "ort", "--limit", "8",
                           "--json", "-")
    assert compared.returncode == 0, compared.stderr[-2000:]
    row = json.loads(compared.stdout)["results"][0]
    assert row["status"] == "ok" and row["outputs"]["max_abs"] < 1e-3 and row["outputs"]["top1_agreement"] == 1.0, row


@pytest.mark.parametrize("head,fragment", [
    ('type = "retina"\n', "detection head 'retina': declare one of fcos, yolo, anchors, postprocessed"),
    ('type = "yolo"\n', "a yolo head needs output"),
    ('type = "yolo"\noutput = "output0"\nlayout = "rows"\n', "head layout = 'rows': expected channels-first, "
                                                             "anchors-first"),
    ('type = "yolo"\noutput = "output0"\nstrides = [8]\n', "head key 'strides' is not one of a yolo head's"),
    ('type = "yolo"\noutput = "out"\n', "head names 'out', not outputs of the model (its outputs: output0)"),
])
def test_a_bad_head_table_is_one_line(tmp_path, harness_cli, head, fragment):
    model = _export(TinyYolo(len(CLASSES)), tmp_path / "yolo.onnx", ["output0"])
    result = harness_cli("compare", str(model), "--profile", str(_profile(tmp_path / "p.toml", head)),
                         "--backends", "ort", "--limit", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]


def test_a_detect_onnx_without_a_head_says_which_layouts_there_are(tmp_path, harness_cli):
    model = _export(TinyYolo(len(CLASSES)), tmp_path / "yolo.onnx", ["output0"])
    result = harness_cli("compare", str(model), "--task", "detect", "--backends", "ort", "--limit", "2",
                         env={"PYTHONPATH": PLUGINS + os.pathsep + os.environ.get("PYTHONPATH", "")})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "detection head None: declare one of fcos, yolo" in lines[0], \
        result.stderr[-2000:]
