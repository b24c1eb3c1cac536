"""Seamless texture tiles for the synthetic slides (H&E-like pinks and purples).

Each *appearance* (background, normal, benign, tumour, duct wall) is one periodic RGB tile of
:data:`TILE` pixels; a slide strip is painted by looking every pixel up in the tile of its
appearance at ``(y mod TILE, x mod TILE)``. Fine texture periods (8 px) divide 16, so the texture
averages out exactly under 16x box downsampling, and the ``normal`` and ``benign`` tiles are
balanced to the same mean colour: they differ only in fine detail.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Side of the periodic texture tile (level-0 pixels).
TILE = 512
#: Period of the nuclei grid and of the stripes (level-0 pixels); divides 16.
PERIOD = 8

BACKGROUND, NORMAL, BENIGN, TUMOUR, WALL = range(5)
APPEARANCES = ("background", "normal", "benign", "tumour", "wall")

_EOSIN = np.array([238.0, 178.0, 208.0])  # pink stroma
_HEMATOXYLIN = np.array([128.0, 78.0, 160.0])  # purple nuclei
_TUMOUR_BASE = np.array([214.0, 146.0, 200.0])
_TUMOUR_INK = np.array([92.0, 50.0, 138.0])
_PAPER = np.array([243.0, 241.0, 246.0])


def _nuclei(rng: np.random.Generator, radius: tuple[float, float], jitter: float) -> np.ndarray:
    """Soft round dots, one per PERIOD x PERIOD cell with a jittered centre: alpha in [0, 1]."""
    cells = TILE // PERIOD
    cx = (np.arange(cells) * PERIOD + PERIOD / 2)[None, :] + rng.uniform(
        -jitter, jitter, (cells, cells)
    )
    cy = (np.arange(cells) * PERIOD + PERIOD / 2)[:, None] + rng.uniform(
        -jitter, jitter, (cells, cells)
    )
    rad = rng.uniform(*radius, (cells, cells))
    ink = rng.uniform(0.8, 1.0, (cells, cells))
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float64) + 0.5
    iy, ix = (yy // PERIOD).astype(int), (xx // PERIOD).astype(int)
    alpha = np.zeros((TILE, TILE))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            jy, jx = (iy + dy) % cells, (ix + dx) % cells
            # the dot of cell (iy + dy, ix + dx), unwrapped next to this pixel
            dist = np.hypot(
                xx - (cx[jy, jx] - jx * PERIOD + (ix + dx) * PERIOD),
                yy - (cy[jy, jx] - jy * PERIOD + (iy + dy) * PERIOD),
            )
            a = np.clip(rad[jy, jx] + 0.5 - dist, 0.0, 1.0) * ink[jy, jx]
            np.maximum(alpha, a, out=alpha)
    return alpha


def _stripes(rng: np.random.Generator, half_width: float) -> np.ndarray:
    """Wavy diagonal fibres, period PERIOD along x: alpha in [0, 1]."""
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float64) + 0.5
    wave = 1.5 * np.sin(2 * np.pi * yy / 128 + rng.uniform(0, 2 * np.pi))
    u = np.mod(xx + yy + wave, PERIOD)
    dist = np.abs(u - PERIOD / 2) / np.sqrt(2.0)
    cells = TILE // PERIOD
    ink = rng.uniform(0.8, 1.0, (cells, cells))
    ink = ink[(yy // PERIOD).astype(int), (xx // PERIOD).astype(int)]
    return np.clip(half_width + 0.5 - dist, 0.0, 1.0) * ink


def _paint(base: np.ndarray, ink: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base[None, None, :] + alpha[..., None] * (ink - base)[None, None, :]


@lru_cache(maxsize=1)
def _patterns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The alpha maps (normal nuclei, benign fibres, tumour nuclei), drawn once per process."""
    rng = np.random.default_rng(np.random.SeedSequence(0x7E47))
    return _nuclei(rng, (1.6, 2.3), 1.2), _stripes(rng, 0.9), _nuclei(rng, (2.6, 3.3), 0.8)


@lru_cache(maxsize=4)
def texture_tiles(seed: int) -> np.ndarray:
    """The five appearance tiles of one slide, packed as uint32 RGBA: shape (5 * TILE * TILE,).

    The slide's ``seed`` sets a stain factor (a few percent), the phase of the patterns and the
    per-pixel noise; the noise is the same for every tissue appearance, so the classes differ
    only by the designed structure.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E47]))
    stain = 1.0 + rng.normal(0.0, 0.025, 3)
    eosin, hema = _EOSIN * stain, _HEMATOXYLIN * stain
    t_base, t_ink = _TUMOUR_BASE * stain, _TUMOUR_INK * stain
    shift = tuple(int(v) for v in rng.integers(0, TILE, 2))
    nuclei, fibres, big = (np.roll(p, shift, axis=(0, 1)) for p in _patterns())

    normal = _paint(eosin, hema, nuclei)
    # benign: same mean colour as normal, ink rescaled for the fibres' coverage
    benign_ink = eosin + (hema - eosin) * nuclei.mean() / fibres.mean()
    benign = _paint(eosin, benign_ink, fibres)
    tumour = _paint(t_base, t_ink, big)
    wall = tumour * 0.55

    tiles = np.empty((5, TILE, TILE, 3), np.float32)
    tiles[BACKGROUND] = _PAPER + rng.normal(0.0, 1.5, (TILE, TILE, 3))
    noise = rng.normal(0.0, 5.0, (TILE, TILE, 3))
    for k, img in ((NORMAL, normal), (BENIGN, benign), (TUMOUR, tumour), (WALL, wall)):
        tiles[k] = img + noise
    rgba = np.empty((5, TILE, TILE, 4), np.uint8)
    rgba[..., :3] = np.clip(np.rint(tiles), 0, 255)
    rgba[..., 3] = 255
    packed = rgba.reshape(-1, 4).view(np.uint32).ravel()
    packed.flags.writeable = False
    return packed


@lru_cache(maxsize=2)
def _local_index(h: int, w: int, y0: int, x0: int) -> np.ndarray:
    """Index of each pixel of an (h, w) window at level-0 (x0, y0) inside one tile."""
    local = ((np.arange(y0, y0 + h) % TILE) * TILE).astype(np.int32)[:, None] + (
        np.arange(x0, x0 + w) % TILE
    ).astype(np.int32)[None, :]
    local.flags.writeable = False
    return local


def paint(appearance: np.ndarray, tiles: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """RGB (H, W, 3) uint8 for an appearance map whose top-left pixel is level-0 (x0, y0)."""
    h, w = appearance.shape
    index = appearance.astype(np.int32) * (TILE * TILE)
    index += _local_index(h, w, y0 % TILE, x0 % TILE)
    rgba = np.take(tiles, index).view(np.uint8).reshape(h, w, 4)
    out = np.empty((h, w, 3), np.uint8)
    out[...] = rgba[..., :3]
    return out
