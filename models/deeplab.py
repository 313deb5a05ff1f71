"""A small DeepLabV3 for 64x64 inputs, built from torchvision's own ASPP: a ResNet-style backbone with a
padded 3x3 stride-2 max-pool (so pooling ceil mode changes the feature maps: 33x33 instead of 32x32), a
dilated last stage (output stride 4), ASPP with an image-pooling branch, and the logits upsampled in the
graph to the input size, bilinear without align_corners, as torchvision's DeepLabV3 does."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from harness.models.resnet import BasicBlock

ATROUS_RATES = (2, 4, 6)


class DilatedBlock(BasicBlock):
    """A basic block whose 3x3 convolutions are dilated (DeepLab's replacement for a stride)."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__(cin, cout, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, dilation, dilation=dilation, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation, dilation=dilation, bias=False)


class TinyDeepLabV3(nn.Module):
    def __init__(self, num_classes: int = 11, widths=(16, 24, 48, 64), aspp_channels: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(widths[0], widths[1], 1)
        self.layer2 = BasicBlock(widths[1], widths[2], 2)
        self.layer3 = DilatedBlock(widths[2], widths[3], 2)
        self.aspp = ASPP(widths[3], list(ATROUS_RATES), aspp_channels)
        self.head = nn.Sequential(nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(aspp_channels), nn.ReLU(inplace=True),
                                  nn.Conv2d(aspp_channels, num_classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        features = self.layer3(self.layer2(self.layer1(self.stem(x))))
        logits = self.head(self.aspp(features))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
