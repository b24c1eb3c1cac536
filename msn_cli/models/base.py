"""The contract every segmentation backbone of msn follows.

A backbone maps an image batch to per-pixel class logits through an output layer ``Wo``, a
1x1 :class:`~torch.nn.Conv2d` (the classifier), applied to the ``penultimate`` tensor. The same
forward can return the features of named candidate layers (gap-layer analysis, Mem-FP) and can
replace them on the fly (``recall``: how a Mem-RM is injected into the shared meta-branch).

Because ``Wo`` is a 1x1 convolution, ``-dL/dWo`` (the σ of Meta-FM, Eq. 3) is computed from a
cached penultimate tensor alone, per sample, with :meth:`SegmentationBackbone.output_gradient`.

The results are small dataclasses: :class:`BackboneOutput` (one backbone), :class:`MSNOutput`
(a whole multi-branch model: MSN, AWMF-CNN) and :class:`OutputGradient` (σ's parts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msn_cli.models.layers import FeatureTaps, upsample
from msn_cli.vocab import IGNORE

__all__ = [
    "BackboneOutput", "MSNOutput", "OutputGradient", "SegmentationBackbone",
]  # fmt: skip


@dataclass
class BackboneOutput:
    """What a backbone forward returns.

    Attributes:
        logits: (B, Nc, H, W) class scores at the input resolution.
        features: the requested candidate-layer tensors, by name.
        penultimate: the tensor entering the output layer ``Wo`` (B, C, h, w).
        aux_logits: deep-supervision logits at input resolution (training mode only; empty
            in eval mode or for backbones without auxiliary heads).
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    penultimate: Tensor | None = None
    aux_logits: tuple[Tensor, ...] = ()


@dataclass
class MSNOutput:
    """What a whole multi-branch model returns (MSN, AWMF-CNN): S1, S2, S3, the branch logits
    in their own frames, and S, the fused logits in X1's frame."""

    s1: Tensor
    s2: Tensor
    s3: Tensor
    s: Tensor


@dataclass
class OutputGradient:
    """Per-sample negative gradient of the summed cross-entropy w.r.t. ``Wo``.

    ``grad_sum[b]`` is ``-d(sum over valid pixels of CE)/d[Wo.weight, Wo.bias]`` for sample b,
    flattened; ``count[b]`` its number of valid (not ignored) pixels. The gradient of the mean
    loss of any set of samples is ``grad_sum.sum(0) / count.sum()`` (see :meth:`mean`), so a
    support set can be streamed batch by batch and still averaged exactly.
    """

    grad_sum: Tensor
    count: Tensor

    def mean(self) -> Tensor:
        """The negative gradient of the mean loss over all valid pixels of all samples."""
        return self.grad_sum.sum(0) / self.count.sum().clamp(min=1)


