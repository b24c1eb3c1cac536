"""DeepLab-V3+ (Chen et al., ECCV 2018) on a ResNet-50 with output stride 16.

ASPP (1x1 and three 3x3 convolutions at rates 6, 12, 18, plus image pooling; 256 channels at
width 1) projected to 256 channels, upsampled x4 and concatenated with the reduced (48
channels) stage-1 features, two 3x3 ConvBNReLU, then the 1x1 classifier ``Wo``. At ``width=1``
and 4 classes: 40.35 M parameters (Table 1: 40.9 M).

Candidate layers: ``stem``, ``layer1`` ... ``layer4``, ``aspp`` and ``decoder`` (penultimate).
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

__all__ = ["ASPP", "DeepLabV3Plus"]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with an image-pooling branch and a 1x1 projection.

    The image-pooling branch has no BatchNorm (batch-of-one safe), its conv has a bias.
    """

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvReLU(in_channels, channels))
        self.project = nn.Sequential(
            ConvBNReLU(channels * (len(rates) + 2), channels, 1), nn.Dropout2d(0.1)
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(upsample(self.image_pool(x), x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(SegmentationBackbone):
    """DeepLab-V3+, ResNet-50 backbone, output stride 16 (see module docstring).

    Example:
        >>> import torch
        >>> net = DeepLabV3Plus(num_classes=4, width=0.125).eval()
        >>> tuple(net(torch.zeros(1, 3, 64, 64)).logits.shape)
        (1, 4, 64, 64)
    """

    candidate_layers = ("stem", "layer1", "layer2", "layer3", "layer4", "aspp", "decoder")
    default_gap_layers = ("layer3",)

    def __init__(
        self, num_classes: int, width: float = 1.0, in_channels: int = 3, depth: int = 50
    ) -> None:
        super().__init__(num_classes, width, in_channels)
        self.encoder = resnet(depth, width, output_stride=16, in_channels=in_channels)
        ch = self.encoder.channels
        c = scaled(256, width)
        self.aspp = ASPP(ch[4], c, (6, 12, 18))
        low = scaled(48, width)
        self.reduce = ConvBNReLU(ch[1], low, 1)
        self.decoder = nn.Sequential(ConvBNReLU(c + low, c, 3), ConvBNReLU(c, c, 3))
        self.penultimate_channels = c
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self.layer_channels = {
            "stem": ch[0],
            "layer1": ch[1],
            "layer2": ch[2],
            "layer3": ch[3],
            "layer4": ch[4],
            "aspp": c,
            "decoder": c,
        }
        init_weights(self)

    def feature_grids(self) -> dict[str, Grid]:
        """Where each candidate layer's pixels sit on the input (:class:`Grid`): the ResNet-50's
        (output stride 16); ASPP's branches are 'same'-padded on stage 4's grid; the decoder
        keeps the stage-1 features' grid, onto which ASPP's output is resized."""
        grids = stage_grids(self.encoder, ("stem", "layer1", "layer2", "layer3", "layer4"))
        grids["aspp"] = grids["layer4"]
        grids["decoder"] = trace(self.decoder, trace(self.reduce, grids["layer1"]))
        return grids

    def forward_features(self, x: Tensor, taps: FeatureTaps) -> tuple[Tensor, tuple[Tensor, ...]]:
        e = self.encoder
        x = taps("stem", e.stem(x))
        low = taps("layer1", e.layer1(x))
        x = taps("layer2", e.layer2(low))
        x = taps("layer3", e.layer3(x))
        x = taps("layer4", e.layer4(x))
        x = taps("aspp", self.aspp(x))
        low = self.reduce(low)
        x = self.decoder(torch.cat([upsample(x, low.shape[-2:]), low], dim=1))
        return taps("decoder", x), ()
