"""Tissue detection on a thumbnail, and the tissue fraction of each X1 patch.

Method: the slide is read at ``footprint / 8`` (eight thumbnail pixels per X1 patch side) in
strips, so memory stays bounded on any slide size. A thumbnail pixel is tissue when it is
coloured or dark, and not black:

* chroma ``max(R,G,B) - min(R,G,B) >= 15`` (stained tissue is pink/purple; glass is grey-white), or
* luminance ``0.299 R + 0.587 G + 0.114 B <= 200`` (dense, dark tissue),
* and ``max(R,G,B) > 25`` (zero padding, black scanner borders and slide labels are not tissue).

A patch's tissue fraction is the mean of the mask over its footprint (outside the image counts
as no tissue). ``--min-tissue 0.1`` keeps a patch when at least 10 % of it is tissue; 0 keeps all.
"""

from __future__ import annotations

import math

import numpy as np

from msn_cli.io.slide import Slide, read_scaled

CHROMA_MIN = 15
LUMA_MAX = 200
BLACK_MAX = 25
THUMB_PER_PATCH = 8
STRIP_PIXELS = 4 << 20
#: The most source pixels one read may decode (a level coarser than the thumbnail's scale may
#: be missing: a non-pyramidal slide is read at level 0, block by block).
SOURCE_PIXELS = 16 << 20


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 array (see module docstring)."""
    rgb16 = rgb.astype(np.int16)
    mx, mn = rgb16.max(axis=-1), rgb16.min(axis=-1)
    luma = rgb16[..., 0] * 0.299 + rgb16[..., 1] * 0.587 + rgb16[..., 2] * 0.114
    return ((mx - mn >= CHROMA_MIN) | (luma <= LUMA_MAX)) & (mx > BLACK_MAX)


def thumbnail_mask(slide: Slide, downsample: float) -> np.ndarray:
    """Tissue mask of the whole slide at ``downsample``, computed strip by strip (block by
    block where a strip would decode more than ``SOURCE_PIXELS`` of its pyramid level)."""
    w0, h0 = slide.dimensions
    tw, th = max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample))
    rows, cols = max(1, STRIP_PIXELS // tw), tw
    lv = slide.levels[slide.best_level(downsample)]
    rel = downsample / min(lv.downsample_x, lv.downsample_y)  # level pixels per thumbnail pixel
    if rows * cols * rel * rel > SOURCE_PIXELS:
        rows = cols = max(1, int(math.sqrt(SOURCE_PIXELS) / rel))
    mask = np.zeros((th, tw), dtype=bool)
    for r in range(0, th, rows):
        h = min(rows, th - r)
        for c in range(0, tw, cols):
            w = min(cols, tw - c)
            block = read_scaled(slide, c * downsample, r * downsample, downsample, w, h)
            mask[r : r + h, c : c + w] = tissue_mask(block)
    return mask


def patch_fractions(mask: np.ndarray, downsample: float, corners: np.ndarray, footprint: float):
    """Tissue fraction (N,) of each X1 patch with level-0 top-left ``corners``."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    side = max(1, round(footprint / downsample))
    x0 = np.round(corners[:, 0] / downsample).astype(np.int64)
    y0 = np.round(corners[:, 1] / downsample).astype(np.int64)
    xa, xb = np.clip(x0, 0, mask.shape[1]), np.clip(x0 + side, 0, mask.shape[1])
    ya, yb = np.clip(y0, 0, mask.shape[0]), np.clip(y0 + side, 0, mask.shape[0])
    inside = integral[yb, xb] - integral[ya, xb] - integral[yb, xa] + integral[ya, xa]
    return (inside / float(side * side)).astype(np.float32)


def thumbnail_downsample(footprint: float) -> float:
    return max(1.0, footprint / THUMB_PER_PATCH)


def tissue_fractions(slide: Slide, corners: np.ndarray, footprint: float) -> np.ndarray:
    """Tissue fraction (N,) of the X1 patches at level-0 ``corners`` (one thumbnail read)."""
    ds = thumbnail_downsample(footprint)
    return patch_fractions(thumbnail_mask(slide, ds), ds, corners, footprint)
