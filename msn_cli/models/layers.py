"""Reusable building blocks and the one weight-initialisation routine of the model library.

Every model class of :mod:`msn_cli.models` ends its constructor with :func:`init_weights`,
the He (Kaiming) initialisation of the paper (§2.3: "We initialize all layers similar to
[He et al., 2015]"). Modules that need a different start (the zero-initialised residual of a
Mem-RM, the "average the branches" kernel of Meta-FM) define ``post_init()``, which
:func:`init_weights` calls after the generic pass, so there is still one routine.

Nothing here assumes a device: the blocks run on CPU or CUDA, under autocast, and with
``channels_last`` tensors.

:class:`Grid` and :func:`trace` say where a feature map's pixels sit on the input image
(Mem-RM crops on it: :mod:`msn_cli.models.memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvBNReLU",
    "ConvReLU",
    "FeatureTaps",
    "Grid",
    "count_parameters",
    "init_weights",
    "scaled",
    "stage_grids",
    "trace",
    "upsample",
]


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels`` times the width multiplier, at least 4.

    Example:
        >>> scaled(64, 0.25), scaled(64, 0.01)
        (16, 4)
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return max(4, int(round(channels * width)))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (works on the ``meta`` device too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def init_weights(module: nn.Module) -> nn.Module:
    """He-initialise every layer of ``module`` in place and return it.

    Convolutions and linear layers: ``kaiming_normal_`` (fan-out, ReLU gain), zero bias.
    Normalisation layers: weight 1, bias 0. Then each sub-module's ``post_init()`` runs, so
    special starts (identity residuals, generated-kernel biases) survive a re-initialisation.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        hook = getattr(m, "post_init", None)
        if callable(hook):
            hook()
    return module


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of ``x`` to ``size`` (``align_corners=False``); no-op if already there."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias) + BatchNorm + ReLU, 'same' padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ConvReLU(nn.Sequential):
    """Convolution with bias + ReLU and no normalisation.

    Used on globally pooled (1x1) maps, where BatchNorm would fail for a training batch of
    one and carries no information anyway.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(inplace=True),
        )


class FeatureTaps:
    """Per-forward bookkeeping of named candidate layers (gap layers).

    ``taps(name, x)`` first applies ``recall[name]`` (the Mem-RM injected for a non-meta
    branch) when present, then records the result when ``name`` was requested.

    Example:
        >>> import torch
        >>> taps = FeatureTaps(("a", "b"), features=("a",), recall={"b": lambda t: t * 0})
        >>> x = torch.ones(1)
        >>> taps("a", x) is x, float(taps("b", x)[0]), sorted(taps.features)
        (True, 0.0, ['a'])
    """

    def __init__(
        self,
        candidates: Sequence[str],
        features: Sequence[str] = (),
        recall: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    ) -> None:
        if isinstance(features, str):
            raise ValueError("features must be a sequence of layer names, not a string")
        recall = dict(recall or {})
        unknown = sorted((set(features) | set(recall)) - set(candidates))
        if unknown:
            raise ValueError(
                f"unknown layer name(s) {unknown}; candidate layers are {list(candidates)}"
            )
        self.wanted = frozenset(features)
        self.recall = recall
        self.features: dict[str, Tensor] = {}

    def __call__(self, name: str, x: Tensor) -> Tensor:
        fn = self.recall.get(name)
        if fn is not None:
            x = fn(x)
        if name in self.wanted:
            self.features[name] = x
        return x


@dataclass(frozen=True)
class Grid:
    """Where a feature map's pixels sit on the input image: pixel ``i`` of the map is centred
    on input pixel ``offset + stride * i`` (pixel indices: input pixel ``k`` is centred on
    ``k``), along both axes.

    A convolution or pooling of kernel ``k``, stride ``s``, padding ``p`` and dilation ``d``
    centres its output pixel ``i`` on its input pixel ``s * i + d * (k - 1) / 2 - p``;
    composing those gives a layer's grid exactly (the receptive-field centre of any pixel
    whose receptive field lies inside the image). It depends on kernels, strides and paddings
    only, never on weights or widths. ``Grid(stride / 2 - 0.5, stride)``, pixel ``i`` at the
    middle of input block ``[stride * i, stride * (i + 1))``, is what resizing with
    ``align_corners=False`` assumes; a ResNet's stride-2 convolutions put pixel ``i`` on the
    block's first pixel instead (``Grid(0, stride)``).

    Example:
        >>> Grid().conv(7, 2, 3).conv(3, 2, 1)  # a ResNet stem: 7x7/2 conv, 3x3/2 max-pool
        Grid(offset=0.0, stride=4.0)
        >>> Grid().conv(2, 2).phase  # UNet's 2x2 max-pool: the block's middle
        0.5
    """

    offset: float = 0.0
    stride: float = 1.0

    @property
    def phase(self) -> float:
        """Where pixel ``i`` sits inside its own cell ``[i, i + 1)`` of the map, as a fraction
        of a map pixel: ``(offset + 0.5) / stride`` (0.5: its middle)."""
        return (self.offset + 0.5) / self.stride

    def conv(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Grid:
        """The grid after a convolution or pooling (kernel, stride, padding, dilation)."""
        centre = dilation * (kernel - 1) / 2 - padding
        return Grid(self.offset + self.stride * centre, self.stride * stride)

    def transposed(self, kernel: int, stride: int, padding: int = 0) -> Grid:
        """The grid after a transposed convolution: input pixel ``i`` spreads to outputs
        ``stride * i - padding + [0, kernel)``, centred on ``stride * i - padding +
        (kernel - 1) / 2``."""
        centre = (padding - (kernel - 1) / 2) / stride
        return Grid(self.offset + self.stride * centre, self.stride / stride)


def _single(value, what: str, module: nn.Module) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if isinstance(value, str) or len(set(values)) != 1:
        raise ValueError(f"{module}: {what} {value!r} differs between the axes; no single grid")
    return int(values[0])


def trace(module: nn.Module, grid: Grid | None = None) -> Grid:
    """The grid after ``module``'s main path, starting from ``grid`` (default: the input's).

    Composes the module's convolutions, transposed convolutions and max/average pools in
    registration order (forward order for every block of this library), skipping shortcut
    branches named ``downsample`` (a residual block's 1x1/stride-2 projection lands on the
    main path's grid). Global pooling has no grid: tracing through one is an error.
    """
    grid = Grid() if grid is None else grid
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        parts = [
            _single(getattr(module, name, 1), name, module)
            for name in ("kernel_size", "stride", "padding", "dilation")
        ]
        return grid.conv(*parts)
    if isinstance(module, nn.ConvTranspose2d):
        if _single(module.dilation, "dilation", module) != 1 or any(module.output_padding):
            raise ValueError(f"{module}: dilated or output-padded transposed convolution")
        parts = [
            _single(getattr(module, n), n, module) for n in ("kernel_size", "stride", "padding")
        ]
        return grid.transposed(*parts)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        raise ValueError(f"{module}: a global pooling has no pixel grid")
    for name, child in module.named_children():
        if name != "downsample":
            grid = trace(child, grid)
    return grid


def stage_grids(
    module: nn.Module, names: Sequence[str], grid: Grid | None = None
) -> dict[str, Grid]:
    """The grid after each of ``module``'s children ``names``, applied in turn (e.g. a
    ResNet's ``stem``, ``layer1`` ... ``layer4``)."""
    out: dict[str, Grid] = {}
    for name in names:
        grid = out[name] = trace(getattr(module, name), grid)
    return out
