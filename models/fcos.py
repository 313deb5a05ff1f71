"""A small FCOS-style detector for 128x128 inputs.

Backbone with a padded stride-2 max-pool, a 3-level FPN whose top-down path upsamples with nearest
neighbour (so the upsample mode is a real deployment choice), and a head shared across levels. The
graph ends at the raw head outputs; points, box decoding and NMS are the harness's post-processing
(harness/postprocess.py), so they can be varied and matched across backends.

Outputs, per level (stride s in STRIDES, a feature map of H x W points, 128 / s each way as trained):
  cls_logits_s{s} float32[N, C, H, W], box_reg_s{s} float32[N, 4, H, W] (log of l, t, r, b distances / s),
  centerness_s{s} float32[N, 1, H, W] (logit). Maps stay 2-D so post-processing places points from the
map's own size: a deployment that changes the backbone's geometry (pooling ceil mode: 16 -> 17 points a
side) still decodes. The head declares `points: stride`, the convention of its family (FCOS,
mmdetection's point generator): point (i, j) at ((j + 0.5) * s, (i + 0.5) * s). Other placements a
runtime may compute (spread evenly over the input, as SSD-style prior generators do; offset 0, as YOLOX's
grid) are the `points` noise axis (harness.postprocess.fcos_points).

The top-down path resizes to the lateral's size (as torchvision's FeaturePyramidNetwork does) rather
than by a fixed factor of 2, so the same network runs when a level comes out odd-sized.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.resnet import BasicBlock

STRIDES = (8, 16, 32)
OUTPUT_KINDS = ("cls_logits", "box_reg", "centerness")
OUTPUT_NAMES = tuple(f"{kind}_s{stride}" for stride in STRIDES for kind in OUTPUT_KINDS)
HEAD = {"type": "fcos", "points": "stride", "levels": [{"stride": stride, **{kind: f"{kind}_s{stride}" for kind in OUTPUT_KINDS}}
                                   for stride in STRIDES]}


class TinyFCOS(nn.Module):
    def __init__(self, num_classes: int = 10, fpn_channels: int = 64, widths=(32, 64, 96, 128)):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(24, widths[0], 1)          # stride 4
        self.layer2 = BasicBlock(widths[0], widths[1], 2)   # stride 8  -> P3
        self.layer3 = BasicBlock(widths[1], widths[2], 2)   # stride 16 -> P4
        self.layer4 = BasicBlock(widths[2], widths[3], 2)   # stride 32 -> P5
        self.lateral = nn.ModuleList(nn.Conv2d(w, fpn_channels, 1) for w in widths[1:])
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, 1, 1) for _ in widths[1:])
        self.head = nn.Sequential(
            nn.Conv2d(fpn_channels, fpn_channels, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(fpn_channels, fpn_channels, 3, 1, 1), nn.ReLU(inplace=True),
        )
        self.cls_out = nn.Conv2d(fpn_channels, num_classes, 3, 1, 1)
        self.reg_out = nn.Conv2d(fpn_channels, 4, 3, 1, 1)
        self.ctr_out = nn.Conv2d(fpn_channels, 1, 3, 1, 1)
        self.level_scale = nn.Parameter(torch.ones(len(STRIDES)))
        nn.init.constant_(self.cls_out.bias, -4.6)  # prior 0.01, as in RetinaNet/FCOS

    def pyramid(self, x) -> tuple:
        """The FPN's levels at strides 8, 16, 32."""
        c2 = self.layer1(self.maxpool(self.stem(x)))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        p5 = self.lateral[2](c5)
        lateral4 = self.lateral[1](c4)
        p4 = lateral4 + F.interpolate(p5, size=lateral4.shape[-2:], mode="nearest")
        lateral3 = self.lateral[0](c3)
        p3 = lateral3 + F.interpolate(p4, size=lateral3.shape[-2:], mode="nearest")
        return self.smooth[0](p3), self.smooth[1](p4), self.smooth[2](p5)

    def forward(self, x):
        outputs = []
        for level, feature in enumerate(self.pyramid(x)):
            h = self.head(feature)
            outputs += [self.cls_out(h), self.reg_out(h) * self.level_scale[level], self.ctr_out(h)]
        return tuple(outputs)


def flatten_levels(outputs):
    """The per-level maps -> (cls_logits [N, P, C], box_reg [N, P, 4], centerness [N, P]), level-major and
    row-major inside a level: the order of harness.postprocess.fcos_points."""
    kinds = len(OUTPUT_KINDS)
    cls, reg, ctr = (torch.cat([o.flatten(2) for o in outputs[k::kinds]], dim=2) for k in range(kinds))
    return cls.transpose(1, 2), reg.transpose(1, 2), ctr[:, 0, :]
