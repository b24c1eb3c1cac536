"""Stage ``predict``: whole slides into pyramidal TIFF label masks (plus GeoJSON, overlay, Zarr).

For each slide: lay the paper's X1 grid (:class:`~msn_cli.io.patches.PatchGeometry`, as
``tile`` does), measure each patch's tissue on a thumbnail, read the triplets of tissue patches
with the one triplet reader (:func:`~msn_cli.io.patches.extract`) in worker threads, run the
checkpoint's chosen output on batches in the main thread, and paint the labels into a *band*:
the level-0 rows owned by one row of X1 patches. Background patches are class 0 without a model
call. Each finished band is written (zstd) to ``<out>.partial/`` by a writer thread, so only
one band of predictions is ever in memory; a killed run, rerun, keeps the finished bands.
When every band exists, the pyramidal TIFF is assembled from them (see
:mod:`msn_cli.io.maskwriter`) under a temporary name, the extras are derived, and the TIFF is
renamed to ``--out``; then the partial folder is removed.

Overlap rule: the last X1 patch of each row and column is shifted back inside the image and
overlaps its neighbour; *the later patch wins* (raster order: a row over the row above it, a
column over the column to its left). Each level-0 pixel therefore belongs to exactly one patch:
the last one covering its centre.

This module holds the settings, the checks and the per-slide orchestration; the pieces live in
:mod:`msn_cli.prediction` (model, band walk, partial folder, assembly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.lock import Busy, exclusive
from msn_cli.io.maskwriter import read_description
from msn_cli.io.patches import Levels, PatchGeometry, base_downsample, check_walk_options
from msn_cli.io.slide import fingerprint, open_slide
from msn_cli.prediction.assemble import assemble, write_extras, zarr_key
from msn_cli.prediction.partial import BandStore, partial_dir
from msn_cli.prediction.predictor import Predictor
from msn_cli.prediction.walk import Axis, run_bands

log = logging.getLogger("msn")
BRANCH_CHOICES = ("fusion", "x1", "x2", "x3")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PredictConfig:
    """Settings shared by every slide of one ``msn predict`` run.

    Example:
        >>> PredictConfig(Path("checkpoints"), branch="x1").batch_size
        32
    """

    checkpoints: Path
    branch: str | None = None  # None: fusion when trained, else x1 (or the baseline's input)
    batch_size: int = 32
    device: str = "auto"
    min_tissue: float = 0.01  # 0: predict every patch
    mpp: float | None = None
    workers: int = 0
    amp: bool = False
    classes: tuple[str, ...] | None = None  # expected class names (refuse other checkpoints)
    probabilities_downsample: int = 16
    geojson_frame: str = "qupath"  # or "level0"
    trace_max_side: int = 4096
    overlay_max_side: int = 1024


@dataclass(frozen=True)
class PredictJob:
    """One slide and where its outputs go."""

    slide: Path
    out: Path
    probabilities: Path | None = None
    geojson: Path | None = None
    overlay: Path | None = None

    def outputs(self) -> list[Path]:
        return [p for p in (self.out, self.probabilities, self.geojson, self.overlay) if p]


@dataclass
class PredictResult:
    slide: Path
    out: Path
    status: str  # "predicted", "resumed", "skipped" or "failed"
    n_grid: int = 0
    n_predicted: int = 0
    bands_reused: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    exc: BaseException | None = field(default=None, repr=False)


def predict(jobs: Sequence[PredictJob], config: PredictConfig) -> list[PredictResult]:
    """Predict every job. Bad settings or checkpoints raise; a failing slide is reported and
    the others go on."""
    validate(config, jobs)
    predictor = Predictor(config)
    results = []
    for job in jobs:
        try:
            results.append(predict_slide(predictor, job, config))
        except MsnError as exc:
            results.append(PredictResult(job.slide, job.out, "failed", error=str(exc), exc=exc))
    return results


def validate(config: PredictConfig, jobs: Sequence[PredictJob]) -> None:
    if config.batch_size < 1:
        raise MsnUsageError("--batch-size", f"{config.batch_size} is not a positive number")
    check_walk_options(config.min_tissue, config.mpp)
    if config.branch is not None and config.branch not in BRANCH_CHOICES:
        raise MsnUsageError("--branch", f"{config.branch!r} is not one of fusion, x1, x2, x3")
    if config.geojson_frame not in ("qupath", "level0"):
        raise MsnUsageError("--geojson-frame", "expected qupath or level0")
    seen: dict[Path, Path] = {}
    for job in jobs:
        for p in job.outputs():
            key = p.resolve()
            if key in seen:
                raise MsnUsageError(p, f"written twice (for {seen[key]} and {job.slide})")
            seen[key] = job.slide
            check_writable(p)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written."""
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise MsnError(path, "is a folder; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MsnError(path, f"cannot write here: {exc.strerror or exc}") from None


def predict_slide(predictor: Predictor, job: PredictJob, config: PredictConfig) -> PredictResult:
    """Predict one slide (see the module docstring), holding ``--out``'s lock."""
    t0 = time.perf_counter()
    try:
        with exclusive(job.out.with_name(f".{job.out.name}.lock")):
            slide = open_slide(job.slide)
            try:
                return _predict_open(predictor, job, config, slide, t0)
            finally:
                slide.close()
    except Busy as exc:
        raise MsnError(
            job.out, f"{exc.holder} is writing it; wait for it to end or choose another --out"
        ) from None


def _predict_open(predictor, job, config, slide, t0) -> PredictResult:
    w0, h0 = slide.dimensions
    base = base_downsample(slide, config.mpp)
    p = predictor.patch_size
    geometry = PatchGeometry.create(p, Levels(predictor.card.magnifications), base)
    corners = geometry.grid(w0, h0)
    ncols = len(np.unique(corners[:, 0]))
    nrows = len(corners) // ncols
    d = config.probabilities_downsample
    key = {
        "format": FORMAT_VERSION,
        "slide": fingerprint(job.slide),
        "checkpoint": predictor.key,
        "branch": predictor.branch,
        "min_tissue": config.min_tissue,
        "base_downsample": base,
        "amp": predictor.amp,
    }
    mask_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    result = PredictResult(job.slide, job.out, "predicted", n_grid=len(corners))
    result.megapixels = w0 * h0 / 1e6
    desc = read_description(job.out) if job.out.is_file() else None
    probs_ok = job.probabilities is None or zarr_key(job.probabilities) == mask_key
    if desc is not None and desc.get("key") == mask_key and probs_ok:
        write_extras(job, config, slide, predictor, job.out, only_missing=True)
        result.status = "skipped"
        result.seconds = time.perf_counter() - t0
        log.info("%s: already predicted into %s, skipped", job.slide, job.out)
        return result

    xs_axis = Axis.create(corners[:ncols, 0], w0, base, p, d)
    ys_axis = Axis.create(corners[::ncols, 1], h0, base, p, d)
    store = BandStore(partial_dir(job.out), {**key, "probabilities": job.probabilities and d})
    try:
        todo_rows = [r for r in range(nrows) if not store.done(r)]
        result.bands_reused = nrows - len(todo_rows)
        if result.bands_reused:
            result.status = "resumed"
        result.n_predicted = run_bands(
            predictor, job, config, geometry, corners, ncols, xs_axis, ys_axis, store, todo_rows
        )
        assemble(predictor, job, config, slide, store, xs_axis, ys_axis, mask_key, d)
    except MsnError:
        store.remove()  # bad input: leave nothing behind (a kill keeps the bands)
        raise
    store.remove()
    result.seconds = time.perf_counter() - t0
    return result