class SegmentationBackbone(nn.Module):
    """Base class: uniform forward, named candidate layers, exposed output layer ``Wo``.

    Subclasses set ``candidate_layers``, ``layer_channels`` (channels of each candidate
    layer), ``penultimate_channels``, ``self.classifier`` (the 1x1 ``Wo``) and implement
    :meth:`forward_features`.
    """

    candidate_layers: tuple[str, ...] = ()
    #: spatial sizes of the input must be multiples of this
    size_multiple: int = 32

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        self.num_classes = int(num_classes)
        self.width = float(width)
        self.in_channels = int(in_channels)
        self.layer_channels: dict[str, int] = {}
        self.penultimate_channels = 0
        self.classifier: nn.Conv2d

    # -- to implement -------------------------------------------------------------------
    def forward_features(self, x: Tensor, taps: FeatureTaps) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Return the penultimate tensor and the auxiliary logits (any resolution)."""
        raise NotImplementedError

    # -- uniform interface --------------------------------------------------------------
    @property
    def output_layer(self) -> nn.Conv2d:
        """The output layer ``Wo``: the final 1x1 classifier convolution."""
        return self.classifier

    def forward(
        self,
        x: Tensor,
        features: Sequence[str] = (),
        recall: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    ) -> BackboneOutput:
        """Segment ``x`` (B, in_channels, H, W); H and W multiples of ``size_multiple``."""
        self.check_input(x)
        taps = FeatureTaps(self.candidate_layers, features, recall)
        penultimate, aux = self.forward_features(x, taps)
        size = x.shape[-2:]
        logits = self.head(penultimate, size=size)
        aux_logits = tuple(upsample(a, size) for a in aux) if self.training else ()
        return BackboneOutput(logits, taps.features, penultimate, aux_logits)

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is an image batch this backbone accepts."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"input height and width must be multiples of {m}, got {tuple(x.shape[-2:])}"
            )

    def head(
        self,
        penultimate: Tensor,
        size: Sequence[int] | None = None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> Tensor:
        """Apply ``Wo`` (or the given weight/bias) to ``penultimate``, resize to ``size``.

        ``weight`` may be (Nc, C, 1, 1) or per sample (B, Nc, C, 1, 1); ``bias`` (Nc,) or
        (B, Nc).
        """
        weight = self.classifier.weight if weight is None else weight
        bias = self.classifier.bias if bias is None else bias
        if weight.ndim == 4:
            out = F.conv2d(penultimate, weight, bias)
        elif weight.ndim == 5:
            out = torch.einsum("bchw,bkc->bkhw", penultimate, weight.flatten(2))
            if bias is not None:
                out = out + (bias if bias.ndim == 2 else bias.unsqueeze(0))[:, :, None, None]
        else:
            raise ValueError(f"weight must have 4 or 5 dimensions, got {tuple(weight.shape)}")
        return out if size is None else upsample(out, size)

    def output_gradient(
        self,
        penultimate: Tensor,
        target: Tensor,
        size: Sequence[int] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        ignore_index: int = IGNORE,
    ) -> OutputGradient:
        """Per-sample ``-dL/dWo`` of the summed cross-entropy of ``head(penultimate)``.

        Args:
            penultimate: cached (B, C, h, w) input of ``Wo`` (it is detached here).
            target: (B, H', W') class indices, ``ignore_index`` ignored.
            size: resolution of the logits before ``transform`` (default: target's size).
            transform: maps logits to the frame of ``target``, e.g. S2' = up(crop(S2)).
        """
        if target.ndim != 3 or target.shape[0] != penultimate.shape[0]:
            raise ValueError(
                f"target must be (B, H, W) with B={penultimate.shape[0]}, got {tuple(target.shape)}"
            )
        size = tuple(target.shape[-2:]) if size is None else size
        b = penultimate.shape[0]
        wo = self.classifier
        device_type = penultimate.device.type
        # Under predict's inference_mode too (σ "pseudo"): normal tensors, a graph, float32.
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type, enabled=False),
        ):
            w = wo.weight.detach().float().unsqueeze(0).repeat(b, 1, 1, 1, 1).requires_grad_()
            bias = wo.bias.detach().float().unsqueeze(0).repeat(b, 1).requires_grad_()
            pen = penultimate.detach().float().clone()
            target = target.detach().clone()
            logits = self.head(pen, size=size, weight=w, bias=bias)
            if transform is not None:
                logits = transform(logits)
            if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
                raise ValueError(
                    f"logits {tuple(logits.shape[-2:])} and target "
                    f"{tuple(target.shape[-2:])} sizes differ"
                )
            loss = F.cross_entropy(
                logits, target.long(), ignore_index=ignore_index, reduction="sum"
            )
            gw, gb = torch.autograd.grad(loss, (w, bias))
        grad = -torch.cat([gw.flatten(1), gb], dim=1)
        count = (target != ignore_index).flatten(1).sum(1)
        return OutputGradient(grad, count)

    @property
    def output_size(self) -> int:
        """Number of elements of ``Wo`` (weight and bias): the length of one σ half."""
        return self.classifier.weight.numel() + self.classifier.bias.numel()
