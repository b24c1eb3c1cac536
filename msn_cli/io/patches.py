"""Patch triplets: the paper's X1 grid and the X2 / X3 context centred on each X1 patch.

This is the one implementation of the triplet geometry; ``tile`` and ``predict`` both use it,
so training and inference see identical inputs.

Geometry (how msn reads the paper here; docs/architecture.md §4): ``--levels 16x 4x 1x`` are
the relative magnifications of X1, X2, X3. X1 is read at the base resolution (level-0
downsample ``s1``: 1, or set by ``--mpp``), X2 at ``s1 * 16/4`` and X3 at ``s1 * 16/1``. X1
tiles the image left to right, top to bottom, without overlap, the last patch of each row and
column shifted back inside the image; X2 and X3 share X1's centre and are zero-padded outside
the image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.slide import Slide, cut, level_box, read_padded, resample_margin


@dataclass(frozen=True)
class Levels:
    """Relative magnifications of X1, X2, X3, strictly decreasing.

    Example:
        >>> Levels.parse(["16x", "4x", "1x"]).magnifications
        (16.0, 4.0, 1.0)
        >>> Levels.parse(["16x,4x,1x"]).ratios
        (1.0, 4.0, 16.0)
    """

    magnifications: tuple[float, float, float]

    @classmethod
    def parse(cls, values: Sequence[str] | str) -> Levels:
        text = values if isinstance(values, str) else " ".join(values)
        parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
        mags = []
        for part in parts:
            m = re.fullmatch(r"(\d+(?:\.\d+)?)[xX]?", part)
            if not m or float(m.group(1)) <= 0:
                raise MsnUsageError(
                    "--levels", f"{part!r} is not a magnification like 16x (use e.g. 16x 4x 1x)"
                )
            mags.append(float(m.group(1)))
        if len(mags) != 3:
            raise MsnUsageError("--levels", f"expected three magnifications, got {len(mags)}")
        if not (mags[0] > mags[1] > mags[2]):
            raise MsnUsageError(
                "--levels", "magnifications must be strictly decreasing: X1 > X2 > X3"
            )
        return cls((mags[0], mags[1], mags[2]))

    @property
    def ratios(self) -> tuple[float, float, float]:
        """How many times coarser than X1 each branch is: (1, 4, 16) for 16x 4x 1x."""
        m1 = self.magnifications[0]
        return tuple(m1 / m for m in self.magnifications)  # type: ignore[return-value]

    def labels(self) -> list[str]:
        return [f"{m:g}x" for m in self.magnifications]


@dataclass(frozen=True)
class PatchGeometry:
    """Patch size and the level-0 downsample of each branch.

    The X1 grid lives on a lattice: X1 patches start at multiples of P (X1 pixels), the last of
    each row and column shifted back by a multiple of :attr:`step`, the fewest X1 pixels that are
    a whole number of X2 and X3 pixels. So every patch's X2 and X3 views start on whole pixels
    of one image per branch, and the store keeps each scale once (:mod:`msn_cli.io.store`).

    Example:
        >>> g = PatchGeometry.create(256, Levels.parse("16x 4x 1x"))
        >>> g.step, g.grid_px(1000, 300)[:, 0].tolist()
        (16, [0, 256, 512, 752, 0, 256, 512, 752])
    """

    patch_size: int
    downsamples: tuple[float, float, float]

    @classmethod
    def create(cls, patch_size: int, levels: Levels, base_downsample: float = 1.0):
        return cls(patch_size, tuple(base_downsample * r for r in levels.ratios))

    @property
    def footprint(self) -> float:
        """Side of an X1 patch in level-0 pixels."""
        return self.patch_size * self.downsamples[0]

    @property
    def ratios(self) -> tuple[float, float, float]:
        return tuple(d / self.downsamples[0] for d in self.downsamples)  # type: ignore[return-value]

    @property
    def step(self) -> int:
        """The lattice step (X1 pixels) of shifted patches; see :func:`check_patch_size`."""
        step = lattice_step(self.patch_size, self.ratios)
        if step is None:
            raise ValueError(f"patch size {self.patch_size} does not fit ratios {self.ratios}")
        return step

    def grid_px(self, width: int, height: int) -> np.ndarray:
        """Top-left corners (N, 2) of the X1 grid in X1 pixels (integers), rows top to bottom."""
        step = self.step
        xs = _axis_positions(width / self.downsamples[0], self.patch_size, step)
        ys = _axis_positions(height / self.downsamples[0], self.patch_size, step)
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def grid(self, width: int, height: int) -> np.ndarray:
        """Top-left level-0 corners (N, 2) of the X1 grid, rows top to bottom."""
        return self.grid_px(width, height) * self.downsamples[0]

    def centres(self, corners: np.ndarray) -> np.ndarray:
        return corners + self.footprint / 2.0

    def origin(self, centre: np.ndarray, branch: int) -> np.ndarray:
        """Level-0 top-left of branch ``branch`` (0, 1, 2) for patch centres ``centre``."""
        return centre - self.patch_size * self.downsamples[branch] / 2.0

    def image_origin(self, branch: int) -> float:
        """Level-0 coordinate (x and y) of pixel 0 of branch ``branch``'s image: the top-left of
        the view of the patch at X1 pixel 0."""
        return self.patch_size * (self.downsamples[0] - self.downsamples[branch]) / 2.0

    def view_origins(self, grid_px: np.ndarray) -> np.ndarray:
        """(N, 3, 2) whole-pixel top-left of each patch's view in each branch's image."""
        out = np.empty((len(grid_px), 3, 2), dtype=np.int64)
        for b, r in enumerate(self.ratios):
            pos = grid_px / r
            out[:, b] = np.rint(pos)
            if len(pos) and np.abs(pos - out[:, b]).max() > 1e-6:
                raise ValueError("grid positions off the lattice")
        return out


def lattice_step(patch_size: int, ratios: Sequence[float]) -> int | None:
    """The fewest X1 pixels that are whole X2 and X3 pixels, if P itself is (else None)."""

    def whole(k: int) -> bool:
        return all(abs(k / r - round(k / r)) < 1e-6 for r in ratios)

    if not whole(patch_size):
        return None
    return next(k for k in range(1, patch_size + 1) if whole(k))


def check_patch_size(patch_size: int, levels: Levels) -> None:
    """X2's and X3's fields of view must start on whole pixels: P / ratio integral."""
    if lattice_step(patch_size, levels.ratios) is not None:
        return
    near = [p for p in range(16, 4 * patch_size + 17) if lattice_step(p, levels.ratios)]
    best = min(near, key=lambda p: (abs(p - patch_size), p)) if near else None
    ratios = ", ".join(f"{r:g}" for r in levels.ratios[1:])
    hint = f"; e.g. --patch-size {best}" if best else ""
    raise MsnUsageError(
        "--patch-size",
        f"{patch_size} is not a whole number of X2/X3 pixels (ratios {ratios} to X1){hint}",
    )


def _axis_positions(extent: float, patch: int, step: int) -> np.ndarray:
    """X1-pixel starts along one axis: multiples of ``patch``, the last shifted back inside the
    image to the next multiple of ``step`` (so it may overhang by less than ``step``)."""
    n = max(1, math.ceil(extent / patch - 1e-9))
    pos = np.arange(n, dtype=np.int64) * patch
    if n > 1:
        pos[-1] = max(0, math.ceil((extent - patch) / step - 1e-9) * step)
    return pos


@dataclass
class Triplets:
    """Aligned patch triplets: images (n, P, P, 3) and labels (n, P, P) per branch."""

    x: list[np.ndarray]
    y: list[np.ndarray] | None


def extract(
    slide: Slide,
    geometry: PatchGeometry,
    centres: np.ndarray,
    labels=None,
) -> Triplets:
    """Read the triplets for ``centres`` (n, 2): each level's covering box is decoded ONCE.

    ``labels`` is a label source with ``region(x0, y0, downsample, height, width)``; labels are
    rasterised at each branch's own scale so they stay aligned with their pixels.
    """
    p = geometry.patch_size
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for b, ds in enumerate(geometry.downsamples):
        origins = geometry.origin(centres, b)
        boxes = [level_box(slide, ox, oy, ds, p, p) for ox, oy in origins]
        level = boxes[0].level
        lv = slide.levels[level]
        margin = resample_margin(ds, min(lv.downsample_x, lv.downsample_y))
        covers = np.array([bx.covering(margin) for bx in boxes])
        ux0, uy0 = covers[:, 0].min(), covers[:, 1].min()
        ux1 = (covers[:, 0] + covers[:, 2]).max()
        uy1 = (covers[:, 1] + covers[:, 3]).max()
        src = read_padded(slide, level, int(ux0), int(uy0), int(ux1 - ux0), int(uy1 - uy0))
        out = np.empty((len(boxes), p, p, 3), dtype=np.uint8)
        for i, bx in enumerate(boxes):
            out[i] = cut(src, int(ux0), int(uy0), bx, p, p)
        xs.append(out)
        if labels is not None:
            ys.append(_labels(labels, origins, ds, p))
    return Triplets(xs, ys if labels is not None else None)


def _labels(labels, origins: np.ndarray, ds: float, p: int) -> np.ndarray:
    """Labels of every patch at one scale: patches on a common pixel grid are cut from one
    rasterised union (as a per-patch rasterisation would give them, pixel for pixel); the
    others (the shifted last row and column) are rasterised alone."""
    out = np.empty((len(origins), p, p), dtype=np.uint8)
    u = origins.min(axis=0)
    steps = (origins - u) / ds
    on_grid = np.all(np.abs(steps - np.round(steps)) < 1e-6, axis=1)
    if on_grid.sum() > 1:
        cells = np.round(steps[on_grid]).astype(np.int64)
        h, w = cells[:, 1].max() + p, cells[:, 0].max() + p
        union = labels.region(float(u[0]), float(u[1]), ds, int(h), int(w))
        for i, (cx, cy) in zip(np.flatnonzero(on_grid), cells, strict=True):
            out[i] = union[cy : cy + p, cx : cx + p]
        on_grid_idx = set(np.flatnonzero(on_grid).tolist())
    else:
        on_grid_idx = set()
    for i, (ox, oy) in enumerate(origins):
        if i not in on_grid_idx:
            out[i] = labels.region(float(ox), float(oy), ds, p, p)
    return out


def region_blocks(corners: np.ndarray, geometry: PatchGeometry, block: int) -> list[np.ndarray]:
    """Split kept patches into spatial blocks of about ``block`` x ``block`` X1 patches.

    Returns index arrays into ``corners`` in block raster order, each in raster order inside
    the block, so that the concatenation is a fixed, deterministic patch order.
    """
    if len(corners) == 0:
        return []
    side = geometry.footprint * block
    bx = np.floor(corners[:, 0] / side).astype(np.int64)
    by = np.floor(corners[:, 1] / side).astype(np.int64)
    order = np.lexsort((corners[:, 0], corners[:, 1], bx, by))
    keys = by[order] * (bx.max() + 1) + bx[order]
    splits = np.flatnonzero(np.diff(keys)) + 1
    return np.split(order, splits)


def base_downsample(slide: Slide, mpp: float | None) -> float:
    """Level-0 downsample of X1: 1, or ``mpp`` / the slide's own µm per pixel (``--mpp``)."""
    if mpp is None:
        return 1.0
    if slide.mpp is None:
        raise MsnError(slide.path, "the slide records no microns per pixel; cannot use --mpp")
    if mpp < slide.mpp * 0.999:
        raise MsnError(
            slide.path, f"--mpp {mpp} is finer than the slide's base resolution ({slide.mpp:.4g})"
        )
    return mpp / slide.mpp


def check_walk_options(min_tissue: float, mpp: float | None) -> None:
    """The slide-walking options ``tile`` and ``predict`` share: bad values are usage errors."""
    if not 0.0 <= min_tissue <= 1.0:
        raise MsnUsageError("--min-tissue", f"{min_tissue} is not a fraction in [0, 1]")
    if mpp is not None and mpp <= 0:
        raise MsnUsageError("--mpp", "must be a positive number of microns per pixel")
