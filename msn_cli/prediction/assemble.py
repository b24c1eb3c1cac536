"""Assembling the outputs of a slide from its saved bands.

The pyramidal TIFF (generic, :mod:`msn_cli.io.maskwriter`, or OME-TIFF,
:mod:`msn_cli.io.ometiff`) is written from the bands under a temporary name, the probabilities
Zarr is appended band by band, the GeoJSON and overlay are derived from the written mask's
pyramid (the GeoJSON's mean class probabilities from the bands' probabilities, strip by strip),
and only then is the mask renamed to ``--out``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from msn_cli.io.maskreader import read_level
from msn_cli.io.maskwriter import write_mask_tiff
from msn_cli.io.slide import read_scaled

#: A factory of per-class probability strips ``(C, rows, cols)``, top to bottom, and their
#: downsample (:class:`~msn_cli.io.export.ProbabilityWriter`'s layout).
ProbabilityStrips = tuple[Callable[[], Iterable[np.ndarray]], int]


def assemble(
    predictor, job, config, slide, store, xs_axis, ys_axis, mask_key, d, mask_format="tiff"
) -> None:
    """Every band is saved: write the mask and the extras under temporary names, rename."""
    w0, h0 = slide.dimensions
    nrows = len(ys_axis.pos)
    n_classes = len(predictor.classes)

    def blocks():
        for r in range(nrows):
            yield store.labels(r, int(ys_axis.stop[r] - ys_axis.start[r]), w0)

    def prob_strips() -> Iterator[np.ndarray]:
        cw = xs_axis.coarse[-1].stop
        for r in range(nrows):
            yield store.probs(r, (n_classes, ys_axis.coarse[r].stop - ys_axis.coarse[r].start, cw))

    tmp = job.out.with_name(f".{job.out.name}.tmp{os.getpid()}")
    description = {
        "classes": predictor.classes,
        "source": str(job.slide),
        "branch": predictor.branch,
        "key": mask_key,
        "overlap": "later patch wins",
    }
    probs_writer = None
    try:
        try:
            if mask_format == "ome-tiff":
                from msn_cli.io.ometiff import write_mask_ome_tiff

                write_mask_ome_tiff(
                    tmp, w0, h0, blocks, mpp=slide.mpp, classes=predictor.classes,
                    description=description, name=job.slide.name,
                )  # fmt: skip
            else:
                write_mask_tiff(tmp, w0, h0, blocks, mpp=slide.mpp, description=description)
        except OSError as exc:  # disk full, ...: name the mask the user asked for
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), str(job.out)) from exc
            raise
        if job.probabilities is not None:
            from msn_cli.io.export import ProbabilityWriter

            probs_writer = ProbabilityWriter(
                job.probabilities, (w0, h0), d, predictor.classes, {"key": mask_key}
            )
            for strip in prob_strips():
                probs_writer.append(strip)
            probs_writer.commit()
            probs_writer = None
        probs = (prob_strips, d) if job.geojson is not None else None
        write_extras(job, config, slide, predictor, tmp, only_missing=False, probabilities=probs)
        os.replace(tmp, job.out)
    finally:
        if probs_writer is not None:
            probs_writer.discard()
        if tmp.exists():
            tmp.unlink()


def write_extras(
    job,
    config,
    slide,
    predictor,
    mask: Path,
    only_missing: bool,
    probabilities: ProbabilityStrips | None = None,
) -> None:
    """GeoJSON and overlay, derived from the written mask's pyramid.

    The GeoJSON's polygons are traced on the finest mask level of at most
    ``config.trace_max_side`` pixels a side; their mean class probability is read from
    ``probabilities`` (left out of the GeoJSON without them).
    """
    from msn_cli.io.export import own_class_probability, trace_regions, write_overlay
    from msn_cli.io.qupath import write_qupath_geojson

    w0, h0 = slide.dimensions
    if job.geojson is not None and not (only_missing and job.geojson.exists()):
        labels, ds = read_level(mask, config.trace_max_side)
        offset = qupath_offset(slide) if config.geojson_frame == "qupath" else (0, 0)
        values = None
        if probabilities is not None:
            strips, pd = probabilities
            values = own_class_probability(labels, ds, (w0, h0), strips(), pd)
        regions = trace_regions(
            labels, ds, predictor.classes, (w0, h0), offset=offset, values=values
        )
        write_qupath_geojson(job.geojson, regions, slide.mpp, config.geojson_type)
    if job.overlay is not None and not (only_missing and job.overlay.exists()):
        labels, ds = read_level(mask, config.overlay_max_side)
        thumb = read_scaled(slide, 0.0, 0.0, float(ds), labels.shape[1], labels.shape[0])
        write_overlay(job.overlay, thumb, labels, predictor.classes)


def qupath_offset(slide) -> tuple[int, int]:
    """Where QuPath's image origin lies in level-0 pixels.

    QuPath's OpenSlide server crops a slide to ``openslide.bounds-*`` when all four are present
    and both width and height differ from level 0 (``OpenslideImageServer``), so its
    coordinates are level-0 coordinates minus ``(bounds-x, bounds-y)``. Other readers: (0, 0).
    """
    osr = getattr(slide, "_osr", None)
    props = dict(osr.properties) if osr is not None else {}
    names = [f"openslide.bounds-{k}" for k in ("x", "y", "width", "height")]
    if not all(n in props for n in names):
        return 0, 0
    try:
        bx, by, bw, bh = (int(props[n]) for n in names)
    except ValueError:
        return 0, 0
    w0, h0 = slide.dimensions
    return (bx, by) if bw != w0 and bh != h0 else (0, 0)


def zarr_strips(path: Path) -> ProbabilityStrips:
    """A finished ``--probabilities`` Zarr as :data:`ProbabilityStrips` (one chunk row at a
    time: the whole array is never read)."""
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    step = arr.chunks[1]

    def strips() -> Iterator[np.ndarray]:
        for y in range(0, arr.shape[1], step):
            yield arr[:, y : y + step]

    return strips, int(arr.attrs["downsample"])


def zarr_key(path: Path) -> str | None:
    """The job key a probabilities Zarr was written for (None: absent or unreadable)."""
    if not path.exists():
        return None
    try:
        import zarr

        return zarr.open_array(str(path), mode="r").attrs.get("key")
    except Exception:
        return None
