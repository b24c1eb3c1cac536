"""``msn predict``: whole slides into pyramidal TIFF (or OME-TIFF) masks."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import error, reported, state
from msn_cli.errors import MsnUsageError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    CheckpointsOpt,
    DeviceOpt,
    ShardOpt,
    WorkersOpt,
    parse_classes,
    parse_device,
    parse_shard,
)

MASK_SUFFIXES = (".tif", ".tiff")


@reported
def predict(
    slides: Annotated[
        list[Path] | None, typer.Argument(help="Slides or images to segment.", show_default=False)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Mask file (one slide: mask.tif, or mask.ome.tif for an OME-TIFF) or folder "
            "(DIR/<slide>.tif, or .ome.tif with --format ome-tiff, for each slide).",
            show_default=False,
        ),
    ] = None,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    branch: Annotated[
        str | None,
        typer.Option(
            help="Output that becomes the mask: fusion, x1, x2 or x3 (default: fusion "
            "when trained, else x1)."
        ),
    ] = None,  # fmt: skip
    probabilities: Annotated[
        Path | None,
        typer.Option(help="Per-class probabilities (float16, one per 16x16 px) into this Zarr."),
    ] = None,
    geojson: Annotated[
        Path | None,
        typer.Option(
            help="Class polygons as QuPath GeoJSON (class, colour, area and mean class "
            "probability per polygon) into this file."
        ),
    ] = None,  # fmt: skip
    overlay: Annotated[
        Path | None, typer.Option(help="Thumbnail PNG of slide and mask with a class legend.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="CSV whose 'slide' column lists the slides.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Patch triplets per forward pass.")] = 32,
    min_tissue: Annotated[
        float,
        typer.Option(
            help="Tissue fraction a patch needs to be predicted (others: class 0); "
            "0 predicts every patch."
        ),
    ] = 0.01,  # fmt: skip
    mpp: Annotated[
        float | None, typer.Option(help="Base resolution of X1 in µm/px, as given to tile.")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Expected class names; refuse a checkpoint with others.")
    ] = None,
    geojson_frame: Annotated[
        str,
        typer.Option(
            help="GeoJSON coordinates: 'qupath' (level 0 minus the OpenSlide bounds "
            "offset QuPath crops to) or 'level0'."
        ),
    ] = "qupath",  # fmt: skip
    geojson_type: Annotated[
        str,
        typer.Option(
            help="QuPath object type of the GeoJSON polygons: 'annotation' or 'detection' "
            "(lighter for many objects; not editable)."
        ),
    ] = "annotation",  # fmt: skip
    mask_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Mask container: 'tiff' (OpenSlide's generic pyramidal TIFF) or 'ome-tiff' "
            "(levels in SubIFDs, OME-XML: Bio-Formats, QuPath). Default: ome-tiff for an "
            "--out ending in .ome.tif/.ome.tiff, else tiff.",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    amp: Annotated[
        bool, typer.Option(help="Mixed precision on CUDA (faster; may differ from evaluate).")
    ] = False,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 0,
    shard: ShardOpt = None,
) -> None:
    """Segment whole slides into pyramidal TIFF masks (OpenSlide, tifffile and QuPath open them)
    or OME-TIFF masks (Bio-Formats and QuPath).

    Example: `msn predict slide.svs --checkpoints ckpt --out mask.tif --geojson mask.geojson`
    """
    from msn_cli.io.manifest import read_manifest
    from msn_cli.stages.predict import PredictConfig
    from msn_cli.stages.predict import predict as run_predict

    parse_device(device)
    index, count = parse_shard(shard)
    if out is None:
        raise MsnUsageError("--out", "give the mask file (mask.tif) or an output folder")
    paths = [r.slide for r in read_manifest(manifest)] if manifest else []
    paths += list(slides or [])
    if not paths:
        raise MsnUsageError("SLIDE", "give at least one slide or --manifest")
    expected = parse_classes(classes) if classes else None
    folder = len(paths) > 1 or out.is_dir() or out.suffix.lower() not in MASK_SUFFIXES
    suffix = ".ome.tif" if mask_format == "ome-tiff" else ".tif"
    jobs = [_job(p, out, folder, probabilities, geojson, overlay, suffix) for p in paths]
    jobs = jobs[index::count]
    _refuse_overwriting_inputs(jobs, Path(checkpoints), manifest)
    config = PredictConfig(
        checkpoints=Path(checkpoints),
        branch=branch,
        batch_size=batch_size,
        device=device,
        min_tissue=min_tissue,
        mpp=mpp,
        workers=workers,
        amp=amp,
        classes=expected,
        geojson_frame=geojson_frame,
        geojson_type=geojson_type,
        mask_format=mask_format,
    )
    results = run_predict(jobs, config)
    if any(r.status != "failed" for r in results):
        _print_results(results)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        if state["debug"] and r.exc is not None:
            traceback.print_exception(r.exc)
        error(r.error or f"{r.slide}: failed")
    if failed:
        raise typer.Exit(1)


def _refuse_overwriting_inputs(jobs, checkpoints: Path, manifest: Path | None) -> None:
    """No mask, probability map, GeoJSON or overlay may land on a slide, the annotations
    beside it, the manifest or the checkpoints (one line, before any work)."""
    from msn_cli.io.annotations import annotations_beside
    from msn_cli.io.guard import refuse_overwrite

    model = [checkpoints, checkpoints / "model.json"]
    model += [checkpoints / s / "weights.pt" for s in ("meta", "memrm", "fusion", "experts")]
    for job in jobs:
        outputs = [("--out", job.out), ("--probabilities", job.probabilities),
                   ("--geojson", job.geojson), ("--overlay", job.overlay)]  # fmt: skip
        data = job.slide.parent / job.slide.stem  # an MRXS slide's data folder
        refuse_overwrite(
            outputs,
            files=[job.slide, *annotations_beside(job.slide), manifest, *model],
            folders=[data] if data.is_dir() else [],
        )


def _job(slide: Path, out: Path, folder: bool, probs, geojson, overlay, suffix: str = ".tif"):
    """Output paths of one slide: the given files, or ``<folder>/<slide>.<ext>`` in folder mode
    (the mask ``<slide><suffix>``; --probabilities/--geojson/--overlay name folders too)."""
    from msn_cli.io.store import slide_stem
    from msn_cli.stages.predict import PredictJob

    if not folder:
        return PredictJob(slide, out, probs, geojson, overlay)
    stem = slide_stem(slide)
    return PredictJob(
        slide,
        out / f"{stem}{suffix}",
        probs / f"{stem}.zarr" if probs else None,
        geojson / f"{stem}.geojson" if geojson else None,
        overlay / f"{stem}.png" if overlay else None,
    )


def _print_results(results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="msn predict")
    for col in ("slide", "status", "mask", "patches", "predicted", "Mpx", "seconds", "Mpx/s"):
        table.add_column(col, justify="left" if col in ("slide", "status", "mask") else "right")
    for r in results:
        rate = f"{r.megapixels / r.seconds:.1f}" if r.seconds > 0 and r.megapixels else "-"
        status = r.status + (f" ({r.bands_reused} bands kept)" if r.bands_reused else "")
        table.add_row(
            r.slide.name,
            status,
            str(r.out),
            str(r.n_grid),
            str(r.n_predicted),
            f"{r.megapixels:.1f}",
            f"{r.seconds:.1f}",
            rate,
        )
    Console(soft_wrap=True).print(table)
