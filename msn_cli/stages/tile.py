"""Stage ``tile``: slides and annotations into the patch store.

For each slide: open it, find its labels (none: every pixel is ``--unannotated``, with a
warning), lay the X1 grid, keep patches with enough tissue (measured on a thumbnail), then
write each branch's image once, shard by shard: every shard under some kept patch's field of
view is read at its branch's exact scale, rasterised, and compressed in worker threads
(OpenSlide, Pillow and the codecs release the GIL), and stored while the next ones decode
(:mod:`msn_cli.stages.tile_write`). A slide whose group is complete and
whose fingerprint and tiling parameters match is skipped; any other existing group is redone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io import annotations as ann
from msn_cli.io.codecs import DEFAULT_LOSSY, ChunkCodec
from msn_cli.io.labelmask import MaskLabels
from msn_cli.io.lock import Busy
from msn_cli.io.patches import (
    Levels,
    PatchGeometry,
    base_downsample,
    check_patch_size,
    check_walk_options,
    region_blocks,
)
from msn_cli.io.rasterise import PolygonLabels
from msn_cli.io.slide import fingerprint, is_copy, open_slide
from msn_cli.io.store import (
    MAX_PATCH_SIZE,
    SPLITS,
    BranchImage,
    PatchStore,
    SlideAttrs,
    SlideLayout,
    StoreSpec,
    TileParams,
    slide_name,
)
from msn_cli.io.tissue import tissue_fractions
from msn_cli.stages.tile_write import write_images
from msn_cli.vocab import IGNORE

log = logging.getLogger("msn")
PATCH_BLOCK = 8


@dataclass(frozen=True)
class TileConfig:
    """Settings shared by every slide of one ``msn tile`` run.

    Example:
        >>> TileConfig(Levels.parse("16x 4x 1x"), classes=("normal", "tumour")).patch_size
        256
    """

    levels: Levels
    classes: tuple[str, ...]
    patch_size: int = 256
    split: str = "train"
    min_tissue: float = 0.1
    unannotated: str = "normal"  # "normal": class 0; "ignore": 255
    mpp: float | None = None
    mask_values: str | None = None
    workers: int = 0  # 0: one per CPU
    codec: str = DEFAULT_LOSSY  # images: "jpeg" (auto quality), "jpeg:Q", lossless "zstd:3"

    def spec(self) -> StoreSpec:
        return StoreSpec(self.patch_size, self.levels.magnifications, tuple(self.classes))


@dataclass(frozen=True)
class SlideJob:
    """One slide to tile: its path, its labels (None: look beside it) and its split."""

    slide: Path
    labels: Path | None = None
    split: str | None = None


@dataclass
class SlideResult:
    slide: Path
    name: str
    status: str  # "tiled", "skipped" or "failed"
    n_patches: int = 0
    n_grid: int = 0
    seconds: float = 0.0
    error: str | None = None
    exc: BaseException | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)


def tile(store_url: str, jobs: Sequence[SlideJob], config: TileConfig) -> list[SlideResult]:
    """Tile every job into the store. A failing slide is reported and the others go on."""
    validate_config(config)
    store = PatchStore.create(store_url, config.spec())
    results: list[SlideResult | None] = [None] * len(jobs)
    busy: list[int] = []
    for i, job in enumerate(jobs):  # a slide another process is tiling waits till the end
        results[i] = _tile_or_report(store, job, config, wait=False)
        if results[i] is None:
            busy.append(i)
    for i in busy:
        results[i] = _tile_or_report(store, jobs[i], config, wait=True)
    return [r for r in results if r is not None]


def _tile_or_report(store, job, config, wait: bool) -> SlideResult | None:
    """``tile_slide``; a failure as a "failed" result; None if another process holds it."""
    try:
        return tile_slide(store, job, config, wait=wait)
    except Busy as exc:
        log.info("%s: %s is tiling it; coming back to it after the others", job.slide, exc.holder)
        return None
    except MsnError as exc:
        return SlideResult(job.slide, slide_name(job.slide), "failed", error=str(exc), exc=exc)
    except OSError as exc:  # the store cannot be written (disk full, ...): stop here
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), store.url) from exc
        raise


def validate_config(config: TileConfig) -> None:
    if config.patch_size < 16:
        raise MsnUsageError("--patch-size", f"{config.patch_size} is too small (at least 16)")
    if config.patch_size > MAX_PATCH_SIZE:
        raise MsnUsageError(
            "--patch-size", f"{config.patch_size} is too large (at most {MAX_PATCH_SIZE})"
        )
    check_walk_options(config.min_tissue, config.mpp)
    check_patch_size(config.patch_size, config.levels)
    ChunkCodec.parse(config.codec)
    if config.unannotated not in ("normal", "ignore"):
        raise MsnUsageError("--unannotated", "expected 'normal' (class 0) or 'ignore' (255)")
    if config.split not in SPLITS:
        raise MsnUsageError("--split", f"{config.split!r} is not one of {', '.join(SPLITS)}")
    if len(config.classes) < 2 or len(set(c.lower() for c in config.classes)) != len(
        config.classes
    ):
        raise MsnUsageError("--classes", "need at least two distinct class names")


def tile_slide(
    store: PatchStore, job: SlideJob, config: TileConfig, wait: bool = True
) -> SlideResult:
    """Tile one slide into ``store`` (see the module docstring), holding its lock: while
    another process tiles the same slide, wait for it (then this one is usually skipped as
    already tiled), or raise :class:`~msn_cli.io.lock.Busy` unless ``wait``."""
    t0 = time.perf_counter()
    name = slide_name(job.slide)
    split = job.split or config.split
    if split not in SPLITS:
        raise MsnError(job.slide, f"split {split!r} is not one of {', '.join(SPLITS)}")

    def tile() -> SlideResult:
        with ExitStack() as opened:  # the slide and its label mask: closed whatever happens
            slide = open_slide(job.slide)
            opened.callback(slide.close)
            return _tile_open_slide(store, job, config, slide, name, split, t0, opened)

    try:
        with store.slide_lock(name):
            return tile()
    except Busy as exc:
        if not wait:
            raise
        log.info("%s: waiting for %s to finish tiling it", job.slide, exc.holder)
    with store.slide_lock(name, wait=True):
        return tile()


def _tile_open_slide(store, job, config, slide, name, split, t0, opened) -> SlideResult:
    """Tile an open slide; what it opens itself (a label mask) goes on the ``opened`` stack."""
    result = SlideResult(job.slide, name, "tiled")
    background = 0 if config.unannotated == "normal" else IGNORE
    label_path = job.labels or ann.find_annotations(job.slide)
    if label_path is None:
        what = "class 0" if background == 0 else "ignore (255)"
        result.warnings.append(
            f"{job.slide}: no annotations found beside it; every pixel is {what} "
            "(--unannotated); pass --annotations or --mask to label it"
        )
        labels = PolygonLabels([], slide.dimensions, background)
    else:
        labels = ann.open_labels(
            label_path, config.classes, slide.dimensions, background, mask_values=config.mask_values
        )
        if isinstance(labels, MaskLabels):
            opened.callback(labels.close)
    if config.mask_values and not isinstance(labels, MaskLabels):
        log.warning("%s: --mask-values applies to label masks only; ignored", label_path)
    base = base_downsample(slide, config.mpp)
    params = TileParams(
        levels=config.levels.magnifications,
        patch_size=config.patch_size,
        mpp=config.mpp,
        base_downsample=base,
        min_tissue=config.min_tissue,
        unannotated=config.unannotated,
        mask_values=config.mask_values,
        labels=str(Path(label_path).resolve()) if label_path else None,
        labels_fingerprint=fingerprint(label_path) if label_path else None,
        codec=str(ChunkCodec.parse(config.codec)),
    )
    source_fp = fingerprint(job.slide)
    existing = store.slide(name)
    if existing is not None and existing.attrs.get("source") != str(job.slide.resolve()):
        raise MsnError(
            job.slide,
            f"the store already has a slide {name!r} from {existing.source}; rename one of them",
        )
    if (
        existing is not None
        and existing.complete
        and existing.fingerprint == source_fp
        and existing.params == params.to_attrs()
        and existing.split == split
    ):
        log.info("%s: already tiled, skipped", job.slide)
        return SlideResult(job.slide, name, "skipped", existing.n_patches, seconds=0.0)

    geometry = PatchGeometry.create(config.patch_size, config.levels, base)
    w0, h0 = slide.dimensions
    grid_px = geometry.grid_px(w0, h0)
    corners = grid_px * geometry.downsamples[0]
    fractions = tissue_fractions(slide, corners, geometry.footprint)
    keep = np.flatnonzero(fractions >= config.min_tissue) if config.min_tissue > 0 else None
    kept_px = grid_px if keep is None else grid_px[keep]
    tissue = fractions if keep is None else fractions[keep]
    # Patch order: blocks of 8 x 8 grid cells, raster order inside each (neighbours stay
    # together for the chunk cache; the order of msn 0.1, so seeds shuffle the same patches).
    blocks = region_blocks(kept_px * geometry.downsamples[0], geometry, PATCH_BLOCK)
    order = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    kept_px, tissue = kept_px[order], tissue[order]
    result.n_grid, result.n_patches = len(grid_px), len(kept_px)
    if not len(kept_px):
        result.warnings.append(f"{job.slide}: no tissue found; the slide has zero patches")
    table = _patch_table(geometry, grid_px, kept_px, tissue)
    layout = _layout(slide, geometry, table["origins"], ChunkCodec.parse(config.codec))

    attrs = SlideAttrs(
        source=str(job.slide.resolve()),
        fingerprint=source_fp,
        split=split,
        size=(w0, h0),
        mpp=slide.mpp,
        vendor=slide.vendor,
        downsamples=geometry.downsamples,
        params=params,
    )
    writer = store.begin_slide(name, attrs, layout, len(kept_px))
    counts = write_images(writer, job.slide, layout, table["origins"], labels, config.workers, name)
    writer.finish(table, label_pixels=[int(c) for c in counts])
    result.seconds = time.perf_counter() - t0
    for w in result.warnings:
        log.warning(w)
    return result


def _patch_table(geometry: PatchGeometry, grid_px, kept_px, tissue) -> dict[str, np.ndarray]:
    """The patch table of the kept patches (raster order): centres, tissue, grid cell, views."""
    cols = np.unique(grid_px[:, 0]) if len(grid_px) else np.zeros(0)
    rows = np.unique(grid_px[:, 1]) if len(grid_px) else np.zeros(0)
    cell = np.stack(
        [np.searchsorted(cols, kept_px[:, 0]), np.searchsorted(rows, kept_px[:, 1])], axis=1
    )
    return {
        "centers": kept_px * geometry.downsamples[0] + geometry.footprint / 2.0,
        "tissue": tissue.astype(np.float32),
        "grid": cell.astype(np.int32).reshape(-1, 2),
        "origins": geometry.view_origins(kept_px).astype(np.int32).reshape(-1, 3, 2),
    }


def _layout(slide, geometry: PatchGeometry, origins: np.ndarray, codec: ChunkCodec) -> SlideLayout:
    """Each branch's image: just large enough for every kept patch's view, with its codec."""
    p = geometry.patch_size
    images = []
    for b, ds in enumerate(geometry.downsamples):
        o = geometry.image_origin(b)
        far = origins[:, b].max(axis=0) + p if len(origins) else np.zeros(2, np.int64)
        source = _copied_jpeg(slide, o, ds, p) if codec.level is None else None
        chosen = str(codec.resolve(source))
        images.append(BranchImage((o, o), ds, (int(far[1]), int(far[0])), chosen))
    return SlideLayout(tuple(images), p, p)  # type: ignore[arg-type]


def _copied_jpeg(slide, origin: float, downsample: float, chunk: int) -> tuple[int, str] | None:
    """(quality, subsampling) of the JPEG pyramid level a branch image copies on its block
    grid (same scale; origin and chunks on the level's 8- or 16-pixel MCUs), or None
    (resampled, off the blocks, or not JPEG)."""
    from msn_cli.io.jpegq import level_jpeg

    if not is_copy(slide, origin, origin, downsample):
        return None
    level = slide.best_level(downsample)
    lv = slide.levels[level]
    offsets = [origin / lv.downsample_x, origin / lv.downsample_y]
    source = level_jpeg(slide.path, level)
    if source is None:
        return None
    mcu = 8 if source[1] == "444" else 16
    if chunk % mcu or any(round(o) % mcu for o in offsets):
        return None
    return source
