"""The gap-layer statistic (``training/gaps.py``) on a toy meta-branch with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from msn_cli.training.context import make_context
from msn_cli.training.gaps import choose_layers, layer_statistics, window_only

RATIOS = {"x1": 16.0, "x2": 4.0}


class Toy(nn.Module):
    """Two candidate layers: ``pixels`` sees one pixel (no context at all), ``context`` is
    the image's mean colour (all context) plus a little of the pixel."""

    candidate_layers = ("pixels", "context")

    def feature_grids(self):  # both keep the input's grid: pixel i sits at i + 0.5
        return {n: SimpleNamespace(phase=0.5) for n in self.candidate_layers}

    def forward(self, x, features=()):
        feats = {"pixels": x, "context": x.mean((2, 3), keepdim=True).expand_as(x) + 0.1 * x}
        return SimpleNamespace(features={k: v for k, v in feats.items() if k in features})


def triplets(n: int = 16, size: int = 64, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """X1, X2: a patch of smooth tissue (brightness varies by patch). X3: the same tissue in
    its centre (where X1's and X2's fields of view sit), and around it a high-contrast
    checkerboard (glass, borders: a much wider pixel spread than X1's) whose mean colour
    varies by patch: the context the finer branches never see."""
    g = torch.Generator().manual_seed(seed)
    tissue = 100 + 55 * torch.rand(n, 1, 1, 1, generator=g)
    around = 70 + 115 * torch.rand(n, 1, 1, 1, generator=g)
    checker = (torch.arange(size)[:, None] + torch.arange(size)[None]) % 2 * 120 - 60

    def smooth():
        return tissue + 5 * torch.randn(n, 3, size, size, generator=g)

    x3 = (around + checker).expand(n, 3, size, size).clone()
    c, w = size // 2, size // 8  # tissue in the centre quarter of the side (X2's view)
    x3[..., c - w : c + w, c - w : c + w] = smooth()[..., c - w : c + w, c - w : c + w]
    batch = {"x1": smooth(), "x2": smooth(), "x3": x3}
    return [{k: v.clamp(0, 255).round().to(torch.uint8) for k, v in batch.items()}]


@pytest.fixture(scope="module")
def stats():
    return layer_statistics(Toy(), triplets(), make_context("cpu", threads=1), None, RATIOS)


def test_raw_gap_ranks_the_pixel_layer_first(stats):
    """The Fig. 1 gap alone (``raw_score``, what ``auto`` ranked by before): the layer nearest the
    pixels differs most, because X3's pixels spread far wider than X1's (the stem on the
    demo data)."""
    layers = stats["layers"]
    assert layers["pixels"]["raw_score"] > layers["context"]["raw_score"] > 1


def test_context_dependence_separates_local_from_contextual_layers(stats):
    layers = stats["layers"]
    for s in ("x1", "x2"):
        assert layers["pixels"][f"context_{s}"] < 0.1  # only the crop's edge blends outside
        assert layers["context"][f"context_{s}"] > 0.4


def test_score_is_the_gap_memory_can_bridge(stats):
    layers = stats["layers"]
    for per in layers.values():
        want = sum(per[f"gap_{s}"] * min(1.0, per[f"context_{s}"]) for s in ("x1", "x2"))
        assert per["score"] == pytest.approx(want)
        assert per["raw_score"] == pytest.approx(per["gap_x1"] + per["gap_x2"])
    assert layers["context"]["score"] > 2 * layers["pixels"]["score"]
    assert choose_layers(stats, 1) == ("context",)
    assert choose_layers(stats, 1, lowest=True) == ("pixels",)


def test_without_ratios_no_layer_has_context():
    ctx = make_context("cpu", threads=1)
    stats = layer_statistics(Toy(), triplets(n=4), ctx, None)
    for per in stats["layers"].values():
        assert per["context_x1"] == per["context_x2"] == per["score"] == 0
        assert per["raw_score"] > 0


def test_window_only_keeps_the_window_and_fills_with_its_mean():
    x = torch.rand(2, 3, 32, 32)
    out = window_only(x, 4)
    assert torch.equal(out[..., 12:20, 12:20], x[..., 12:20, 12:20])
    fill = x[..., 12:20, 12:20].mean((-2, -1))
    assert torch.allclose(out[..., 0, 0], fill) and torch.allclose(out[..., 31, 20], fill)
