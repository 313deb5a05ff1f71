"""A small MobileNetV2 for 64x64 inputs: a stride-2 stem, inverted residuals with depthwise convs, ReLU6."""
from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn(cin, hidden, 1, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, cout, 1, 1, act=False),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


class TinyMobileNetV2(nn.Module):
    # (expansion, channels, repeats, first stride), as in torchvision's inverted_residual_setting
    SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2), (4, 96, 1, 1))

    def __init__(self, num_classes: int = 10, last_channels: int = 256):
        super().__init__()
        layers, cin = [conv_bn(3, 16, 3, 2)], 16
        for expand, cout, repeats, stride in self.SETTING:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(conv_bn(cin, last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(last_channels, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
