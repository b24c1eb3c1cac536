"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet-50 (output stride 8).

Pyramid pooling module with bins 1, 2, 3, 6 (each 2048 -> 512 channels at width 1), a 3x3
bottleneck convolution on the concatenation (4096 -> 512), dropout 0.1 and the 1x1 classifier
``Wo``; an auxiliary head on stage 3 (3x3 1024 -> 256, 1x1 -> Nc) supervises training as in the
paper. At ``width=1`` and 4 classes: 48.94 M parameters (Table 1: 48.8 M).

Candidate layers: ``stem``, ``layer1`` ... ``layer4``, ``ppm`` (the pyramid concatenation) and
``bottleneck`` (the penultimate tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from msn_cli.models.base import SegmentationBackbone
from msn_cli.models.layers import (
    ConvBNReLU,
    ConvReLU,
    FeatureTaps,
    Grid,
    init_weights,
    scaled,
    stage_grids,
    trace,
    upsample,
)
from msn_cli.models.resnet import resnet

__all__ = ["PSPNet", "PyramidPooling"]


class PyramidPooling(nn.Module):
    """Average-pool to each bin size, 1x1 conv, upsample back, concatenate with the input.

    The 1x1-bin branch has no BatchNorm (a pooled 1x1 map breaks BatchNorm for a training
    batch of one); its convolution carries a bias instead.
    """

    def __init__(self, in_channels: int, branch_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                ConvReLU(in_channels, branch_channels)
                if b == 1
                else ConvBNReLU(in_channels, branch_channels, 1),
            )
            for b in bins
        )
        self.out_channels = in_channels + branch_channels * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [upsample(stage(x), size) for stage in self.stages], dim=1)


class PSPNet(SegmentationBackbone):
    """PSPNet, dilated ResNet-50 backbone (see module docstring).

    Example:
        >>> import torch
        >>> net = PSPNet(num_classes=4, width=0.125).eval()
        >>> tuple(net(torch.zeros(1, 3, 64, 64)).logits.shape)
        (1, 4, 64, 64)
    """

    candidate_layers = ("stem", "layer1", "layer2", "layer3", "layer4", "ppm", "bottleneck")
    default_gap_layers = ("layer3",)

    def __init__(
        self, num_classes: int, width: float = 1.0, in_channels: int = 3, depth: int = 50
    ) -> None:
        super().__init__(num_classes, width, in_channels)
        self.encoder = resnet(depth, width, output_stride=8, in_channels=in_channels)
        ch = self.encoder.channels
        self.ppm = PyramidPooling(ch[4], scaled(512, width), (1, 2, 3, 6))
        self.penultimate_channels = scaled(512, width)
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, self.penultimate_channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(self.penultimate_channels, num_classes, 1)
        self.aux_head = nn.Sequential(
            ConvBNReLU(ch[3], scaled(256, width), 3),
            nn.Dropout2d(0.1),
            nn.Conv2d(scaled(256, width), num_classes, 1),
        )
        self.layer_channels = {
            "stem": ch[0],
            "layer1": ch[1],
            "layer2": ch[2],
            "layer3": ch[3],
            "layer4": ch[4],
            "ppm": self.ppm.out_channels,
            "bottleneck": self.penultimate_channels,
        }
        init_weights(self)

    def feature_grids(self) -> dict[str, Grid]:
        """Where each candidate layer's pixels sit on the input (:class:`Grid`): the dilated
        ResNet-50's; the pyramid is resized onto stage 4's grid, which it keeps."""
        grids = stage_grids(self.encoder, ("stem", "layer1", "layer2", "layer3", "layer4"))
        grids["ppm"] = grids["layer4"]
        grids["bottleneck"] = trace(self.bottleneck, grids["ppm"])
        return grids

    def forward_features(self, x: Tensor, taps: FeatureTaps) -> tuple[Tensor, tuple[Tensor, ...]]:
        e = self.encoder
        x = taps("stem", e.stem(x))
        x = taps("layer1", e.layer1(x))
        x = taps("layer2", e.layer2(x))
        c3 = taps("layer3", e.layer3(x))
        x = taps("layer4", e.layer4(c3))
        x = taps("ppm", self.ppm(x))
        x = taps("bottleneck", self.bottleneck(x))
        aux = (self.aux_head(c3),) if self.training else ()
        return self.dropout(x), aux
