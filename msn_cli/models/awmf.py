"""AWMF-CNN (Tokunaga et al., CVPR 2019): the multi-branch baseline and its fusion.

AWMF-CNN runs one expert segmentation network per magnification, a *weighting CNN* that looks
at the three images and scores each expert (one softmax weight per expert and sample), and an
*aggregating CNN* that fuses the weighted, aligned expert outputs. The MSN paper reproduces it
on its own backbones and only reports the sizes (fusion part 37.9 M whatever the backbone), so
the layer sizes here are ours, chosen to match:

* weighting CNN: a ResNet-50 encoder on the 9-channel concatenation of X1, X2, X3, global
  average pool, one linear layer to 3 scores (23.53 M);
* aggregating CNN: the expert probabilities, weighted and aligned to X1 (S2, S3 cropped and
  upsampled), ConvBNReLU down to 1/8 (64-128-256-512 channels), five 3x3 ConvBNReLU at 512
  channels, a 1x1 classifier, upsampled back and added to the weighted average of the experts
  (13.37 M). Total 36.90 M at ``width=1`` (paper: 37.9 M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from msn_cli.models.layers import ConvBNReLU, init_weights, scaled, upsample
from msn_cli.models.memory import crop_center, magnification_ratio
from msn_cli.models.registry import build_backbone
from msn_cli.models.resnet import resnet

__all__ = ["AWMFCNN", "AWMFFusion", "WeightingCNN"]


class WeightingCNN(nn.Module):
    """Scores the experts from the images: (B, 3 * in_channels, H, W) -> (B, n_experts)."""

    def __init__(self, n_experts: int = 3, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.encoder = resnet(50, width, in_channels=n_experts * in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.encoder.channels[-1], n_experts)

    def forward(self, images: Tensor) -> Tensor:
        """Softmax weights of the experts, per sample."""
        return self.fc(self.pool(self.encoder(images)[-1]).flatten(1)).softmax(1)


class AWMFFusion(nn.Module):
    """AWMF-CNN's fusion part: weighting CNN + aggregating CNN.

    ``forward(s1, s2, s3, images=(x1, x2, x3))`` with ``s2``, ``s3`` already aligned to X1.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: float = 1.0, blocks: int = 5
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.weighting = WeightingCNN(3, in_channels, width)
        c = [scaled(n, width) for n in (64, 128, 256, 512)]
        layers: list[nn.Module] = [ConvBNReLU(3 * num_classes, c[0], 3)]
        layers += [ConvBNReLU(c[i], c[i + 1], 3, stride=2) for i in range(3)]
        layers += [ConvBNReLU(c[3], c[3], 3) for _ in range(blocks)]
        layers.append(nn.Conv2d(c[3], num_classes, 1))
        self.aggregate = nn.Sequential(*layers)
        init_weights(self)

    def forward(
        self,
        s1: Tensor,
        s2: Tensor,
        s3: Tensor | None = None,
        images: Sequence[Tensor] | None = None,
        sigma=None,
    ) -> Tensor:
        """Fused logits at X1's resolution (``sigma`` unused)."""
        if s3 is None or images is None or len(images) != 3:
            raise ValueError("the AWMF fusion needs S3 and the three images (x1, x2, x3)")
        if not (s1.shape == s2.shape == s3.shape):
            raise ValueError("S1, S2', S3' must be aligned to X1 and have the same shape")
        weights = self.weighting(torch.cat(list(images), dim=1))  # (B, 3)
        probs = torch.stack([s.softmax(1) for s in (s1, s2, s3)], dim=1)  # (B, 3, Nc, H, W)
        weighted = probs * weights[:, :, None, None, None].to(probs.dtype)
        residual = self.aggregate(weighted.flatten(1, 2))
        return weighted.sum(1) + upsample(residual, s1.shape[-2:])


class AWMFCNN(nn.Module):
    """The full AWMF-CNN baseline: three independent experts plus :class:`AWMFFusion`.

    Returns an :class:`~msn_cli.models.msn.MSNOutput` like MSN (S1, S2, S3, fused S).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        width: float = 1.0,
        magnifications: Sequence[float] = (16, 4, 1),
    ) -> None:
        super().__init__()
        if len(magnifications) != 3:
            raise ValueError(f"need three magnifications (X1, X2, X3), got {magnifications!r}")
        m1, m2, m3 = (float(m) for m in magnifications)
        self.ratios = (magnification_ratio(m1, m2), magnification_ratio(m1, m3))
        self.experts = nn.ModuleList(build_backbone(backbone, num_classes, width) for _ in range(3))
        self.fusion = AWMFFusion(num_classes, width=width)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor):
        from msn_cli.models.msn import MSNOutput

        s1, s2, s3 = (e(x).logits for e, x in zip(self.experts, (x1, x2, x3), strict=True))
        size = s1.shape[-2:]
        s2a, s3a = (crop_center(s, r, size) for s, r in zip((s2, s3), self.ratios, strict=True))
        return MSNOutput(s1, s2, s3, self.fusion(s1, s2a, s3a, images=(x1, x2, x3)))
