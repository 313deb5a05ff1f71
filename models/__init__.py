"""The model zoo: small versions of the SysNoise paper's families, trained on the embedded benchmark.

Each entry is a function returning a ModelSpec (the timm `@register_model` pattern): the architecture,
the shipped weights and the training profile they were trained through travel together. Recipes that
reproduce the weights are in harness/models/train.py (`harness zoo train NAME`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.data.synthetic import CLASSES, FLIP_PAIRS, KEYPOINTS as JOINTS
from harness.data.text import SENTIMENT_CLASSES
from harness.profile import Profile
from harness.tasks import CAUSAL_LM, CLASSIFY, DETECT, INSTANCES, KEYPOINTS, SEGMENT, TEXT_CLASSIFY

WEIGHTS_DIR = Path(__file__).parent / "weights"
ZOO: dict[str, Callable] = {}
DEFAULT_CLASSIFIER = "resnet_tiny"
DEFAULT_DETECTOR = "fcos_tiny"
SEGMENTATION_CLASSES = ("background", *CLASSES)  # label-map value k is class k

# The training pipeline of every zoo model: JPEG -> Pillow decode -> Pillow bilinear from the larger
# stored image -> RGB. Deviations from it are what SysNoise measures.
CLASSIFIER_PROFILE = Profile(decoder="pil", resize="pil-bilinear", color="rgb", geometry="shorter-crop",
                             input_size=64, resize_size=72, labels=CLASSES)
DETECTOR_PROFILE = Profile(decoder="pil", resize="pil-bilinear", color="rgb", geometry="letterbox",
                           input_size=128, labels=CLASSES)
# letterbox, as mmsegmentation's keep-ratio Resize evaluates: the stored images are square, so a plain resize
SEGMENTER_PROFILE = Profile(decoder="pil", resize="pil-bilinear", color="rgb", geometry="letterbox",
                            input_size=64, labels=SEGMENTATION_CLASSES)
# RTMPose's top-down pipeline: the box padded 1.25x, made square, cv2.warpAffine (bilinear) to the input
KEYPOINT_PROFILE = Profile(decoder="pil", resize="cv2-linear", color="rgb", geometry="topdown", input_size=64,
                           crop_convention="legacy", box_padding=1.25, labels=JOINTS)


def register_model(fn: Callable) -> Callable:
    if fn.__name__ in ZOO:
        raise ValueError(f"zoo model {fn.__name__!r} registered twice")
    ZOO[fn.__name__] = fn
    return fn


def _spec(name: str, task: str, build: Callable, profile: Profile, summary: str, outputs=("logits",), **extra):
    from harness.model import ModelSpec

    return ModelSpec(name=name, task=task, build=build, weights=WEIGHTS_DIR / f"{name}.pt",
                     profile=profile, labels=profile.labels, output_names=outputs, source=f"zoo:{name}",
                     summary=summary, **extra)


@register_model
def resnet_tiny():
    from harness.models.resnet import TinyResNet

    return _spec("resnet_tiny", CLASSIFY, lambda: TinyResNet(len(CLASSES)), CLASSIFIER_PROFILE,
                 "ResNet-style, 4 basic blocks 16-128 wide, stride-2 max-pool, 64x64 input",
                 stated={"top1": 0.931, "top5": 0.993})


@register_model
def mobilenetv2_tiny():
    from harness.models.mobilenet import TinyMobileNetV2

    return _spec("mobilenetv2_tiny", CLASSIFY, lambda: TinyMobileNetV2(len(CLASSES)), CLASSIFIER_PROFILE,
                 "MobileNetV2-style inverted residuals, ReLU6, 64x64 input",
                 stated={"top1": 0.924, "top5": 0.992})


@register_model
def fcos_tiny():
    from harness.models.fcos import HEAD, OUTPUT_NAMES, TinyFCOS

    return _spec("fcos_tiny", DETECT, lambda: TinyFCOS(len(CLASSES)), DETECTOR_PROFILE,
                 "FCOS-style detector, 3-level FPN with nearest upsampling, raw head outputs, 128x128 input",
                 stated={"map": 0.4383, "ap50": 0.6497, "ap75": 0.5125},
                 outputs=OUTPUT_NAMES, head=HEAD)


@register_model
def deeplabv3_tiny():
    from harness.models.deeplab import TinyDeepLabV3

    return _spec("deeplabv3_tiny", SEGMENT, lambda: TinyDeepLabV3(len(SEGMENTATION_CLASSES)), SEGMENTER_PROFILE,
                 "DeepLabV3-style segmenter: ResNet-style backbone with a stride-2 max-pool, dilated last stage "
                 "(output stride 4), torchvision ASPP, logits upsampled bilinear in the graph, 64x64 input",
                 stated={"miou": 0.6495, "pixel_acc": 0.9577, "mean_acc": 0.7572})


@register_model
def simcc_tiny():
    from harness.models.simcc import SPLIT_RATIO, TinySimCC

    return _spec("simcc_tiny", KEYPOINTS, lambda: TinySimCC(len(JOINTS)), KEYPOINT_PROFILE,
                 "SimCC keypoint model (RTMPose-style): CSP convolutions, a 5x5 conv to one map per keypoint, an MLP "
                 "and x/y bin classifiers (2 bins a pixel), 64x64 top-down crops",
                 outputs=("simcc_x", "simcc_y"), stated={"ap": 0.6876, "ap50": 0.9507, "ap75": 0.6936},
                 head={"type": "simcc", "split_ratio": SPLIT_RATIO, "x": "simcc_x", "y": "simcc_y",
                       "flip_pairs": [list(pair) for pair in FLIP_PAIRS]})


@register_model
def yolact_tiny():
    from harness.models.yolact import HEAD, OUTPUT_NAMES, TinyYOLACT

    return _spec("yolact_tiny", INSTANCES, lambda: TinyYOLACT(len(CLASSES)), DETECTOR_PROFILE,
                 "YOLACT-style instance segmenter: fcos_tiny (frozen) with 16 prototype masks at stride 4 (P3 upsampled "
                 "bilinear) and per-point mask coefficients, raw maps out, 128x128 input",
                 stated={"mask_map": 0.3149, "mask_ap50": 0.5621, "mask_ap75": 0.2998},
                 outputs=OUTPUT_NAMES, head=HEAD)


# The text classifier's training system: its own WordPiece folder through transformers' fast tokeniser, BERT's
# lower-casing and accent stripping, right truncation at 64 tokens, right padding to the batch's longest
TEXT_PROFILE = Profile(labels=SENTIMENT_CLASSES, max_length=64)


@register_model
def bert_tiny():
    from harness.models.text import TEXT_INPUTS, bert_classifier

    folder = WEIGHTS_DIR / "bert_tiny"
    return _spec("bert_tiny", TEXT_CLASSIFY, lambda: bert_classifier(folder, len(SENTIMENT_CLASSES)), TEXT_PROFILE,
                 "BERT (transformers BertForSequenceClassification): 2 post-LayerNorm encoder layers 64 wide, 2 heads, "
                 "WordPiece vocabulary of its own, learned absolute positions, 64 tokens",
                 text_inputs=TEXT_INPUTS, tokenizer=folder, stated={"top1": 0.974})


# The causal LM's training system: its own byte-level BPE folder through transformers' tokeniser, right
# truncation at 64 tokens, right padding to the batch's longest
LM_PROFILE = Profile(max_length=64)


@register_model
def gpt_tiny():
    from harness.models.text import gpt_lm

    folder = WEIGHTS_DIR / "gpt_tiny"
    return _spec("gpt_tiny", CAUSAL_LM, lambda: gpt_lm(folder), LM_PROFILE,
                 "GPT-2 (transformers GPT2LMHeadModel): 2 pre-LayerNorm decoder layers 64 wide, 2 heads, byte-level "
                 "BPE vocabulary of its own, learned absolute positions 0..L-1 whatever the mask, 64 tokens",
                 text_inputs=("input_ids", "attention_mask"), tokenizer=folder,
                 stated={"next_token_top1": 0.6395, "perplexity": 3.0438})
