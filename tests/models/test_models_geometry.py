"""Where feature pixels sit (``Grid``, traced per backbone) and Mem-RM's crop on it.

The traced grids are checked against an independent measurement: the receptive-field centre
of one feature pixel, the centroid of its gradient w.r.t. the input on a linearised copy of
the real network (positive constant weights, identity BatchNorm, max-pools as average pools,
global pools switched off), which is exact for a pixel whose receptive field lies inside the
image.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msn_cli.io.card import parse_card
from msn_cli.models.layers import Grid, trace
from msn_cli.models.memory import crop_center
from msn_cli.models.msn import MSN, MSNConfig
from msn_cli.models.registry import BACKBONES, build_backbone


class _NoGlobalPool(nn.Module):
    def __init__(self, size) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.size) * 0


def linearised(net: nn.Module) -> nn.Module:
    """A copy of ``net`` that is linear and positive: its gradient is its impulse response."""
    net = copy.deepcopy(net).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, False, False)
                setattr(module, name, pool)
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, name, _NoGlobalPool(child.output_size))
            else:
                swap(child)

    swap(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
            elif isinstance(m, nn.ConvTranspose2d):
                m.weight.fill_(1.0 / (m.weight.shape[0] * m.weight[0, 0].numel()))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return net


def rf_centre(net: nn.Module, layer: str, size: int, i: int) -> tuple[float, float]:
    """Input-pixel (x, y) centroid of d(feature pixel (i, i) of ``layer``)/d(input)."""
    x = torch.ones(1, net.in_channels, size, size, requires_grad=True)
    net(x, features=(layer,)).features[layer][0, :, i, i].sum().backward()
    g = x.grad[0].sum(0).double()
    pos = torch.arange(size, dtype=torch.float64)
    return float((g.sum(0) * pos).sum() / g.sum()), float((g.sum(1) * pos).sum() / g.sum())


@pytest.fixture(scope="module")
def bisenet():
    torch.manual_seed(0)
    net = build_backbone("bisenet", 4, 0.125)
    return net, linearised(net)


@pytest.mark.parametrize("layer", ["stem", "layer2", "layer3", "arm16", "spatial"])
def test_bisenet_grid_is_the_measured_receptive_field_centre(bisenet, layer) -> None:
    """BiSeNet's ``layer3`` pixel ``i`` looks at input pixel ``16 i`` (exactly), not at the
    middle ``16 i + 7.5`` of its block that the old crop assumed."""
    net, lin = bisenet
    grid = net.feature_grids()[layer]
    size = 256  # layer3's receptive field (211 px) fits around the probed pixel
    i = int(size / grid.stride) // 2
    cx, cy = rf_centre(lin, layer, size, i)
    expect = grid.offset + grid.stride * i
    assert cx == pytest.approx(expect, abs=1e-6) and cy == pytest.approx(expect, abs=1e-6)
    assert grid.offset == 0.0
    if layer == "layer3":
        assert (grid.stride, grid.phase) == (16, 1 / 32)
        old = grid.stride * i + grid.stride / 2 - 0.5
        assert old - cx == pytest.approx(7.5)


@pytest.mark.parametrize("layer", ["enc3", "enc5"])
def test_unet_grid_is_the_measured_receptive_field_centre(layer) -> None:
    """UNet's 2x2 max-pools keep pixels at their block's middle (the old crop was right
    there); its transposed convolutions bring the decoder back onto the skips' grids."""
    torch.manual_seed(0)
    net = build_backbone("unet", 4, 0.125)
    grids = net.feature_grids()
    i = int(256 / grids[layer].stride) // 2
    cx, _ = rf_centre(linearised(net), layer, 256, i)
    assert cx == pytest.approx(grids[layer].offset + grids[layer].stride * i, abs=1e-6)
    assert grids[layer].phase == 0.5
    assert [grids[f"dec{k}"] for k in (1, 2, 3, 4)] == [grids[f"enc{k}"] for k in (4, 3, 2, 1)]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_traced_strides_match_the_feature_sizes(name) -> None:
    net = build_backbone(name, 4, 0.125).eval()
    grids = net.feature_grids()
    assert set(grids) == set(net.candidate_layers)
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 64), features=net.candidate_layers).features
    for layer, t in feats.items():
        assert grids[layer].stride == 64 / t.shape[-1], layer


def test_trace_composes_kernels_strides_and_paddings() -> None:
    stem = nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
    assert trace(stem) == Grid(0.0, 4.0)
    assert trace(nn.Conv2d(3, 4, 3, 2, 0)) == Grid(1.0, 2.0)  # 'valid': first centre at 1
    assert trace(nn.ConvTranspose2d(4, 4, 2, 2), Grid(1.5, 4)) == Grid(0.5, 2.0)
    with pytest.raises(ValueError, match="global pooling"):
        trace(nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ValueError, match="differs between the axes"):
        trace(nn.Conv2d(3, 4, (3, 1)))


