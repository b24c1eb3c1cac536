"""Crop geometry and the Memory Recall Module (Mem-RM, Eq. 1 of the paper).

All patches of a triplet share their centre, and a branch of magnification ``m`` sees the
central ``1/ratio`` of the side of a branch of magnification ``m / ratio``. So the part of a
coarser map ``A`` that covers a finer branch's field of view is A's centre window of side
``H / ratio``, for any map size: :func:`crop_center` samples exactly that window
(``grid_sample``, bilinear, ``align_corners=False``: pixel ``i`` covers ``[i, i + 1)``), at any
output size, so a ratio of 16 on a 4x4 map (a quarter of a pixel) is as exact as a ratio of 4
on a 256x256 one.

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
    ratio: float, size: Sequence[int], batch: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The ``grid_sample`` grid (B, h, w, 2) of the centre window of side ``1/ratio``.

    Output pixel ``j`` of ``n`` has its centre at normalised coordinate
    ``(-1 + (2j + 1) / n) / ratio``; with ``align_corners=False`` normalised -1 and 1 are the
    outer edges of the input map, so the window covers exactly the central ``1/ratio``.
    """
    h, w = int(size[0]), int(size[1])

    def axis(n: int) -> Tensor:  # float64 on the CPU (exact), then to the target device
        j = torch.arange(n, dtype=torch.float64)
        return ((-1.0 + (2.0 * j + 1.0) / n) / ratio).to(device=device, dtype=dtype)

    ys, xs = torch.meshgrid(axis(h), axis(w), indexing="ij")
    return torch.stack([xs, ys], dim=-1).unsqueeze(0).expand(batch, h, w, 2)


def crop_center(t: Tensor, ratio: float, size: Sequence[int] | None = None) -> Tensor:
    """Crop the centre ``1/ratio`` of ``t``'s side and resample it (bilinear) to ``size``.

    Args:
        t: (B, C, H, W) map (features or logits), any dtype grid_sample supports.
        ratio: side ratio of the fields of view (>= 1), e.g. 16 for X1 in X3, 4 for X1 in X2.
        size: output (h, w); default ``t``'s own size (crop, then upsample back).

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
    if ratio == 1 and size == tuple(t.shape[-2:]):
        return t
    grid = center_grid(ratio, size, t.shape[0], t.device, t.dtype)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MemoryRecall(nn.Module):
    """Mem-RM: recall the meta-feature ``A`` of X3 into the branch feature ``B`` (Eq. 1).

    Args:
        channels: channels C of the gap layer (A and B both have C channels).
        ratio: magnification of this branch / magnification of X3 (16 or 4 by default).

    Example:
        >>> rm = MemoryRecall(8, ratio=16).eval()
        >>> b, a = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
        >>> bool(torch.equal(rm(b, a), b))  # starts as the identity
        True
    """

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not ratio >= 1:
            raise ValueError(f"ratio must be >= 1, got {ratio!r}")
        self.channels = int(channels)
        self.ratio = float(ratio)
        self.transform = ConvBNReLU(2 * channels, channels, 3)
        self.out = nn.Conv2d(channels, channels, 1)
        init_weights(self)

    def post_init(self) -> None:
        """Zero the last convolution: a fresh Mem-RM returns ``B`` unchanged."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, b: Tensor, a: Tensor) -> Tensor:
        """``b``: the branch's feature (B, C, h, w); ``a``: the X3 meta-feature (B, C, h', w')."""
        if b.shape[:2] != a.shape[:2]:
            raise ValueError(
                f"branch feature {tuple(b.shape)} and meta-feature {tuple(a.shape)} differ in "
                "batch size or channels"
            )
        memory = crop_center(a.to(b.dtype), self.ratio, b.shape[-2:])
        return b + self.out(self.transform(torch.cat([b, memory], dim=1)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, ratio={self.ratio:g}"
