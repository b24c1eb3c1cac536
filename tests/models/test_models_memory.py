"""Crop geometry (sub-pixel exact for any ratio and map size) and Mem-RM."""

from __future__ import annotations

import pytest
import torch

from msn_cli.models.memory import MemoryRecall, crop_center, magnification_ratio
from msn_cli.models.msn import MSNConfig


def _ramp(h: int, w: int) -> torch.Tensor:
    """Channel 0: x coordinate of each pixel centre; channel 1: y coordinate."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5,
        torch.arange(w, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs, ys]).unsqueeze(0)


@pytest.mark.parametrize(
    ("ratio", "in_size", "out_size"),
    [(16, 64, 16), (16, 8, 16), (16, 4, 7), (4, 64, 16), (4, 2, 5), (4, 256, 256), (2.5, 10, 3)],
)
def test_crop_lands_on_field_of_view(ratio: float, in_size: int, out_size: int) -> None:
    """Sampling a linear ramp returns the exact continuous coordinates of the window."""
    out = crop_center(_ramp(in_size, in_size), ratio, (out_size, out_size))
    side = in_size / ratio
    start = (in_size - side) / 2
    expect = start + (torch.arange(out_size, dtype=torch.float64) + 0.5) * side / out_size
    torch.testing.assert_close(out[0, 0, 0], expect)  # x along a row
    torch.testing.assert_close(out[0, 1, :, 0], expect)  # y along a column


@pytest.mark.parametrize("ratio", [16, 4])
def test_known_pattern_lands_where_the_branch_looks(ratio: int) -> None:
    """A square around the centre of A appears where it sits in B's field of view."""
    a = torch.zeros(1, 1, 64, 64)
    side = 64 // ratio  # the window B sees: 4 px of A for 16x, 16 px for 4x
    start = 32 - side // 2
    a[..., start + side // 4 : start + 3 * side // 4, start + side // 4 : start + 3 * side // 4] = 1
    out = crop_center(a, ratio, (16, 16))[0, 0]
    # the square is the central half of the window (output pixels 4..11); bilinear sampling
    # treats values as point samples at pixel centres, so only pixels whose centre lies
    # between two square (or two background) centres of A are exactly 1 (or 0) for 16x.
    inner, outer = out[6:10, 6:10], torch.cat([out[:2].flatten(), out[14:].flatten()])
    assert torch.allclose(inner, torch.ones_like(inner))
    assert torch.allclose(outer, torch.zeros_like(outer))
    if ratio == 4:  # pixel-aligned case: exact copy of the window
        torch.testing.assert_close(out, a[0, 0, start : start + side, start : start + side])


def test_crop_off_center_pattern_16x() -> None:
    """A dot in A one X1-field to the right of the centre is outside X1's view."""
    a = torch.zeros(1, 1, 32, 32)
    a[..., 15:17, 18:20] = 1.0  # centre window for 16x is [15, 17) x [15, 17)
    out = crop_center(a, 16, (8, 8))
    assert out.abs().max() == 0
    a[..., 14:18, 14:18] = 1.0  # centres 14.5 .. 17.5 enclose the window
    assert torch.allclose(crop_center(a, 16, (8, 8)), torch.ones(1, 1, 8, 8))


def test_crop_validation_and_dtypes() -> None:
    with pytest.raises(ValueError, match="ratio"):
        crop_center(torch.zeros(1, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="B, C, H, W"):
        crop_center(torch.zeros(4, 4), 2)
    x = torch.randn(1, 2, 8, 8).to(memory_format=torch.channels_last)
    assert crop_center(x, 4, (4, 4)).shape == (1, 2, 4, 4)
    assert crop_center(x, 1) is x
    assert magnification_ratio(4, 1) == 4.0
    with pytest.raises(ValueError):
        magnification_ratio(1, 4)


def test_config_ratios() -> None:
    assert MSNConfig().ratios == {"x1": 16.0, "x2": 4.0, "x1_in_x2": 4.0}
    assert MSNConfig(magnifications=(4, 2, 1)).ratios == {"x1": 4.0, "x2": 2.0, "x1_in_x2": 2.0}


def test_memory_recall_identity_then_learns() -> None:
    torch.manual_seed(0)
    rm = MemoryRecall(8, ratio=16)
    b, a = torch.randn(2, 8, 2, 2, requires_grad=True), torch.randn(2, 8, 2, 2)
    out = rm(b, a)  # maps smaller than the crop factor
    torch.testing.assert_close(out, b)
    out.square().sum().backward()
    assert rm.out.weight.grad is not None and rm.out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        rm.out.weight.normal_()
    assert not torch.allclose(rm(b, a), b)
    with pytest.raises(ValueError, match="channels"):
        rm(b, torch.randn(2, 4, 2, 2))


def test_memory_recall_uses_only_the_field_of_view() -> None:
    """Changing A outside the branch's field of view leaves the Mem-RM output unchanged."""
    torch.manual_seed(0)
    rm = MemoryRecall(4, ratio=4).eval()
    with torch.no_grad():
        rm.out.weight.normal_()
    b, a = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 32, 32)
    a2 = a.clone()
    a2[..., :, :10] += 5.0  # the 4x window is columns/rows 12..19
    a2[..., :10, :] -= 3.0
    with torch.no_grad():
        torch.testing.assert_close(rm(b, a), rm(b, a2))
        a2[..., 14, 14] += 1.0
        assert not torch.allclose(rm(b, a), rm(b, a2))
