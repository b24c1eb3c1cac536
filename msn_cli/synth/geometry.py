"""Polygons for the synthetic data: irregular star-shaped outlines and a scanline rasteriser.

Every label of the synthetic data is a polygon, and the images are painted from the very same
vertices, so the written annotations are exact. Rasterisation convention (shared by the painter
and :meth:`msn_cli.synth.slide.SlideTruth.label_map`): pixel ``(i, j)`` is inside a polygon when
its centre ``(i + 0.5, j + 0.5)`` is, by the even-odd rule.
"""

from __future__ import annotations

import numpy as np

#: Vertices are rounded to this many decimals before they are painted or written.
DECIMALS = 2


def star_polygon(
    rng: np.random.Generator,
    center: tuple[float, float],
    radius: float,
    *,
    harmonics: tuple[int, int] = (2, 5),
    roughness: float = 0.25,
    vertices: int = 96,
) -> np.ndarray:
    """An irregular closed outline ``r(θ) = R (1 + Σ a_k cos(kθ + φ_k))``, as (N, 2) x, y.

    The sum of the amplitudes is ``roughness`` (< 1), so the outline is star-shaped around
    ``center`` and lies between ``R (1 - roughness)`` and ``R (1 + roughness)`` from it. The first
    vertex is not repeated at the end.
    """
    ks = np.arange(harmonics[0], harmonics[1] + 1)
    amps = rng.uniform(0.3, 1.0, ks.size)
    amps *= roughness / amps.sum()
    phases = rng.uniform(0.0, 2 * np.pi, ks.size)
    theta = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False) + rng.uniform(0, 2 * np.pi)
    r = radius * (1.0 + (amps[:, None] * np.cos(ks[:, None] * theta + phases[:, None])).sum(0))
    pts = np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)
    return np.round(pts, DECIMALS)


def shrink(polygon: np.ndarray, center: tuple[float, float], width: float) -> np.ndarray:
    """Move every vertex of a star-shaped polygon ``width`` pixels towards ``center``."""
    d = polygon - np.asarray(center)
    r = np.hypot(d[:, 0], d[:, 1])
    scale = np.clip(r - width, 0.0, None) / np.maximum(r, 1e-9)
    return np.round(np.asarray(center) + d * scale[:, None], DECIMALS)


def fill_polygon(
    target: np.ndarray,
    polygon: np.ndarray,
    value: int,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> None:
    """Set ``target`` pixels whose centres lie inside ``polygon`` to ``value`` (in place).

    ``target`` (H, W) covers the level-0 box starting at ``origin`` (x, y) sampled every
    ``scale`` level-0 pixels, so a strip of a slide or a downsampled label map can be filled.
    The coverage is msn's one rasteriser (:func:`msn_cli.io.rasterise.fill_polygon`), so the
    painted images and the labels ``tile`` reads from the annotations agree pixel for pixel.
    """
    from msn_cli.io.rasterise import fill_polygon as coverage

    h, w = target.shape[:2]
    poly = np.asarray(polygon, np.float64)
    px = (poly - np.asarray(origin)) / scale
    y_lo = max(0, int(np.floor(px[:, 1].min() - 0.5)))
    y_hi = min(h, int(np.ceil(px[:, 1].max() + 0.5)))
    x_lo = max(0, int(np.floor(px[:, 0].min() - 0.5)))
    x_hi = min(w, int(np.ceil(px[:, 0].max() + 0.5)))
    if y_lo >= y_hi or x_lo >= x_hi:
        return
    edges = np.hstack([poly, np.roll(poly, -1, axis=0)])
    x0, y0 = origin[0] + x_lo * scale, origin[1] + y_lo * scale
    inside = coverage(edges, x0, y0, scale, y_hi - y_lo, x_hi - x_lo)
    target[y_lo:y_hi, x_lo:x_hi][inside] = value


def bbox(polygon: np.ndarray) -> tuple[float, float, float, float]:
    """``(x_min, y_min, x_max, y_max)`` of a polygon."""
    return (
        float(polygon[:, 0].min()),
        float(polygon[:, 1].min()),
        float(polygon[:, 0].max()),
        float(polygon[:, 1].max()),
    )


def polygon_area(polygon: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
