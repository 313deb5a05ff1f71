"""A small SimCC keypoint model for 64x64 top-down crops (the RTMPose line: a CSP-style convolutional
backbone, then each keypoint's x and y classified into input_size x SPLIT_RATIO bins). Its head follows
RTMPose's: a large-kernel conv to one map per keypoint, flattened, an MLP, and one linear classifier per
axis. Decoding the bins to coordinates (argmax, sub-bin refinement) is harness post-processing."""
from __future__ import annotations

import torch
from torch import nn

SPLIT_RATIO = 2.0  # bins per input pixel (RTMPose's simcc_split_ratio)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class CSPBlock(nn.Module):
    """Cross-stage partial block (CSPNeXt's): half the channels through two convolutions, concatenated with
    the other half's shortcut and mixed by a 1x1 convolution."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.down = conv_bn(cin, cout, 3, stride)
        half = cout // 2
        self.main = nn.Sequential(conv_bn(cout, half, 1), conv_bn(half, half, 3), conv_bn(half, half, 3))
        self.short = conv_bn(cout, half, 1)
        self.mix = conv_bn(2 * half, cout, 1)

    def forward(self, x):
        x = self.down(x)
        return self.mix(torch.cat([self.main(x), self.short(x)], dim=1))


class TinySimCC(nn.Module):
    def __init__(self, num_keypoints: int = 11, input_size: int = 64, widths=(16, 32, 64, 96), hidden: int = 128):
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3, 2)
        self.stages = nn.Sequential(*(CSPBlock(a, b, 2 if k < 2 else 1) for k, (a, b) in
                                      enumerate(zip(widths[:-1], widths[1:]))))
        cells = (input_size // 8) ** 2
        self.final = nn.Conv2d(widths[-1], num_keypoints, 5, padding=2)
        self.mlp = nn.Sequential(nn.Linear(cells, hidden), nn.SiLU())
        bins = int(input_size * SPLIT_RATIO)
        self.cls_x, self.cls_y = nn.Linear(hidden, bins), nn.Linear(hidden, bins)

    def forward(self, x):
        features = self.final(self.stages(self.stem(x))).flatten(2)   # N x K x cells
        hidden = self.mlp(features)
        return self.cls_x(hidden), self.cls_y(hidden)
