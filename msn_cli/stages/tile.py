"""Stage ``tile``: slides and annotations into the patch store.

For each slide: open it, find its labels, lay the X1 grid, keep patches with enough tissue
(measured on a thumbnail), then read the triplets block by block in worker threads (OpenSlide,
Pillow and the Zarr codecs release the GIL; no patch is copied between processes), and write
them in shard-aligned order while the next blocks decode. A slide whose group is complete and
whose fingerprint and tiling parameters match is skipped; any other existing group is redone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io import annotations as ann
from msn_cli.io.labelmask import MaskLabels
from msn_cli.io.patches import (
    Levels,
    PatchGeometry,
    base_downsample,
    check_walk_options,
    extract,
    region_blocks,
)
from msn_cli.io.slide import cached_slide, fingerprint, open_slide
from msn_cli.io.store import IGNORE_LABEL, SPLITS, PatchStore, StoreSpec, slide_name
from msn_cli.io.tissue import tissue_fractions
from msn_cli.io.walk import in_order
from msn_cli.progress import progress

log = logging.getLogger("msn")


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
    block: int = 8  # X1 patches per block side

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
    results = []
    for job in jobs:
        try:
            results.append(tile_slide(store, job, config))
        except MsnError as exc:
            results.append(
                SlideResult(job.slide, slide_name(job.slide), "failed", error=str(exc), exc=exc)
            )
        except OSError as exc:  # the store cannot be written (disk full, ...): stop here
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), store_url) from exc
            raise
    return results


def validate_config(config: TileConfig) -> None:
    if config.patch_size < 16:
        raise MsnUsageError("--patch-size", f"{config.patch_size} is too small (at least 16)")
    check_walk_options(config.min_tissue, config.mpp)
    if config.unannotated not in ("normal", "ignore"):
        raise MsnUsageError("--unannotated", "expected 'normal' (class 0) or 'ignore' (255)")
    if config.split not in SPLITS:
        raise MsnUsageError("--split", f"{config.split!r} is not one of {', '.join(SPLITS)}")
    if len(config.classes) < 2 or len(set(c.lower() for c in config.classes)) != len(
        config.classes
    ):
        raise MsnUsageError("--classes", "need at least two distinct class names")


def tile_slide(store: PatchStore, job: SlideJob, config: TileConfig) -> SlideResult:
    """Tile one slide into ``store`` (see the module docstring)."""
    t0 = time.perf_counter()
    name = slide_name(job.slide)
    split = job.split or config.split
    if split not in SPLITS:
        raise MsnError(job.slide, f"split {split!r} is not one of {', '.join(SPLITS)}")
    slide = open_slide(job.slide)
    label_path = job.labels or ann.find_annotations(job.slide)
    if label_path is None:
        raise MsnError(
            job.slide,
            "no annotations found beside it (<stem>.geojson, <stem>.xml or "
            "<stem>_mask.png); pass --annotations or --mask",
        )
    background = 0 if config.unannotated == "normal" else IGNORE_LABEL
    labels = ann.open_labels(
        label_path, config.classes, slide.dimensions, background, mask_values=config.mask_values
    )
    if config.mask_values and not isinstance(labels, MaskLabels):
        log.warning("%s: --mask-values applies to label masks only; ignored", label_path)
    base = base_downsample(slide, config.mpp)
    params = {
        "levels": list(config.levels.magnifications),
        "patch_size": config.patch_size,
        "mpp": config.mpp,
        "base_downsample": base,
        "min_tissue": config.min_tissue,
        "unannotated": config.unannotated,
        "mask_values": config.mask_values,
        "labels": str(Path(label_path).resolve()),
        "labels_fingerprint": fingerprint(label_path),
    }
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
        and existing.params == params
        and existing.split == split
    ):
        log.info("%s: already tiled, skipped", job.slide)
        return SlideResult(job.slide, name, "skipped", existing.n_patches, seconds=0.0)

    result = SlideResult(job.slide, name, "tiled")
    geometry = PatchGeometry.create(config.patch_size, config.levels, base)
    w0, h0 = slide.dimensions
    corners = geometry.grid(w0, h0)
    fractions = tissue_fractions(slide, corners, geometry.footprint)
    keep = np.flatnonzero(fractions >= config.min_tissue) if config.min_tissue > 0 else None
    kept = corners if keep is None else corners[keep]
    tissue = fractions if keep is None else fractions[keep]
    blocks = region_blocks(kept, geometry, config.block)
    order = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    centres = geometry.centres(kept[order])
    tissue = tissue[order]
    result.n_grid, result.n_patches = len(corners), len(order)
    if not len(order):
        result.warnings.append(f"{job.slide}: no tissue found; the slide has zero patches")

    attrs = {
        "source": str(job.slide.resolve()),
        "fingerprint": source_fp,
        "split": split,
        "size": [w0, h0],
        "mpp": slide.mpp,
        "vendor": slide.vendor,
        "downsamples": list(geometry.downsamples),
        "params": params,
    }
    writer = store.begin_slide(name, attrs, len(order))
    counts = _write_blocks(writer, job.slide, geometry, centres, blocks, labels, config, name)
    writer.finish(centres, tissue, label_pixels=[int(c) for c in counts])
    slide.close()
    result.seconds = time.perf_counter() - t0
    for w in result.warnings:
        log.warning(w)
    return result


def _write_blocks(writer, path, geometry, centres, blocks, labels, config, name) -> np.ndarray:
    """Decode blocks in worker threads, in order; write each shard as soon as it is full,
    while the next blocks decode.

    Returns the pixel count of each y1 label value (256 bins).
    """
    sizes = [len(b) for b in blocks]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)

    def work(i: int):
        trip = extract(cached_slide(path), geometry, centres[starts[i] : starts[i + 1]], labels)
        return trip, np.bincount(trip.y[0].ravel(), minlength=256)

    shard, buf = 0, writer.new_buffer()
    counts = np.zeros(256, dtype=np.int64)
    with (
        in_order(work, len(blocks), config.workers) as decoded,
        progress(name, len(centres), "patches") as bar,
    ):
        for trip, block_counts in decoded:
            counts += block_counts
            taken = 0
            while taken < len(trip.x[0]):
                taken += buf.add(trip.x, trip.y, taken)
                if buf.full:
                    writer.write_shard(shard, buf)
                    shard, buf.n = shard + 1, 0
            bar.advance(len(trip.x[0]))
        if buf.n:
            writer.write_shard(shard, buf)
    return counts
