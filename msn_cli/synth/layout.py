"""Where things are on a synthetic slide: tissue blobs and the four classes' regions.

All lengths are level-0 pixels, scaled by ``patch / 256`` and shrunk for slides smaller than the
X3 field of view (``16 * patch``), so tiny test slides still hold every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msn_cli.synth.geometry import fill_polygon, polygon_area, shrink, star_polygon

#: BACH's classes, in label order (label value = index; 255 = unannotated).
CLASS_NAMES = ("normal", "benign", "in situ", "invasive")
#: Display colours (QuPath / ASAP), one per class.
CLASS_COLORS = ((46, 160, 67), (31, 119, 180), (255, 165, 0), (214, 39, 40))
NORMAL, BENIGN, IN_SITU, INVASIVE = range(4)


@dataclass(frozen=True)
class Region:
    """One annotated object: a class and one or more polygon parts (a MultiPolygon if > 1).

    ``walls`` holds, for an in situ duct, the inner outline of its dark wall (the band between
    the part and its wall outline is painted dark; both are inside the label).
    """

    label: int
    parts: tuple[np.ndarray, ...]
    walls: tuple[np.ndarray, ...] = ()

    @property
    def name(self) -> str:
        return CLASS_NAMES[self.label]


@dataclass(frozen=True)
class Layout:
    """Tissue outlines (unannotated, painted with the normal texture) and annotated regions."""

    width: int
    height: int
    tissue: tuple[np.ndarray, ...]
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class _Circle:
    x: float
    y: float
    r: float


class _Placer:
    """Random sequential placement of discs apart from each other, centred in the fragments."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, fragments, gap: float):
        self.rng, self.width, self.height, self.gap = rng, width, height, gap
        self.scale = max(1.0, max(width, height) / 1024)
        self.mask = np.zeros(
            (int(np.ceil(height / self.scale)), int(np.ceil(width / self.scale))), np.uint8
        )
        for poly in fragments:
            fill_polygon(self.mask, poly, 1, scale=self.scale)
        self.placed = np.zeros((0, 3))

    def _ok(self, c: np.ndarray, centred: bool) -> np.ndarray:
        """Which candidate discs (K, 3: x, y, r) fit; vectorised over candidates."""
        x, y, r = c[:, 0], c[:, 1], c[:, 2]
        ok = (x - r >= 1) & (y - r >= 1) & (x + r <= self.width - 1) & (y + r <= self.height - 1)
        if len(self.placed):
            p = self.placed
            d = np.hypot(x[:, None] - p[None, :, 0], y[:, None] - p[None, :, 1])
            ok &= ~(d < r[:, None] + p[None, :, 2] + self.gap).any(axis=1)
        if centred:
            i = np.clip((y / self.scale).astype(int), 0, self.mask.shape[0] - 1)
            j = np.clip((x / self.scale).astype(int), 0, self.mask.shape[1] - 1)
            ok &= self.mask[i, j].astype(bool)
        return ok

    def fits(self, c: _Circle) -> bool:
        """Whether a disc fits (anywhere in the image, not only centred in a fragment)."""
        return bool(self._ok(np.array([[c.x, c.y, c.r]]), centred=False)[0])

    def add(self, c: _Circle) -> None:
        self.placed = np.concatenate([self.placed, [[c.x, c.y, c.r]]])

    def place(self, radius: float, *, batches: int = 16) -> _Circle | None:
        """The first fitting disc among up to ``batches * 64`` random candidates, or None."""
        for _ in range(batches):
            c = np.empty((64, 3))
            c[:, 0] = self.rng.uniform(radius, max(radius + 1, self.width - radius), 64)
            c[:, 1] = self.rng.uniform(radius, max(radius + 1, self.height - radius), 64)
            c[:, 2] = radius
            hits = np.flatnonzero(self._ok(c, centred=True))
            if hits.size:
                found = _Circle(*(float(v) for v in c[hits[0]]))
                self.add(found)
                return found
        return None


