"""Fusion of the two non-meta branches: Meta-FM (Eq. 2-3) and the "w/o Meta" ablation.

Both fuse the class probabilities of S1 and S2' = up(crop(S2)) (already aligned to X1 by the
caller) with two 3x3 convolutions, ``2Nc -> Nc``, ReLU, ``Nc -> Nc``, whose output are the
fused logits S.

* :class:`ConvFusion` ("w/o Meta"): the two convolutions are ordinary parameters.
* :class:`MetaFusion` (Meta-FM): their weights are generated, ``W = FC-ReLU-FC(σ)``, from
  σ = cat(-dL(S1, Y1)/dWo, -dL(S2', Y1)/dWo) (RMS-normalised here). The last FC's bias holds
  the "average the two branches" kernel and its weights start small, so a fresh Meta-FM
  averages the branches whatever σ is. For inference, the weights generated from σ* (over the
  whole support set: :func:`sigma_from_gradients` of every support patch's
  :class:`~msn_cli.models.base.OutputGradient`) are stored as buffers by :meth:`store` and
  used whenever no σ is given: predicting needs no label. That is σ ``fixed``: at test time
  the deployed Meta-FM is one fixed pair of convolutions. σ ``pseudo`` (``train-fusion --sigma
  pseudo``, ``model.json``'s ``sigma``) instead gives every patch its own σ, computed with the
  X1 branch's own prediction argmax(S1) as the label (no label needed, so it is computed the
  same way in training episodes and at predict time: :meth:`MSN.pseudo_sigma
  <msn_cli.models.msn.MSN.pseudo_sigma>`), and the generator also sees σ's magnitude
  (``magnitude=True``: log of its root-mean-square, an extra input), not only its direction.
* :class:`AWMFFusion` (AWMF-CNN's fusion, Tokunaga et al., CVPR 2019): a weighting CNN scores
  the three experts from the images, an aggregating CNN refines their weighted, aligned
  probabilities (sizes: :mod:`msn_cli.models.awmf`, which builds the whole AWMF-CNN).

Every fusion starts the same way (``init``, :data:`FUSION_INITS`; ``train-fusion
--fusion-init``), so Table 5 compares fusions, not starts:

* ``average`` (default): the fusion starts as the mean of its branches' probabilities.
  ConvFusion's convolutions and Meta-FM's generated kernels (the last FC's bias) are
  :func:`average_kernels`; AWMF's weighting CNN starts with a zero last layer (equal weights,
  1/3 each) and its aggregating CNN with a zero classifier (no residual). Fresh ConvFusion and
  Meta-FM (σ = 0) give the same output.
* ``he``: He initialisation (the paper's "from scratch"): ConvFusion's and AWMF's layers as
  :func:`~msn_cli.models.layers.init_weights` leaves them; Meta-FM's last FC's bias holds
  He-initialised kernels (:func:`he_kernels`), its weights still start small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msn_cli.models.base import OutputGradient
from msn_cli.models.layers import ConvBNReLU, init_weights, scaled, upsample
from msn_cli.models.resnet import resnet

__all__ = [
    "FUSION_INITS",
    "SIGMAS",
    "AWMFFusion",
    "ConvFusion",
    "MetaFusion",
    "average_kernels",
    "fusion_conv",
    "he_kernels",
    "sigma_from_gradients",
]

#: How a fresh fusion starts (module docstring); the first is the default of every fusion.
FUSION_INITS = ("average", "he")
#: Meta-FM's σ at test time (module docstring): σ* of the fit set, or per patch from
#: pseudo-labels; the first is the default.
SIGMAS = ("fixed", "pseudo")
#: The magnitude input is ``log(rms(σ)) / MAGNITUDE_SCALE`` (about -1..0 for usual σ).
MAGNITUDE_SCALE = 10.0


def _check_init(init: str) -> str:
    if init not in FUSION_INITS:
        raise ValueError(f"init must be one of {FUSION_INITS}, got {init!r}")
    return init


def _shapes(nc: int) -> list[tuple[int, ...]]:
    return [(nc, 2 * nc, 3, 3), (nc,), (nc, nc, 3, 3), (nc,)]


def average_kernels(num_classes: int) -> list[Tensor]:
    """``[w1, b1, w2, b2]`` that average two probability maps: conv1 = (p1 + p2) / 2, conv2 = id."""
    nc = num_classes
    w1, b1, w2, b2 = (torch.zeros(s) for s in _shapes(nc))
    for c in range(nc):
        w1[c, c, 1, 1] = 0.5
        w1[c, nc + c, 1, 1] = 0.5
        w2[c, c, 1, 1] = 1.0
    return [w1, b1, w2, b2]


def he_kernels(num_classes: int) -> list[Tensor]:
    """``[w1, b1, w2, b2]`` drawn as :func:`init_weights` draws ConvFusion's convolutions."""
    w1, b1, w2, b2 = (torch.zeros(s) for s in _shapes(num_classes))
    for w in (w1, w2):
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    return [w1, b1, w2, b2]


