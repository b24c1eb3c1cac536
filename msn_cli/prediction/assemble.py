"""Assembling the outputs of a slide from its saved bands.

The pyramidal TIFF is written from the bands (see :mod:`msn_cli.io.maskwriter`) under a
temporary name, the probabilities Zarr is appended band by band, the GeoJSON and overlay are
derived from the written mask's pyramid, and only then is the TIFF renamed to ``--out``.
"""

from __future__ import annotations

import os
from pathlib import Path

from msn_cli.io.maskwriter import read_level, write_mask_tiff
from msn_cli.io.slide import read_scaled


def assemble(predictor, job, config, slide, store, xs_axis, ys_axis, mask_key, d) -> None:
    """Every band is saved: write the TIFF and the extras under temporary names, rename."""
    w0, h0 = slide.dimensions
    nrows = len(ys_axis.pos)

    def blocks():
        for r in range(nrows):
            yield store.labels(r, int(ys_axis.stop[r] - ys_axis.start[r]), w0)

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
            cw = xs_axis.coarse[-1].stop
            for r in range(nrows):
                n = ys_axis.coarse[r].stop - ys_axis.coarse[r].start
                probs_writer.append(store.probs(r, (len(predictor.classes), n, cw)))
            probs_writer.commit()
            probs_writer = None
        write_extras(job, config, slide, predictor, tmp, only_missing=False)
        os.replace(tmp, job.out)
    finally:
        if probs_writer is not None:
            probs_writer.discard()
        if tmp.exists():
            tmp.unlink()


def write_extras(job, config, slide, predictor, mask: Path, only_missing: bool) -> None:
    """GeoJSON and overlay, derived from the written mask's pyramid."""
    from msn_cli.io.annotations import write_geojson
    from msn_cli.io.export import trace_polygons, write_overlay
    from msn_cli.palette import class_color

    w0, h0 = slide.dimensions
    if job.geojson is not None and not (only_missing and job.geojson.exists()):
        labels, ds = read_level(mask, config.trace_max_side)
        offset = qupath_offset(slide) if config.geojson_frame == "qupath" else (0, 0)
        polys = trace_polygons(labels, ds, predictor.classes, (w0, h0), offset=offset)
        colours = {name: class_color(k) for k, name in enumerate(predictor.classes)}
        write_geojson(job.geojson, polys, colours)
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


def zarr_key(path: Path) -> str | None:
    """The job key a probabilities Zarr was written for (None: absent or unreadable)."""
    if not path.exists():
        return None
    try:
        import zarr

        return zarr.open_array(str(path), mode="r").attrs.get("key")
    except Exception:
        return None
