"""Writing one slide's branch images into its store group, shard by shard.

Each unit of work is one shard of one branch's image: the part of it under some kept patch's
field of view is read from the slide at the branch's exact scale (one read of the best pyramid
level, resampled once), its labels are rasterised at the same pixels, and every needed chunk
is compressed; the shard file is then stored whole. Units run in worker threads, in order,
while the main thread stores finished shards (:func:`~msn_cli.io.walk.in_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msn_cli.io.codecs import LABEL_CODEC, ChunkCodec
from msn_cli.io.shards import shard_bytes
from msn_cli.io.slide import cached_slide, read_scaled
from msn_cli.io.store import IMAGES, LABELS, SHARD_CHUNKS, SlideLayout
from msn_cli.io.walk import in_order
from msn_cli.progress import progress


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
            writer.put(IMAGES[u.branch], u.shard, image)
            writer.put(LABELS[u.branch], u.shard, label)
            if unit_counts is not None:
                counts += unit_counts
            bar.advance(int(u.need.sum()))
    return counts


def encode_unit(slide, labels, layout: SlideLayout, u: Unit, image_codec, label_codec, x1_rects):
    """(image shard bytes, label shard bytes, y1 counts under X1 patches or None) of one unit."""
    c, p = layout.chunk, layout.patch_size
    rows, cols = np.nonzero(u.need)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    py = (u.shard[0] * SHARD_CHUNKS + r0) * c
    px = (u.shard[1] * SHARD_CHUNKS + c0) * c
    h, w = int(r1 - r0) * c, int(c1 - c0) * c
    img = layout.images[u.branch]
    x0, y0 = img.origin[0] + px * img.downsample, img.origin[1] + py * img.downsample
    pixels = read_scaled(slide, x0, y0, img.downsample, w, h)
    lab = labels.region(x0, y0, img.downsample, h, w)
    images, labs = {}, {}
    for r, k in zip(rows, cols, strict=True):
        sl = (slice((r - r0) * c, (r - r0 + 1) * c), slice((k - c0) * c, (k - c0 + 1) * c))
        images[(int(r), int(k), 0)] = image_codec.encode(pixels[sl])
        labs[(int(r), int(k))] = label_codec.encode(lab[sl])
    grid = (SHARD_CHUNKS, SHARD_CHUNKS)
    counts = None
    if u.branch == 0:
        under = np.zeros((h, w), dtype=bool)
        for x, y in x1_rects:
            ya, yb = max(y - py, 0), min(y + p - py, h)
            xa, xb = max(x - px, 0), min(x + p - px, w)
            if ya < yb and xa < xb:
                under[ya:yb, xa:xb] = True
        counts = np.bincount(lab[under], minlength=256)
    return shard_bytes(images, (*grid, 1)), shard_bytes(labs, grid), counts