def fusion_conv(p: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """``conv2(relu(conv1(p)))`` with shared (4-D) or per-sample (5-D) kernels."""
    if w1.ndim == 4:
        return F.conv2d(F.relu(F.conv2d(p, w1, b1, padding=1)), w2, b2, padding=1)
    b, c, h, w = p.shape
    if w1.shape[0] != b:
        raise ValueError(f"{w1.shape[0]} generated kernels for a batch of {b}")
    x = F.conv2d(p.reshape(1, b * c, h, w), w1.flatten(0, 1), b1.flatten(), padding=1, groups=b)
    x = F.conv2d(F.relu(x), w2.flatten(0, 1), b2.flatten(), padding=1, groups=b)
    return x.reshape(b, -1, h, w)


def _probabilities(s1: Tensor, s2: Tensor) -> Tensor:
    if s1.shape != s2.shape:
        raise ValueError(
            f"S1 {tuple(s1.shape)} and S2' {tuple(s2.shape)} must have the same shape "
            "(crop and upsample S2 to X1's frame first)"
        )
    return torch.cat([s1.softmax(1), s2.softmax(1)], dim=1)


def sigma_from_gradients(*grads: OutputGradient, per_sample: bool = False) -> Tensor:
    """σ from one :class:`OutputGradient` per branch: (D,) batch mean, or (B, D) per sample."""
    if per_sample:
        return torch.cat([g.grad_sum / g.count.clamp(min=1).unsqueeze(1) for g in grads], dim=1)
    return torch.cat([g.mean() for g in grads])


class ConvFusion(nn.Module):
    """ "w/o Meta": the two fusion convolutions learned directly.

    Args:
        num_classes: Nc.
        init: ``"average"`` (the mean of the two branches) or ``"he"`` (from scratch).
    """

    def __init__(self, num_classes: int, init: str = "average") -> None:
        super().__init__()
        self.num_classes, self.init = int(num_classes), _check_init(init)
        self.conv1 = nn.Conv2d(2 * num_classes, num_classes, 3, padding=1)
        self.conv2 = nn.Conv2d(num_classes, num_classes, 3, padding=1)
        init_weights(self)

    def post_init(self) -> None:
        if self.init == "average":
            w1, b1, w2, b2 = average_kernels(self.num_classes)
            with torch.no_grad():
                for p, v in zip(self.parameters(), (w1, b1, w2, b2), strict=True):
                    p.copy_(v)

    def forward(
        self, s1: Tensor, s2: Tensor, s3: Tensor | None = None, images=None, sigma=None
    ) -> Tensor:
        """Fused logits from S1 and the aligned S2' (``s3``, ``images``, ``sigma`` unused)."""
        return self.conv2(F.relu(self.conv1(_probabilities(s1, s2))))


class MetaFusion(nn.Module):
    """Meta-FM: ``[W1, W2] = FC-ReLU-FC(normalise(σ))``, applied with ``F.conv2d``.

    Args:
        num_classes: Nc.
        sigma_dim: length of σ, ``2 * |Wo|`` (``2 * backbone.output_size``).
        hidden: width of the hidden FC layer (9: see :mod:`msn_cli.models.summary`).
        init_scale: relative scale of the last FC's initial weights.
        init: the kernels the last FC's bias holds: ``"average"`` or ``"he"``.
        magnitude: also feed the generator σ's magnitude (``log(rms(σ))``, one more input
            after the normalised σ); σ ``pseudo`` models have it.
    """

    def __init__(
        self,
        num_classes: int,
        sigma_dim: int,
        hidden: int = 9,
        init_scale: float = 1e-3,
        init: str = "average",
        magnitude: bool = False,
    ) -> None:
        super().__init__()
        if sigma_dim < 1 or hidden < 1:
            raise ValueError(f"sigma_dim and hidden must be >= 1, got {sigma_dim}, {hidden}")
        self.num_classes, self.sigma_dim, self.init_scale = int(num_classes), sigma_dim, init_scale
        self.init, self.magnitude = _check_init(init), bool(magnitude)
        self.sizes = [int(torch.Size(s).numel()) for s in _shapes(num_classes)]
        self.fc1 = nn.Linear(sigma_dim + int(self.magnitude), hidden)
        self.fc2 = nn.Linear(hidden, sum(self.sizes))
        self.register_buffer("stored", torch.zeros(sum(self.sizes)))
        self.register_buffer("has_stored", torch.zeros((), dtype=torch.bool))
        init_weights(self)

    def post_init(self) -> None:
        kernels = average_kernels if self.init == "average" else he_kernels
        with torch.no_grad():
            self.fc2.weight.mul_(self.init_scale)
            self.fc2.bias.copy_(torch.cat([k.flatten() for k in kernels(self.num_classes)]))

    @staticmethod
    def normalise(sigma: Tensor, tiny: float = 1e-30) -> Tensor:
        """Scale σ to unit root-mean-square (per row); its direction carries the information.

        Divides by the largest magnitude first, so gradients of any scale (even ones whose
        squares underflow) normalise the same way; an all-zero σ stays zero.
        """
        sigma = sigma / sigma.abs().amax(-1, keepdim=True).clamp_min(tiny)
        return sigma / sigma.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(tiny)

    def generate(self, sigma: Tensor) -> Tensor:
        """Flat kernels (P,) for σ of shape (D,), or (B, P) for (B, D)."""
        if sigma.ndim not in (1, 2) or sigma.shape[-1] != self.sigma_dim:
            raise ValueError(
                f"σ must be (D,) or (B, D) with D={self.sigma_dim}, got {tuple(sigma.shape)}"
            )
        sigma = sigma.to(self.fc1.weight.dtype)
        inputs = self.normalise(sigma)
        if self.magnitude:
            inputs = torch.cat([inputs, self.log_magnitude(sigma)], dim=-1)
        return self.fc2(F.relu(self.fc1(inputs)))

    @staticmethod
    def log_magnitude(sigma: Tensor, tiny: float = 1e-30) -> Tensor:
        """``log(rms(σ)) / MAGNITUDE_SCALE`` per row, shape (..., 1), computed without
        underflow (the largest magnitude is divided out first); an all-zero σ gives
        ``log(tiny) / MAGNITUDE_SCALE``.

        Example:
            >>> v = MetaFusion.log_magnitude(torch.full((2, 4), 1e-3))
            >>> round(float(v[0, 0]), 4), tuple(v.shape)
            (-0.6908, (2, 1))
        """
        top = sigma.abs().amax(-1, keepdim=True).clamp_min(tiny)
        rms = top * (sigma / top).pow(2).mean(-1, keepdim=True).sqrt()
        return torch.log(rms.clamp_min(tiny)) / MAGNITUDE_SCALE

    def kernels(self, flat: Tensor) -> list[Tensor]:
        """Split flat generated weights into ``[w1, b1, w2, b2]`` (leading batch dim kept)."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.sizes, dim=-1)
        return [p.reshape(*lead, *s) for p, s in zip(parts, _shapes(self.num_classes), strict=True)]

    @torch.no_grad()
    def store(self, sigma: Tensor) -> None:
        """Generate the kernels from σ* (D,) and keep them (a buffer, saved in state_dict)."""
        if sigma.ndim != 1:
            raise ValueError(f"σ* must be one vector (D,), got shape {tuple(sigma.shape)}")
        self.stored.copy_(self.generate(sigma.to(self.stored.device)).to(self.stored.dtype))
        self.has_stored.fill_(True)

    def forward(
        self, s1: Tensor, s2: Tensor, s3: Tensor | None = None, images=None, sigma=None
    ) -> Tensor:
        """Fused logits; kernels from ``sigma`` (D,) / (B, D), else the stored ones."""
        if sigma is None:
            if not bool(self.has_stored):
                raise ValueError("no σ given and no stored σ* kernels: call store(sigma) first")
            flat = self.stored
        else:
            flat = self.generate(sigma)
        p = _probabilities(s1, s2)
        return fusion_conv(p, *(k.to(p.dtype) for k in self.kernels(flat)))


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
    ``init="average"`` starts it as the mean of the three experts' probabilities (equal
    weights, no residual); ``"he"`` leaves every layer He-initialised.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        blocks: int = 5,
        init: str = "average",
    ) -> None:
        super().__init__()
        self.num_classes, self.init = int(num_classes), _check_init(init)
        self.weighting = WeightingCNN(3, in_channels, width)
        c = [scaled(n, width) for n in (64, 128, 256, 512)]
        layers: list[nn.Module] = [ConvBNReLU(3 * num_classes, c[0], 3)]
        layers += [ConvBNReLU(c[i], c[i + 1], 3, stride=2) for i in range(3)]
        layers += [ConvBNReLU(c[3], c[3], 3) for _ in range(blocks)]
        layers.append(nn.Conv2d(c[3], num_classes, 1))
        self.aggregate = nn.Sequential(*layers)
        init_weights(self)

    def post_init(self) -> None:
        """``average``: zero the weighting CNN's last layer and the aggregating classifier."""
        if self.init == "average":
            for layer in (self.weighting.fc, self.aggregate[-1]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

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