def make_layout(rng: np.random.Generator, width: int, height: int, patch: int = 256) -> Layout:
    """Draw the tissue and regions of one slide (deterministic for the generator's state)."""
    s = patch / 256 * min(1.0, min(width, height) / (16 * patch))
    # tissue fragments: regions are centred inside these overlapping blobs
    blob_r = 1000 * s
    n_blobs = max(3, round(0.5 * width * height / (np.pi * blob_r**2)))
    fragments = []
    for _ in range(n_blobs):
        r = blob_r * rng.uniform(0.85, 1.15)
        cx = rng.uniform(r, width - r) if width > 2 * r else width / 2
        cy = rng.uniform(r, height - r) if height > 2 * r else height / 2
        fragments.append(star_polygon(rng, (cx, cy), r, harmonics=(2, 6), roughness=0.25))

    placer = _Placer(rng, width, height, fragments, gap=48 * s)
    regions: list[Region] = []
    area = dict.fromkeys(range(len(CLASS_NAMES)), 0.0)

    def add(region: Region | None) -> bool:
        if region is None:
            return False
        regions.append(region)
        area[region.label] += sum(polygon_area(p) for p in region.parts)
        return True

    # one of each class first (largest first), then fill the tissue, always adding to the
    # class with the least area so far, until no class fits any more
    for label in (INVASIVE, IN_SITU, BENIGN, NORMAL):
        add(_region(rng, placer, label, s, (1.0, 0.8, 0.6, 0.45, 0.3)))
    open_ = set(area)
    while open_ and len(regions) < 10_000:
        label = min(open_, key=lambda k: (area[k], k))
        if not add(_region(rng, placer, label, s, (1.0, 0.8, 0.65))):
            open_.discard(label)
    # the tissue is the union of a band of stroma around every part (the vertex mean of a star
    # polygon sampled uniformly in angle is its centre)
    halo = 64 * s
    tissue = tuple(
        np.clip(shrink(part, tuple(part.mean(axis=0)), -halo), 0, [width, height])
        for region in regions
        for part in region.parts
    )
    return Layout(width, height, tissue, tuple(regions))


def _region(
    rng: np.random.Generator, placer: _Placer, label: int, s: float, sizes: tuple[float, ...]
) -> Region | None:
    """A region of class ``label`` at the first size factor that finds room, or None."""
    for shrink_by in sizes:
        if label == INVASIVE:
            r = rng.uniform(380, 520) * s * shrink_by
            c = placer.place(1.4 * r)
            if c is None:
                continue
            main = star_polygon(rng, (c.x, c.y), r, harmonics=(3, 9), roughness=0.4)
            parts = [main]
            # satellite nests scattered around the main mass ("invasive" layout)
            for _ in range(int(rng.integers(2, 5))):
                sr = rng.uniform(0.18, 0.3) * r
                for _ in range(40):
                    ang, dist = rng.uniform(0, 2 * np.pi), c.r + rng.uniform(0.15, 0.6) * r
                    sat = _Circle(c.x + dist * np.cos(ang), c.y + dist * np.sin(ang), 1.3 * sr)
                    if placer.fits(sat):
                        placer.add(sat)
                        poly = star_polygon(
                            rng, (sat.x, sat.y), sr, harmonics=(2, 5), roughness=0.3, vertices=48
                        )
                        parts.append(poly)
                        break
            return Region(label, tuple(parts))
        lo, hi = (420, 580) if label == IN_SITU else (280, 440)
        r = rng.uniform(lo, hi) * s * shrink_by
        rough = 0.12 if label == IN_SITU else 0.25
        c = placer.place((1 + rough) * r)
        if c is None:
            continue
        poly = star_polygon(rng, (c.x, c.y), r, harmonics=(2, 5), roughness=rough)
        if label == IN_SITU:
            return Region(label, (poly,), (shrink(poly, (c.x, c.y), max(0.14 * r, 48 * s)),))
        return Region(label, (poly,))
    return None