def _old_crop(t: torch.Tensor, ratio: float, size) -> torch.Tensor:
    """msn 0.1.0's crop: every pixel at the middle of its cell."""
    h, w = size

    def axis(n: int) -> torch.Tensor:
        j = torch.arange(n, dtype=torch.float64)
        return ((-1.0 + (2.0 * j + 1.0) / n) / ratio).to(t.dtype)

    ys, xs = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).unsqueeze(0).expand(t.shape[0], h, w, 2)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize(
    ("ratio", "in_size", "out_size", "stride"),
    [(16, 16, 16, 16), (4, 16, 16, 16), (16, 4, 7, 32), (4, 64, 16, 2), (2.5, 10, 3, 8)],
)
def test_offset_at_the_block_middle_is_the_old_crop(ratio, in_size, out_size, stride) -> None:
    """``Grid(stride / 2 - 0.5, stride)`` (the old assumption) gives the old crop."""
    torch.manual_seed(0)
    t = torch.randn(2, 3, in_size, in_size)
    phase = Grid(stride / 2 - 0.5, stride).phase
    new = crop_center(t, ratio, (out_size, out_size), phase=phase)
    torch.testing.assert_close(new, _old_crop(t, ratio, (out_size, out_size)))


def _level0(grid: Grid, n: int, centre: float, downsample: float) -> torch.Tensor:
    """Level-0 coordinate of each pixel of an ``n``-pixel feature map of a patch of ``n *
    stride`` pixels centred on ``centre`` (continuous coordinates: pixel k covers [k, k+1))."""
    patch = n * grid.stride
    i = torch.arange(n, dtype=torch.float64)
    return centre + (grid.offset + grid.stride * i + 0.5 - patch / 2) * downsample


@pytest.mark.parametrize(("which", "downsample"), [("x1", 1.0), ("x2", 4.0)])
def test_mem_rm_matches_x3_feature_of_the_same_level0_point(which, downsample) -> None:
    """A synthetic A whose value is the level-0 point each X3 feature sits on, cropped the
    way MSN's Mem-RM crops it, gives at every pixel of B the level-0 point B's pixel sits on
    (BiSeNet layer3, patch 256, levels 16x 4x 1x; X3 is 16 level-0 pixels per pixel)."""
    cfg = MSNConfig(backbone="bisenet", width=0.125, patch_size=256)
    net = MSN(cfg)
    rm = net.memory_recall[which]["layer3"]
    grid = net.meta_branch.feature_grids()["layer3"]
    n, cx, cy = 16, 5000.0, 7000.0
    ax, ay = _level0(grid, n, cx, 16.0), _level0(grid, n, cy, 16.0)
    a = torch.stack(torch.meshgrid(ax, ay, indexing="xy")).unsqueeze(0)  # (1, 2, n, n): x, y
    bx, by = _level0(grid, n, cx, downsample), _level0(grid, n, cy, downsample)
    got = crop_center(a, rm.ratio, (n, n), rm.phase)
    torch.testing.assert_close(got[0, 0], bx.expand(n, n), rtol=0, atol=1e-9)
    torch.testing.assert_close(got[0, 1], by[:, None].expand(n, n), rtol=0, atol=1e-9)
    # B's centre pixel (8, 8) and the old crop, 7.5 (r - 1) branch pixels before it
    old = crop_center(a, rm.ratio, (n, n))
    miss = -7.5 * (rm.ratio - 1) * downsample
    torch.testing.assert_close(old[0, 0, 8, 8] - bx[8], torch.tensor(miss, dtype=torch.float64))


def test_crop_key_of_model_json() -> None:
    """Cards without ``crop`` (msn 0.1.0) keep the centre crop their Mem-RMs learned with."""
    cfg = MSNConfig(backbone="bisenet", width=0.125, patch_size=64)
    assert cfg.crop == "receptive-field" and cfg.to_dict()["crop"] == "receptive-field"
    old = {k: v for k, v in cfg.to_dict().items() if k != "crop"}
    assert MSNConfig.from_dict(old).crop == "centre"
    assert MSN(MSNConfig.from_dict(old)).memory_recall["x1"]["layer3"].phase == 0.5
    assert MSN(cfg).memory_recall["x1"]["layer3"].phase == 1 / 32
    card = {"schema_version": 1, "classes": list("abcd"), "model": {**old, "crop": "middle"}}
    with pytest.raises(ValueError, match=r"model\.crop: expected one of"):
        parse_card(card)
    with pytest.raises(ValueError, match="crop must be one of"):
        MSNConfig(crop="middle")
