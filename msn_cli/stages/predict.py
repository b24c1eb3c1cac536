"""Stage ``predict``: whole slides into pyramidal TIFF label masks (plus GeoJSON, overlay, Zarr).

For each slide: lay the paper's X1 grid (:class:`~msn_cli.io.patches.PatchGeometry`, as
``tile`` does), measure each patch's tissue on a thumbnail, read the triplets of tissue patches
with the one triplet reader (:func:`~msn_cli.io.patches.extract`) in worker threads, run the
checkpoint's chosen output on batches in the main thread, and paint the labels into a *band*:
the level-0 rows owned by one row of X1 patches. Background patches are class 0 without a model
call. Each finished band is written (zstd) to ``<out>.partial/`` by a writer thread, so only
one band of predictions is ever in memory; a killed run, rerun, keeps the finished bands.
When every band exists, the pyramidal TIFF is assembled from them (see
:mod:`msn_cli.io.maskwriter`, or :mod:`msn_cli.io.ometiff` for ``--format ome-tiff``) under a
temporary name, the extras are derived, and the TIFF is renamed to ``--out``; then the partial
folder is removed. The bands keep per-class probabilities when ``--probabilities`` or
``--geojson`` (its mean class probability per polygon) asks for them.

A finished ``--out`` is recognised by the job key in its description (the JSON of the generic
TIFF's ImageDescription, or of the OME Image Description) and its container matching the
format asked for; it is then skipped, and only missing extras are derived from it. A missing
GeoJSON needs the probabilities: from the finished ``--probabilities`` Zarr of the same job,
else the slide is predicted again.

Overlap rule: the last X1 patch of each row and column is shifted back inside the image and
overlaps its neighbour; *the later patch wins* (raster order: a row over the row above it, a
column over the column to its left). Each level-0 pixel therefore belongs to exactly one patch:
the last one covering its centre.

This module holds the checks and the per-slide orchestration; the pieces live in
:mod:`msn_cli.prediction` (settings and jobs, model, band walk, partial folder, assembly).
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
from msn_cli.io.checkpoints import WEIGHT_CHOICES
from msn_cli.io.lock import Busy, exclusive
from msn_cli.io.maskreader import read_description
from msn_cli.io.patches import Levels, PatchGeometry, base_downsample, check_walk_options
from msn_cli.io.slide import fingerprint, open_slide
from msn_cli.prediction.assemble import assemble, write_extras, zarr_key, zarr_strips
from msn_cli.prediction.bands import Axis, run_bands
from msn_cli.prediction.config import PredictConfig, PredictJob
from msn_cli.prediction.partial import BandStore, partial_dir
from msn_cli.prediction.predictor import Predictor
from msn_cli.vocab import BRANCHES

log = logging.getLogger("msn")
BRANCH_CHOICES = ("fusion", *BRANCHES)
FORMAT_CHOICES = ("tiff", "ome-tiff")
GEOJSON_TYPES = ("annotation", "detection")
FORMAT_VERSION = 1


def mask_format(out: Path, asked: str | None) -> str:
    """The container of ``out``: the one asked for, else ``ome-tiff`` for an ``.ome.tif`` /
    ``.ome.tiff`` name and ``tiff`` (OpenSlide's generic pyramid) for any other.

    Example:
        >>> mask_format(Path("m.ome.tif"), None), mask_format(Path("m.tif"), None)
        ('ome-tiff', 'tiff')
    """
    from msn_cli.io.ometiff import is_ome_name

    return asked or ("ome-tiff" if is_ome_name(out) else "tiff")


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
    if config.weights not in WEIGHT_CHOICES:
        raise MsnUsageError("--weights", f"{config.weights!r} is not one of best, last")
    if config.branch is not None and config.branch not in BRANCH_CHOICES:
        raise MsnUsageError("--branch", f"{config.branch!r} is not one of fusion, x1, x2, x3")
    if config.geojson_frame not in ("qupath", "level0"):
        raise MsnUsageError("--geojson-frame", "expected qupath or level0")
    if config.geojson_type not in GEOJSON_TYPES:
        raise MsnUsageError("--geojson-type", f"{config.geojson_type!r} is not one of "
                            f"{', '.join(GEOJSON_TYPES)}")  # fmt: skip
    if config.mask_format is not None and config.mask_format not in FORMAT_CHOICES:
        raise MsnUsageError("--format", f"{config.mask_format!r} is not one of "
                            f"{', '.join(FORMAT_CHOICES)}")  # fmt: skip
    seen: dict[Path, Path] = {}
    for job in jobs:
        if config.mask_format == "tiff" and mask_format(job.out, None) == "ome-tiff":
            raise MsnUsageError("--format", f"tiff, but {job.out.name} names an OME-TIFF; "
                                "use --format ome-tiff or a .tif name")  # fmt: skip
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
    fmt = mask_format(job.out, config.mask_format)
    desc = read_description(job.out) if job.out.is_file() else None
    finished = desc is not None and desc.get("key") == mask_key
    finished = finished and desc.get("container", "tiff") == fmt
    probs_ok = job.probabilities is None or zarr_key(job.probabilities) == mask_key
    # a GeoJSON still to write needs probabilities: the finished Zarr's, else predict again
    traced_ok = job.geojson is None or job.geojson.exists() or job.probabilities is not None
    if finished and probs_ok and traced_ok:
        probs = zarr_strips(job.probabilities) if job.probabilities is not None else None
        write_extras(job, config, slide, predictor, job.out, True, probabilities=probs)
        result.status = "skipped"
        result.seconds = time.perf_counter() - t0
        log.info("%s: already predicted into %s, skipped", job.slide, job.out)
        return result

    xs_axis = Axis.create(corners[:ncols, 0], w0, base, p, d)
    ys_axis = Axis.create(corners[::ncols, 1], h0, base, p, d)
    store = BandStore(
        partial_dir(job.out), {**key, "probabilities": d if job.needs_probabilities else None}
    )
    try:
        todo_rows = [r for r in range(nrows) if not store.done(r)]
        result.bands_reused = nrows - len(todo_rows)
        if result.bands_reused:
            result.status = "resumed"
        result.n_predicted = run_bands(
            predictor, job, config, geometry, corners, ncols, xs_axis, ys_axis, store, todo_rows
        )
        assemble(predictor, job, config, slide, store, xs_axis, ys_axis, mask_key, d, fmt)
    except MsnError:
        store.remove()  # bad input: leave nothing behind (a kill keeps the bands)
        raise
    store.remove()
    result.seconds = time.perf_counter() - t0
    return result
