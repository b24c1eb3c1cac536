"""`msn tile`: throughput against bounds measured in the same run, store size, fidelity.

* decode bound: every native tile of the pyramid levels tile reads (those for 1x, 4x, 16x
  coarser) decoded once through OpenSlide with all workers; expressed as patch triplets/s
  (the slide's triplet count divided by that time). Nothing can tile faster without skipping
  decoding.
* naive baseline: one OpenSlide ``read_region`` per patch per level, one thread, writing
  nothing.
* store size: the store's bytes over the slide file's bytes (the benchmark slide is tissue
  everywhere, so the areas match; for another slide pass ``--min-tissue 0``).
* fidelity: PSNR of each branch's stored views against the triplets cut from the slide
  (predict's reader), over ``--psnr-patches`` patches spread over the slide.

Run: ``python benchmarks/tile.py`` (writes a 20480 x 20480 JPEG slide under
benchmarks/_work once, about a minute), ``--codec zstd:3`` for the lossless store,
``--slide my.svs`` for any slide. Goals: ratio to the decode bound >= 0.6, to the naive loop
> 1, store <= 1.5x the slide, PSNR >= 40 dB on every branch.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import tifffile

from msn_cli import progress
from msn_cli.io.annotations import LabelledPolygon, write_geojson
from msn_cli.io.patches import Levels, PatchGeometry, extract
from msn_cli.io.slide import open_slide
from msn_cli.io.store import PatchStore
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.synth import texture
from msn_cli.synth.pyramid import write_pyramid
from msn_cli.synth.slide import write_synthetic_slide
from msn_cli.vocab import BRANCHES

WORK = Path(__file__).parent / "_work"


def make_slide(size: int, content: str) -> Path:
    """A JPEG pyramid: ``dense`` tissue texture everywhere (what tiled patches look like on
    any slide once glass is skipped), or ``synthetic`` (msn synth's layout: much white glass,
    whose tiles decode several times faster)."""
    path = WORK / f"bench_{content}_{size}.tif"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if content == "synthetic":
        write_synthetic_slide(path, size=(size, size), seed=7, compression="jpeg")
    else:
        tiles = texture.texture_tiles(7)
        kinds = np.array([texture.NORMAL, texture.BENIGN, texture.TUMOUR], np.uint8)

        def render(y0: int, y1: int, w: int) -> np.ndarray:
            yy, xx = np.mgrid[y0:y1, 0:w]
            appearance = kinds[(xx // 1536 + yy // 1024) % 3]
            return texture.paint(appearance, tiles, 0, y0)

        write_pyramid(path, size, size, render, compression="jpeg")
        square = np.array([[1000, 1000], [9000, 1000], [9000, 7000], [1000, 7000]], float)
        write_geojson(path.with_suffix(".geojson"), [LabelledPolygon(1, "benign", square)])
    print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    return path


def decode_bound(path: Path, levels: list[int], workers: int) -> float:
    """Seconds to decode every native tile of ``levels`` once (OpenSlide, ``workers`` threads)."""
    tif = tifffile.TiffFile(path)
    local = threading.local()
    jobs = []
    osr = openslide.OpenSlide(str(path))
    for lv in levels:
        page = tif.pages[lv]
        tw, th = page.tilewidth, page.tilelength
        w, h = osr.level_dimensions[lv]
        ds = osr.level_downsamples[lv]
        for y in range(0, h, th):
            for x in range(0, w, tw):
                jobs.append((lv, int(x * ds), int(y * ds), min(tw, w - x), min(th, h - y)))

    def read(job):
        if not hasattr(local, "osr"):
            local.osr = openslide.OpenSlide(str(path))
        lv, x, y, w, h = job
        local.osr.read_region((x, y), lv, (w, h))

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read, jobs, chunksize=16))
    return time.perf_counter() - t


def fidelity(store: Path, slide_path: Path, n: int) -> list[float]:
    """PSNR (dB) of x1, x2, x3 views against the triplets cut from the slide, ``n`` patches."""
    rec = PatchStore.open(store).slides()[0]
    pick = np.unique(np.linspace(0, rec.n_patches - 1, min(n, rec.n_patches)).astype(int))
    geometry = PatchGeometry(rec.layout.patch_size, tuple(rec.downsamples))
    trip = extract(open_slide(slide_path), geometry, rec.read("centers", pick))
    out = []
    for b, key in enumerate(BRANCHES):
        err = rec.read(key, pick).astype(np.float64) - trip.x[b]
        mse = float(np.mean(err**2))
        out.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return out


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def naive_rate(path: Path, geometry: PatchGeometry, levels: list[int], n: int) -> float:
    """Triplets/s of one read_region per patch per level, one thread, writing nothing."""
    osr = openslide.OpenSlide(str(path))
    w0, h0 = osr.dimensions
    centres = geometry.centres(geometry.grid(w0, h0))[:n]
    p = geometry.patch_size
    t = time.perf_counter()
    for cx, cy in centres:
        for b, lv in enumerate(levels):
            half = p * geometry.downsamples[b] / 2
            osr.read_region((int(cx - half), int(cy - half)), lv, (p, p))
    return len(centres) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20480, help="slide side in pixels")
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--naive-patches", type=int, default=400)
    ap.add_argument("--content", choices=("dense", "synthetic"), default="dense")
    ap.add_argument("--slide", type=Path, help="benchmark this slide instead of a generated one")
    ap.add_argument("--codec", default="jpeg", help="tile's image codec (default: auto JPEG)")
    ap.add_argument("--min-tissue", type=float, default=0.0)
    ap.add_argument("--psnr-patches", type=int, default=400)
    args = ap.parse_args()
    progress.QUIET = True

    path = args.slide or make_slide(args.size, args.content)
    lv = Levels.parse("16x 4x 1x")
    geometry = PatchGeometry.create(args.patch_size, lv)
    slide = open_slide(path)
    used = sorted({slide.best_level(ds) for ds in geometry.downsamples})
    n_triplets = len(geometry.grid(*slide.dimensions))

    t_dec = decode_bound(path, used, args.workers)
    bound = n_triplets / t_dec
    naive = naive_rate(path, geometry, used, args.naive_patches)

    store = WORK / "bench_store.zarr"
    shutil.rmtree(store, ignore_errors=True)
    cfg = TileConfig(
        lv,
        ("normal", "benign", "in situ", "invasive"),
        args.patch_size,
        min_tissue=args.min_tissue,
        workers=args.workers,
        codec=args.codec,
    )
    t = time.perf_counter()
    res = tile(str(store), [SlideJob(path)], cfg)[0]
    t_tile = time.perf_counter() - t
    if res.status != "tiled":
        raise SystemExit(f"tile failed: {res.error}")
    rate = res.n_patches / t_tile
    ratio = tree_bytes(store) / path.stat().st_size
    codecs = [img.codec for img in PatchStore.open(store).slides()[0].layout.images]
    psnr = fidelity(store, path, args.psnr_patches)
    shutil.rmtree(store, ignore_errors=True)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"slide {path.name} {slide.dimensions[0]}x{slide.dimensions[1]}, {slide.vendor}, "
        f"patch {args.patch_size}, codec {args.codec} -> {', '.join(codecs)}, "
        f"levels used {used}, "
        f"{n_triplets} triplets, workers {args.workers}"
    )
    print(f"{'':28}{'triplets/s':>12}")
    print(f"{'decode bound (levels once)':28}{bound:12.1f}")
    print(f"{'naive read_region loop':28}{naive:12.1f}")
    print(f"{'msn tile (store written)':28}{rate:12.1f}")
    print(f"ratio to decode bound: {rate / bound:.2f} (goal >= 0.6)")
    print(f"ratio to naive loop:   {rate / naive:.2f} (goal > 1)")
    print(f"store / slide bytes:   {ratio:.2f} (goal <= 1.5)")
    print("PSNR x1 x2 x3 (dB):    " + " ".join(f"{p:.1f}" for p in psnr) + " (goal >= 40)")


if __name__ == "__main__":
    main()
