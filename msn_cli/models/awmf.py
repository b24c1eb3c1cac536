"""AWMF-CNN (Tokunaga et al., CVPR 2019): the multi-branch baseline.

Its fusion part, :class:`~msn_cli.models.fusion.AWMFFusion`, lives with the other fusions
(``MSN`` uses it as ``fusion="awmf"``); this module assembles the whole baseline and records why
the fusion's layers have the sizes they have.

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

from torch import Tensor, nn

from msn_cli.models.base import MSNOutput
from msn_cli.models.fusion import AWMFFusion
from msn_cli.models.memory import crop_center, magnification_ratio
from msn_cli.models.registry import build_backbone

__all__ = ["AWMFCNN"]


class AWMFCNN(nn.Module):
    """The full AWMF-CNN baseline: three independent experts plus :class:`AWMFFusion`.

    Returns an :class:`~msn_cli.models.base.MSNOutput` like MSN (S1, S2, S3, fused S).
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

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> MSNOutput:
        s1, s2, s3 = (e(x).logits for e, x in zip(self.experts, (x1, x2, x3), strict=True))
        size = s1.shape[-2:]
        s2a, s3a = (crop_center(s, r, size) for s, r in zip((s2, s3), self.ratios, strict=True))
        return MSNOutput(s1, s2, s3, self.fusion(s1, s2a, s3a, images=(x1, x2, x3)))
