"""A YOLO-style detector as ultralytics exports one (v8 and later): three strided levels, a 1x1 head per
level, the box decoding inside the graph, one output [N, 4 + C, A] of xywh boxes in input pixels and class
probabilities. Small and random-init: it stands for the layout, not for a trained model."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

STRIDES = (8, 16, 32)


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, 2, 1), nn.BatchNorm2d(outputs), nn.SiLU())


class TinyYolo(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(_block(3, 16), _block(16, 32), _block(32, 32))   # stride 8
        self.down = nn.ModuleList([_block(32, 48), _block(48, 64)])                # strides 16, 32
        self.heads = nn.ModuleList([nn.Conv2d(ch, 4 + classes, 1) for ch in (32, 48, 64)])
        for head in self.heads:  # the box part of ultralytics' Detect.bias_init: boxes ~2.6 strides wide
            head.bias.data[:4] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for block in self.down:
            features.append(block(features[-1]))
        levels = []
        for feature, head, stride in zip(features, self.heads, STRIDES):
            raw = head(feature)
            height, width = raw.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            centre = (torch.stack([xs, ys]).to(raw.dtype) + 0.5) * stride          # [2, H, W]
            distance = F.softplus(raw[:, :4]) * stride                             # l, t, r, b
            top_left, bottom_right = centre - distance[:, :2], centre + distance[:, 2:]
            xywh = torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], 1)
            levels.append(torch.cat([xywh, raw[:, 4:].sigmoid()], 1).flatten(2))
        return torch.cat(levels, 2)


def tiny_yolo_spec():
    """`harness compare harness_test_yolo:tiny_yolo_spec`: a factory returning a ModelSpec that declares
    what an nn.Module cannot say itself: the task, the head layout, the training profile and the labels."""
    from harness.model import ModelSpec
    from harness.profile import Profile

    def build():  # the same weights on every call: the reference and the export build it separately
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return TinyYolo(10)

    return ModelSpec(name="tiny_yolo", task="detect", build=build, random_seed=0,
                     profile=Profile(input_size=128, geometry="letterbox", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                     nms="ultralytics-offset", box_decode="no-clip", score_threshold=0.25),
                     labels=("circle", "square", "triangle", "star", "ring", "cross", "hexagon", "diamond",
                             "crescent", "arrow"),
                     input_name="images", output_names=("output0",), head={"type": "yolo", "output": "output0"})
