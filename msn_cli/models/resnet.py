"""ResNet-18/50/101 encoders (He et al. 2016) with a width multiplier and a dilation option.

The encoder is the torchvision layout without the classification head (7x7 stem, max-pool,
four stages), so parameter counts match the published ones at ``width=1``: ResNet-18 11.18 M,
ResNet-50 23.51 M, ResNet-101 42.50 M. ``dilate=(False, True, True)`` replaces the strides of
stages 2-4 by dilation (output stride 8, PSPNet); ``(False, False, True)`` gives output stride
16 (DeepLab-V3+).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from msn_cli.models.layers import ConvBNReLU, init_weights, scaled

__all__ = ["RESNET_DEPTHS", "BasicBlock", "Bottleneck", "ResNet", "resnet"]

#: depth -> (block type, blocks per stage)
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(inplanes, planes, 3, stride, dilation)
        self.conv2 = ConvBNReLU(planes, planes, 3, 1, dilation, relu=False)
        self.downsample = _shortcut(inplanes, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided/dilated), 1x1 expand (x4), with shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = ConvBNReLU(inplanes, planes, 1)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride, dilation)
        self.conv3 = ConvBNReLU(planes, out, 1, relu=False)
        self.downsample = _shortcut(inplanes, out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


def _shortcut(inplanes: int, out: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == out:
        return None
    return ConvBNReLU(inplanes, out, 1, stride, relu=False)


class ResNet(nn.Module):
    """A ResNet encoder returning the outputs of the stem and the four stages.

    Args:
        depth: 18, 34, 50 or 101.
        width: channel multiplier (1.0 = the published widths).
        dilate: for stages 2, 3, 4, replace the stride-2 by dilation.
        in_channels: input channels (3 for RGB; 9 for the AWMF-CNN weighting net).

    Example:
        >>> enc = ResNet(18, width=0.125)
        >>> enc.channels
        (8, 8, 16, 32, 64)
    """

    def __init__(
        self,
        depth: int = 18,
        width: float = 1.0,
        dilate: Sequence[bool] = (False, False, False),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if len(dilate) != 3:
            raise ValueError(f"dilate needs 3 flags (stages 2-4), got {dilate!r}")
        kind, blocks = RESNET_DEPTHS[depth]
        self.depth = depth
        block = BasicBlock if kind == "basic" else Bottleneck
        stem = scaled(64, width)
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, stem, 7, 2), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        inplanes, dilation = stem, 1
        stages = []
        for i, (n, base) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            planes = scaled(base, width)
            stride, previous = (1 if i == 0 else 2), dilation
            if i > 0 and dilate[i - 1]:
                dilation, stride = dilation * stride, 1
            layers = [block(inplanes, planes, stride, previous)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes, 1, dilation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels: tuple[int, ...] = (stem,) + tuple(
            scaled(b, width) * block.expansion for b in (64, 128, 256, 512)
        )
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return ``[stem, layer1, layer2, layer3, layer4]`` outputs."""
        outs = [self.stem(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs


def resnet(depth: int, width: float = 1.0, output_stride: int = 32, in_channels: int = 3) -> ResNet:
    """A ResNet encoder with output stride 32 (plain), 16 or 8 (dilated)."""
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
    if output_stride not in dilate:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return ResNet(depth, width, dilate[output_stride], in_channels)
