"""BiSeNet V1 (Yu et al., ECCV 2018) with a ResNet-18 context path: MSN's backbone.

Structure, with the paper's names:

* :class:`SpatialPath`: three stride-2 ConvBNReLU layers, 1/8 resolution, rich spatial detail.
* :class:`ContextPath`: ResNet-18; an :class:`AttentionRefinementModule` on stage 3 (1/16)
  and stage 4 (1/32); the global average pool of stage 4 (the "tail") is added to the
  stage-4 ARM output; both are upsampled to 1/8.
* :class:`FeatureFusionModule`: concatenation of both paths, ConvBNReLU, then an SE-like
  channel attention, ``x + x * att``.
* ``Wo``: a 1x1 classifier on the FFM output, logits upsampled x8. Two auxiliary 1x1 heads on
  the ARM outputs (deep supervision of the paper) are active in training mode only.

At ``width=1`` and 4 classes this has 13.04 M parameters (paper's Table 1: 12.8 M).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msn_cli.models.base import SegmentationBackbone
from msn_cli.models.layers import (
    ConvBNReLU,
    FeatureTaps,
    Grid,
    init_weights,
    scaled,
    stage_grids,
    trace,
    upsample,
)
from msn_cli.models.resnet import ResNet

__all__ = [
    "AttentionRefinementModule",
    "BiSeNet",
    "ContextPath",
    "FeatureFusionModule",
    "SpatialPath",
]


class SpatialPath(nn.Module):
    """Three stride-2 ConvBNReLU layers (64, 128, 256 channels at width 1): 1/8 resolution."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in (64, 128, 256))
        self.layers = nn.Sequential(
            ConvBNReLU(in_channels, c1, 3, 2), ConvBNReLU(c1, c2, 3, 2), ConvBNReLU(c2, c3, 3, 2)
        )
        self.out_channels = c3

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class AttentionRefinementModule(nn.Module):
    """Global pool, 1x1 conv, sigmoid: a channel attention vector that re-weights ``x``.

    The paper puts a BatchNorm after the 1x1 convolution; on a pooled 1x1 map that fails for a
    training batch of one, so the convolution carries a bias instead (same parameter count
    up to 2C).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv(self.pool(x)).sigmoid()


class ContextPath(nn.Module):
    """ResNet-18 + ARMs + global-pool tail; returns the stage-3 and stage-4 context features.

    Taps (candidate layers): ``stem``, ``layer1`` ... ``layer4``, ``arm16``, ``arm32``.
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.resnet = ResNet(18, width, in_channels=in_channels)
        self.channels = self.resnet.channels
        self.arm16 = AttentionRefinementModule(self.channels[3])
        self.arm32 = AttentionRefinementModule(self.channels[4])
        self.tail = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor, taps: FeatureTaps) -> tuple[Tensor, Tensor]:
        r = self.resnet
        x = taps("stem", r.stem(x))
        x = taps("layer1", r.layer1(x))
        x = taps("layer2", r.layer2(x))
        c16 = taps("layer3", r.layer3(x))
        c32 = taps("layer4", r.layer4(c16))
        a16 = taps("arm16", self.arm16(c16))
        a32 = taps("arm32", self.arm32(c32) + self.tail(c32))
        return a16, a32


class FeatureFusionModule(nn.Module):
    """Concatenate, ConvBNReLU (3x3), then ``x + x * SE(x)`` (1x1-ReLU-1x1-sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, *parts: Tensor) -> Tensor:
        x = self.conv(torch.cat(parts, dim=1))
        return x + x * self.attention(x)


class BiSeNet(SegmentationBackbone):
    """BiSeNet V1 with a ResNet-18 context path (see module docstring).

    Example:
        >>> import torch
        >>> net = BiSeNet(num_classes=4, width=0.125).eval()
        >>> out = net(torch.zeros(1, 3, 64, 64), features=("layer3",))
        >>> tuple(out.logits.shape), tuple(out.features["layer3"].shape)
        ((1, 4, 64, 64), (1, 32, 4, 4))
    """

    candidate_layers = (
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "arm16",
        "arm32",
        "spatial",
        "ffm",
    )
    default_gap_layers = ("layer3",)

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__(num_classes, width, in_channels)
        self.spatial_path = SpatialPath(width, in_channels)
        self.context_path = ContextPath(width, in_channels)
        ch = self.context_path.channels
        fused_in = self.spatial_path.out_channels + ch[3] + ch[4]
        self.ffm = FeatureFusionModule(fused_in, scaled(128, width))
        self.penultimate_channels = scaled(128, width)
        self.classifier = nn.Conv2d(self.penultimate_channels, num_classes, 1)
        self.aux16 = nn.Conv2d(ch[3], num_classes, 1)
        self.aux32 = nn.Conv2d(ch[4], num_classes, 1)
        self.layer_channels = {
            "stem": ch[0],
            "layer1": ch[1],
            "layer2": ch[2],
            "layer3": ch[3],
            "layer4": ch[4],
            "arm16": ch[3],
            "arm32": ch[4],
            "spatial": self.spatial_path.out_channels,
            "ffm": self.penultimate_channels,
        }
        init_weights(self)

    def feature_grids(self) -> dict[str, Grid]:
        """Where each candidate layer's pixels sit on the input (:class:`Grid`).

        ResNet-18 and the spatial path centre pixel ``i`` on input pixel ``stride * i``; the
        ARMs re-weight channels (their layer's grid); the FFM keeps the spatial path's grid,
        onto which the context features are resized.
        """
        resnet = self.context_path.resnet
        grids = stage_grids(resnet, ("stem", "layer1", "layer2", "layer3", "layer4"))
        grids["arm16"], grids["arm32"] = grids["layer3"], grids["layer4"]
        grids["spatial"] = trace(self.spatial_path)
        grids["ffm"] = trace(self.ffm.conv, grids["spatial"])
        return grids

    def forward_features(self, x: Tensor, taps: FeatureTaps) -> tuple[Tensor, tuple[Tensor, ...]]:
        sp = taps("spatial", self.spatial_path(x))
        a16, a32 = self.context_path(x, taps)
        size = sp.shape[-2:]
        fused = taps("ffm", self.ffm(sp, upsample(a16, size), upsample(a32, size)))
        aux = (self.aux16(a16), self.aux32(a32)) if self.training else ()
        return fused, aux
