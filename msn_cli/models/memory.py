"""Crop geometry and the Memory Recall Module (Mem-RM, Eq. 1 of the paper).

All patches of a triplet share their centre, and a branch of magnification ``m`` sees the
central ``1/ratio`` of the side of a branch of magnification ``m / ratio``. So the part of a
coarser map ``A`` that covers a finer branch's field of view is A's centre window of side
``H / ratio``, for any map size: :func:`crop_center` samples exactly that window
(``grid_sample``, bilinear, ``align_corners=False``: pixel ``i`` covers ``[i, i + 1)``), at any
output size, so a ratio of 16 on a 4x4 map (a quarter of a pixel) is as exact as a ratio of 4
on a 256x256 one.

Where a map's pixels sit inside that window is its *phase* ``e``: pixel ``i`` sits ``i + e``
pixel widths from the map's edge. Logits at the input resolution have ``e = 0.5`` (each
pixel's middle). A backbone's feature map has the phase of its layer's grid
(:class:`~msn_cli.models.layers.Grid`, traced from the kernels, strides and paddings):
``1/32`` for BiSeNet's ``layer3``, whose pixel ``i`` looks at input pixel ``16 i``, the
first of its 16-pixel block, not the middle. Mem-RM's A and B come from the same layer, so
both have that phase, and the crop samples A at the level-0 point each pixel of B sits on
(``MSNConfig.crop = "receptive-field"``). Crops before it (``"centre"``, every ``model.json``
without a ``crop`` key) assumed ``e = 0.5`` for features too: 7.5 input pixels off on
BiSeNet's ``layer3`` for A and B alike, which misaligns crop(A) and B by ``7.5 (r - 1)`` of
the branch's own pixels (22.5 for X2, 112.5 for X1). Mirroring a map (train-memrm flips
X3's cached meta-features with the images) moves its pixels to phase ``1 - e`` along the
mirrored axis: ``mirrored`` tells :func:`crop_center`, per sample and axis.

Mem-RM: ``B^ = B + f(cat(B, up(crop(A))))`` with ``f`` = ConvBNReLU(2C -> C, 3x3) then a
zero-initialised 1x1 convolution, so a fresh Mem-RM is the identity (the paper's
``f(cat(...))`` with a residual that keeps step 2 stable).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msn_cli.models.layers import ConvBNReLU, init_weights

__all__ = ["MemoryRecall", "center_grid", "crop_center", "magnification_ratio"]


def magnification_ratio(fine: float, coarse: float) -> float:
    """Side ratio of the fields of view: ``fine / coarse`` (>= 1).

    Example:
        >>> magnification_ratio(16, 1), magnification_ratio(16, 4)
        (16.0, 4.0)
    """
    if not (fine > 0 and coarse > 0):
        raise ValueError(f"magnifications must be > 0, got {fine!r} and {coarse!r}")
    if fine < coarse:
        raise ValueError(f"the fine magnification {fine} is below the coarse one {coarse}")
    return float(fine) / float(coarse)


def center_grid(
    ratio: float,
    size: Sequence[int],
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    phase: float = 0.5,
    in_size: Sequence[int] | None = None,
    mirrored: Tensor | None = None,
) -> Tensor:
    """The ``grid_sample`` grid (B, h, w, 2) of the centre window of side ``1/ratio``.

    With ``align_corners=False`` normalised -1 and 1 are the outer edges of the input map (of
    ``in_size``, default ``size``), so the window is ``[-1/ratio, 1/ratio]``. Output pixel
    ``j`` of ``n`` sits at ``(-1 + 2 (j + phase) / n) / ratio``; an input pixel ``i`` of ``N``
    sits at ``-1 + 2 (i + e) / N`` but ``grid_sample`` reads it at ``-1 + (2 i + 1) / N``,
    hence the shift ``(1 - 2 e) / N``, with ``e = phase``, or ``1 - phase`` along an axis
    ``mirrored`` ((B, 2) booleans: x, y) marks. ``phase=0.5``: ``(-1 + (2j + 1) / n) / ratio``.
    """
    h, w = int(size[0]), int(size[1])
    in_h, in_w = (h, w) if in_size is None else (int(in_size[0]), int(in_size[1]))

    def axis(n: int) -> Tensor:  # float64 on the CPU (exact), then to the target device
        j = torch.arange(n, dtype=torch.float64)
        return (-1.0 + 2.0 * (j + phase) / n) / ratio

    ys, xs = torch.meshgrid(axis(h), axis(w), indexing="ij")
    shift = torch.tensor([(1.0 - 2.0 * phase) / in_w, (1.0 - 2.0 * phase) / in_h])
    grid = torch.stack([xs, ys], dim=-1).unsqueeze(0)
    if mirrored is None:
        return (grid + shift).to(device=device, dtype=dtype).expand(batch, h, w, 2)
    if tuple(mirrored.shape) != (batch, 2):
        raise ValueError(f"mirrored must be (B, 2) = ({batch}, 2), got {tuple(mirrored.shape)}")
    sign = 1.0 - 2.0 * mirrored.to(device=device, dtype=dtype)  # -1 along a mirrored axis
    base = grid.to(device=device, dtype=dtype)
    return base + shift.to(device=device, dtype=dtype) * sign[:, None, None, :]


def crop_center(
    t: Tensor,
    ratio: float,
    size: Sequence[int] | None = None,
    phase: float = 0.5,
    mirrored: Tensor | None = None,
) -> Tensor:
    """Crop the centre ``1/ratio`` of ``t``'s side and resample it (bilinear) to ``size``.

    Args:
        t: (B, C, H, W) map (features or logits), any dtype grid_sample supports.
        ratio: side ratio of the fields of view (>= 1), e.g. 16 for X1 in X3, 4 for X1 in X2.
        size: output (h, w); default ``t``'s own size (crop, then upsample back).
        phase: where pixels sit in ``t`` and in the output (module docstring): 0.5 for
            logits, ``Grid.phase`` of the layer for features.
        mirrored: (B, 2) booleans, per sample: ``t``'s x, y axes mirrored since their
            pixels were computed (their phase is then ``1 - phase``).

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> crop_center(x, 2, (2, 2)).flatten().tolist()
        [5.0, 6.0, 9.0, 10.0]
    """
    if t.ndim != 4:
        raise ValueError(f"crop_center expects (B, C, H, W), got shape {tuple(t.shape)}")
    if not ratio >= 1:
        raise ValueError(f"ratio must be >= 1, got {ratio!r}")
    size = tuple(t.shape[-2:]) if size is None else (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"output size must be positive, got {size}")
    if ratio == 1 and size == tuple(t.shape[-2:]) and mirrored is None:
        return t
    grid = center_grid(ratio, size, t.shape[0], t.device, t.dtype, phase, t.shape[-2:], mirrored)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MemoryRecall(nn.Module):
    """Mem-RM: recall the meta-feature ``A`` of X3 into the branch feature ``B`` (Eq. 1).

    Args:
        channels: channels C of the gap layer (A and B both have C channels).
        ratio: magnification of this branch / magnification of X3 (16 or 4 by default).
        phase: the phase of the gap layer's grid, ``Grid.phase`` (0.5: the ``"centre"`` crop
            of msn 0.1.0; module docstring). Not a weight: ``model.json``'s ``crop`` sets it.

    Example:
        >>> rm = MemoryRecall(8, ratio=16).eval()
        >>> b, a = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
        >>> bool(torch.equal(rm(b, a), b))  # starts as the identity
        True
    """

    def __init__(self, channels: int, ratio: float, phase: float = 0.5) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not ratio >= 1:
            raise ValueError(f"ratio must be >= 1, got {ratio!r}")
        self.channels = int(channels)
        self.ratio = float(ratio)
        self.phase = float(phase)
        self.transform = ConvBNReLU(2 * channels, channels, 3)
        self.out = nn.Conv2d(channels, channels, 1)
        init_weights(self)

    def post_init(self) -> None:
        """Zero the last convolution: a fresh Mem-RM returns ``B`` unchanged."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, b: Tensor, a: Tensor, mirrored: Tensor | None = None) -> Tensor:
        """``b``: the branch's feature (B, C, h, w); ``a``: the X3 meta-feature (B, C, h', w');
        ``mirrored``: (B, 2), the axes of ``a`` mirrored after it was computed (a flip
        augmentation of cached meta-features; see :func:`crop_center`)."""
        if b.shape[:2] != a.shape[:2]:
            raise ValueError(
                f"branch feature {tuple(b.shape)} and meta-feature {tuple(a.shape)} differ in "
                "batch size or channels"
            )
        memory = crop_center(a.to(b.dtype), self.ratio, b.shape[-2:], self.phase, mirrored)
        return b + self.out(self.transform(torch.cat([b, memory], dim=1)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, ratio={self.ratio:g}, phase={self.phase:g}"
