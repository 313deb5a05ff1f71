"""A small YOLACT-style instance segmenter: fcos_tiny's detector with a prototype-mask branch.

YOLACT (and YOLOv5/v8-seg, its most deployed descendant) segments instances without a per-box mask head:
a prototype branch turns the finest FPN level into K prototype masks over the whole image, the detection
head predicts K coefficients per point, and an instance's mask is sigmoid(coefficients . prototypes),
cropped to its box and pasted onto the image. The graph ends at the raw maps; decoding the boxes, NMS,
combining coefficients with prototypes, cropping, pasting and thresholding are harness post-processing
(harness/postprocess.py, harness/masks.py), so each is a deployment choice that can be varied.

The detector is fcos_tiny exactly (same modules and names, its trained weights as the start); the recipe
trains the prototype branch and the coefficient conv on top of it with the detector frozen, so boxes and
scores are fcos_tiny's. The prototype branch upsamples P3 (stride 8) 2x bilinear (YOLACT's
`F.interpolate(scale_factor=2, mode="bilinear")`), so prototypes are at stride 4: 32x32 at 128x128 input.

Outputs: fcos_tiny's nine maps, then mask_coeff_s{s} float32[N, K, H, W] per level (raw: YOLACT applies
tanh in the graph; here it is in the graph too), then prototypes float32[N, K, 32, 32] (ReLU'd, as YOLACT's).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.fcos import HEAD as DETECTOR_HEAD, OUTPUT_NAMES as DETECTOR_OUTPUTS, STRIDES, TinyFCOS

PROTOTYPES = 16  # YOLACT uses 32 at 550 px; 16 at 128 px
PROTO_STRIDE = 4
OUTPUT_NAMES = (*DETECTOR_OUTPUTS, *(f"mask_coeff_s{s}" for s in STRIDES), "prototypes")
HEAD = {**DETECTOR_HEAD, "levels": [{**level, "mask_coeff": f"mask_coeff_s{level['stride']}"}
                                    for level in DETECTOR_HEAD["levels"]],
        "prototypes": "prototypes", "prototype_stride": PROTO_STRIDE}


class TinyYOLACT(TinyFCOS):
    def __init__(self, num_classes: int = 10, fpn_channels: int = 64, prototypes: int = PROTOTYPES):
        super().__init__(num_classes, fpn_channels)
        self.coeff_out = nn.Conv2d(fpn_channels, prototypes, 3, 1, 1)
        self.proto_in = nn.Sequential(nn.Conv2d(fpn_channels, fpn_channels, 3, 1, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(fpn_channels, fpn_channels, 3, 1, 1), nn.ReLU(inplace=True))
        self.proto_out = nn.Sequential(nn.Conv2d(fpn_channels, fpn_channels, 3, 1, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(fpn_channels, prototypes, 1), nn.ReLU(inplace=True))

    # the mask branch: what the recipe trains on top of the frozen detector
    MASK_MODULES = ("coeff_out", "proto_in", "proto_out")

    def forward(self, x):
        features = self.pyramid(x)
        outputs, coefficients = [], []
        for level, feature in enumerate(features):
            h = self.head(feature)
            outputs += [self.cls_out(h), self.reg_out(h) * self.level_scale[level], self.ctr_out(h)]
            coefficients.append(torch.tanh(self.coeff_out(h)))
        prototypes = self.proto_in(features[0])
        prototypes = self.proto_out(F.interpolate(prototypes, scale_factor=2.0, mode="bilinear", align_corners=False))
        return (*outputs, *coefficients, prototypes)

    def train(self, mode: bool = True):
        """Only the mask branch trains: the detector's batch norms keep fcos_tiny's statistics."""
        super().train(False)
        for name in self.MASK_MODULES:
            getattr(self, name).train(mode)
        self.training = mode
        return self
