"""`msn tile` with many small annotations (a cell-level GeoJSON) against one large polygon.

The bound is the same slide tiled in the same run with one annotated square: what tiling
costs when labels are nearly free. With ``--squares`` small squares (default 111 000, three
classes, on a lattice over the whole slide), the ratio shows what the labels add. The GeoJSON
parse is timed on its own (``read_annotations``), as it is a fixed cost per slide.

Run: ``python benchmarks/annotations.py`` (writes a 8192 x 8192 JPEG slide under
benchmarks/_work once). Goal: tiling with the squares, parse excluded, at >= 0.5 of the
one-square rate (the parse, ~35 µs a polygon, is paid once per slide whatever its size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
from tile import WORK, make_slide

from msn_cli import progress
from msn_cli.io.annotations import BACH_CLASSES, LabelledPolygon, read_annotations, write_geojson
from msn_cli.io.patches import Levels
from msn_cli.stages.tile import SlideJob, TileConfig, tile


def squares_geojson(path: Path, size: int, n: int) -> int:
    """About ``n`` squares of 8 x 8 level-0 pixels on a lattice over a ``size``-square slide."""
    pitch = max(9, int(size / n**0.5))
    names = ("benign", "in situ", "invasive")
    feats = []
    for k, (y, x) in enumerate(
        (y, x) for y in range(0, size - 8, pitch) for x in range(0, size - 8, pitch)
    ):
        ring = [[x, y], [x + 8, y], [x + 8, y + 8], [x, y + 8], [x, y]]
        props = {"objectType": "annotation", "classification": {"name": names[k % 3]}}
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": props})  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return len(feats)


def one_square(path: Path, size: int) -> None:
    q = [[size / 8, size / 8], [size / 2, size / 8], [size / 2, size / 2], [size / 8, size / 2]]
    write_geojson(path, [LabelledPolygon(1, "benign", np.array(q, float))])


def tile_seconds(slide: Path, labels: Path, cfg: TileConfig) -> tuple[int, float]:
    store = WORK / "bench_annotations.zarr"
    shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    res = tile(str(store), [SlideJob(slide, labels)], cfg)[0]
    seconds = time.perf_counter() - t
    shutil.rmtree(store, ignore_errors=True)
    if res.status != "tiled":
        raise SystemExit(f"tile failed: {res.error}")
    return res.n_patches, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="slide side in pixels")
    ap.add_argument("--squares", type=int, default=111_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    progress.QUIET = True

    slide = make_slide(args.size, "dense")
    many = WORK / f"squares_{args.size}_{args.squares}.geojson"
    n = squares_geojson(many, args.size, args.squares)
    t = time.perf_counter()
    read_annotations(many, BACH_CLASSES)
    parse = time.perf_counter() - t
    cfg = TileConfig(Levels.parse("16x 4x 1x"), BACH_CLASSES, 256, min_tissue=0.0,
                     workers=args.workers)  # fmt: skip
    one_square(WORK / "one_square.geojson", args.size)
    n_one, t_one = tile_seconds(slide, WORK / "one_square.geojson", cfg)
    n_many, t_many = tile_seconds(slide, many, cfg)
    one, small, labels_only = n_one / t_one, n_many / t_many, n_many / (t_many - parse)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"slide {slide.name}, {n} squares of 8x8 px, workers {args.workers}"
    )
    print(f"parse {n} polygons:        {parse:.2f} s ({parse / n * 1e6:.0f} µs each)")
    print(f"tile, one square:          {one:8.1f} patches/s")
    print(f"tile, {n} squares:     {small:8.1f} patches/s (parse included)")
    print(f"tile, {n} squares:     {labels_only:8.1f} patches/s (parse excluded)")
    print(f"ratio with parse: {small / one:.2f}; without: {labels_only / one:.2f} (goal >= 0.5)")


if __name__ == "__main__":
    main()
