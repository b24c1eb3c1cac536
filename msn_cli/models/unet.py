"""UNet (Ronneberger et al., MICCAI 2015), with BatchNorm and 'same' padding.

Four 2x down-sampling steps (max-pool + double 3x3 convolution) and four up-sampling steps
(2x2 transposed convolution, concatenation with the skip, double convolution), then the 1x1
classifier ``Wo``. At ``width=1`` the first stage has 32 channels (32-64-128-256-512), which
gives 7.77 M parameters, the 7.8 M of the paper's Table 1 (the 64-channel original has 31 M).

Candidate layers: ``enc1`` ... ``enc5`` (encoder stages, ``enc5`` the bottom) and ``dec1`` ...
``dec4`` (decoder stages, ``dec4`` at full resolution).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msn_cli.models.base import SegmentationBackbone
from msn_cli.models.layers import ConvBNReLU, FeatureTaps, Grid, init_weights, scaled, trace

__all__ = ["DoubleConv", "UNet"]


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvBNReLU layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels, 3), ConvBNReLU(out_channels, out_channels, 3)
        )


class _Up(nn.Module):
    """Transposed-conv 2x up-sampling, concatenation with the skip, double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(SegmentationBackbone):
    """UNet with a width multiplier (``width=1``: 32 channels in the first stage).

    Example:
        >>> import torch
        >>> net = UNet(num_classes=2, width=0.125).eval()
        >>> tuple(net(torch.zeros(1, 3, 32, 32)).logits.shape)
        (1, 2, 32, 32)
    """

    candidate_layers = ("enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec2", "dec3", "dec4")
    default_gap_layers = ("enc3", "dec2")
    size_multiple = 16

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__(num_classes, width, in_channels)
        c = [scaled(32 * 2**i, width) for i in range(5)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, c[0])]
            + [nn.Sequential(nn.MaxPool2d(2), DoubleConv(c[i], c[i + 1])) for i in range(4)]
        )
        self.decoder = nn.ModuleList([_Up(c[4 - i], c[3 - i]) for i in range(4)])
        self.penultimate_channels = c[0]
        self.classifier = nn.Conv2d(c[0], num_classes, 1)
        self.layer_channels = {f"enc{i + 1}": c[i] for i in range(5)}
        self.layer_channels.update({f"dec{i + 1}": c[3 - i] for i in range(4)})
        init_weights(self)

    def feature_grids(self) -> dict[str, Grid]:
        """Where each candidate layer's pixels sit on the input (:class:`Grid`): the 2x2
        max-pools and transposed convolutions keep every pixel at its block's middle."""
        grids, grid = {}, Grid()
        for i, stage in enumerate(self.encoder):
            grid = grids[f"enc{i + 1}"] = trace(stage, grid)
        for i, up in enumerate(self.decoder):
            grid = grids[f"dec{i + 1}"] = trace(up, grid)
        return grids

    def forward_features(self, x: Tensor, taps: FeatureTaps) -> tuple[Tensor, tuple[Tensor, ...]]:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = taps(f"enc{i + 1}", stage(x))
            skips.append(x)
        for i, up in enumerate(self.decoder):
            x = taps(f"dec{i + 1}", up(x, skips[3 - i]))
        return x, ()
