"""Writing one slide's branch images into its store group, shard by shard.

Each unit of work is one shard of one branch's image: the part of it under some kept patch's
field of view is read from the slide at the branch's exact scale (one read of the best pyramid
level, resampled once), its labels are rasterised at the same pixels, and every needed chunk
is compressed; the shard file is then stored whole. Units run in worker threads, in order,
while the main thread stores finished shards (:func:`~msn_cli.io.workers.in_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msn_cli.io.codecs import LABEL_CODEC, ChunkCodec
from msn_cli.io.shards import shard_bytes
from msn_cli.io.slide import cached_slide, is_copy, read_scaled
from msn_cli.io.store import SHARD_CHUNKS, SlideLayout
from msn_cli.io.workers import in_order
from msn_cli.progress import progress
from msn_cli.vocab import BRANCHES, LABELS

#: The most level pixels one resampled read decodes (16 Mpx: 64 MB as RGBA, per worker).
RESAMPLE_SOURCE_PIXELS = 16 << 20


@dataclass(frozen=True)
class Unit:
    """One shard of one branch image and the chunks of it that views touch."""

    branch: int
    shard: tuple[int, int]  # row, column in the shard grid
    need: np.ndarray  # (SHARD_CHUNKS, SHARD_CHUNKS) bool


def plan(layout: SlideLayout, origins: np.ndarray) -> list[Unit]:
    """Every shard with a needed chunk, X3's first (the largest regions), X1's last."""
    s = SHARD_CHUNKS
    units = []
    for b in (2, 1, 0):
        need = layout.needed_chunks(b, origins[:, b])
        rows, cols = layout.shard_grid(b)
        padded = np.zeros((rows * s, cols * s), dtype=bool)
        padded[: need.shape[0], : need.shape[1]] = need
        for r in range(rows):
            for c in range(cols):
                part = padded[r * s : (r + 1) * s, c * s : (c + 1) * s]
                if part.any():
                    units.append(Unit(b, (r, c), part.copy()))
    return units


def write_images(writer, path, layout: SlideLayout, origins, labels, workers: int, name: str):
    """Write every needed shard of x1..x3 and y1..y3; returns the pixel count of each y1 value
    (256 bins) under the X1 patches."""
    units = plan(layout, origins)
    codecs = [ChunkCodec.parse(img.codec) for img in layout.images]
    label_codec = ChunkCodec.parse(LABEL_CODEC)
    x1_rects = origins[:, 0] if len(origins) else np.zeros((0, 2), np.int64)

    def work(i: int):
        u = units[i]
        return encode_unit(
            cached_slide(path), labels, layout, u, codecs[u.branch], label_codec, x1_rects
        )

    counts = np.zeros(256, dtype=np.int64)
    total = int(sum(u.need.sum() for u in units))
    with in_order(work, len(units), workers) as done, progress(name, total, "chunks") as bar:
        for u, (image, label, unit_counts) in zip(units, done, strict=True):
            writer.put(BRANCHES[u.branch], u.shard, image)
            writer.put(LABELS[u.branch], u.shard, label)
            if unit_counts is not None:
                counts += unit_counts
            bar.advance(int(u.need.sum()))
    return counts


def encode_unit(slide, labels, layout: SlideLayout, u: Unit, image_codec, label_codec, x1_rects):
    """(image shard bytes, label shard bytes, y1 counts under X1 patches or None) of one unit.

    A branch copied from a pyramid level is read, rasterised and encoded one chunk row at a
    time, so a strip's pixels stay in the CPU's cache between decoding and encoding (a whole
    shard's 16 MB would not); a resampled branch is resampled once for the whole unit."""
    c = layout.chunk
    img = layout.images[u.branch]
    images, labs = {}, {}
    counts = np.zeros(256, dtype=np.int64) if u.branch == 0 else None
    rows, cols = np.nonzero(u.need)
    copied = is_copy(slide, img.origin[0], img.origin[1], img.downsample)
    for ra, rb, ka, kb in _blocks(slide, img.downsample, rows, cols, c, copied):
        inside = (rows >= ra) & (rows < rb) & (cols >= ka) & (cols < kb)
        if not inside.any():
            continue
        ra, rb = int(rows[inside].min()), int(rows[inside].max()) + 1
        k0, k1 = int(cols[inside].min()), int(cols[inside].max()) + 1
        py = (u.shard[0] * SHARD_CHUNKS + int(ra)) * c
        px = (u.shard[1] * SHARD_CHUNKS + k0) * c
        w, h = (k1 - k0) * c, int(rb - ra) * c
        x0, y0 = img.origin[0] + px * img.downsample, img.origin[1] + py * img.downsample
        pixels = read_scaled(slide, x0, y0, img.downsample, w, h)
        lab = labels.region(x0, y0, img.downsample, h, w)
        for r, k in zip(rows[inside], cols[inside], strict=True):
            sl = (slice((r - ra) * c, (r - ra + 1) * c), slice((k - k0) * c, (k - k0 + 1) * c))
            images[(int(r), int(k), 0)] = image_codec.encode(pixels[sl])
            labs[(int(r), int(k))] = label_codec.encode(lab[sl])
        if counts is not None:
            counts += _counts_under(lab, px, py, x1_rects, layout.patch_size)
    grid = (SHARD_CHUNKS, SHARD_CHUNKS)
    return shard_bytes(images, (*grid, 1)), shard_bytes(labs, grid), counts


def _blocks(slide, downsample: float, rows, cols, c: int, copied: bool):
    """The chunk blocks (row and column ranges) of a unit read at once: a copied branch one
    chunk row at a time; a resampled one whole, unless that would decode more than
    ``RESAMPLE_SOURCE_PIXELS`` of its level (a slide without a pyramid: X1 comes from level 0),
    then a chunk row, or a chunk, at a time."""
    r0, r1, k0, k1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    if copied:
        return [(r, r + 1, k0, k1) for r in np.unique(rows)]
    lv = slide.levels[slide.best_level(downsample)]
    rel = downsample / min(lv.downsample_x, lv.downsample_y)  # level pixels per image pixel
    chunk_src = (c * rel) ** 2
    if (r1 - r0) * (k1 - k0) * chunk_src <= RESAMPLE_SOURCE_PIXELS:
        return [(r0, r1, k0, k1)]
    if (k1 - k0) * chunk_src <= RESAMPLE_SOURCE_PIXELS:
        return [(r, r + 1, k0, k1) for r in np.unique(rows)]
    return [(int(r), int(r) + 1, int(k), int(k) + 1) for r, k in zip(rows, cols, strict=True)]


def _counts_under(lab: np.ndarray, px: int, py: int, rects: np.ndarray, p: int) -> np.ndarray:
    """Pixel count of each label value of ``lab`` (whose (0, 0) is X1 pixel (px, py)) under
    the X1 patches starting at ``rects`` (each pixel once where patches overlap)."""
    h, w = lab.shape
    x, y = rects[:, 0], rects[:, 1]
    hit = rects[(x < px + w) & (x + p > px) & (y < py + h) & (y + p > py)]
    under = np.zeros((h, w), dtype=bool)
    for xa, ya in hit - (px, py):
        under[max(ya, 0) : max(ya + p, 0), max(xa, 0) : max(xa + p, 0)] = True
    return label_counts(lab if under.all() else lab[under])


def label_counts(lab: np.ndarray) -> np.ndarray:
    """The count of each value (256 bins) of a uint8 label array. Labels hold few distinct
    values: one comparison per value present costs a tenth of widening every pixel for
    ``np.bincount``."""
    flat = lab.ravel()
    out = np.zeros(256, dtype=np.int64)
    if not flat.size:
        return out
    seen = np.unique(flat[:: max(1, flat.size // 4096)])
    if len(seen) > 8:
        return np.bincount(flat, minlength=256)
    for v in seen:
        out[v] = np.count_nonzero(flat == v)
    rest = flat.size - int(out.sum())
    return out if rest == 0 else np.bincount(flat, minlength=256)
