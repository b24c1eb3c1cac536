"""``msn predict``: whole slides into pyramidal TIFF (or OME-TIFF) masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.errors import MsnUsageError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    CheckpointsOpt,
    DeviceOpt,
    ShardOpt,
    WeightsOpt,
    WorkersOpt,
    parse_classes,
    parse_device,
    parse_weights,
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
    weights: WeightsOpt = None,
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
    from msn_cli.commands.batch import finish, shard_slice, slide_rows
    from msn_cli.prediction.config import PredictConfig
    from msn_cli.report import print_predict_results
    from msn_cli.stages.predict import predict as run_predict

    parse_device(device)
    weights = parse_weights(weights)
    mine = shard_slice(shard)
    if out is None:
        raise MsnUsageError("--out", "give the mask file (mask.tif) or an output folder")
    paths = [r.slide for r in slide_rows(slides, manifest)]
    expected = parse_classes(classes) if classes else None
    folder = len(paths) > 1 or out.is_dir() or out.suffix.lower() not in MASK_SUFFIXES
    suffix = ".ome.tif" if mask_format == "ome-tiff" else ".tif"
    jobs = [_job(p, out, folder, probabilities, geojson, overlay, suffix) for p in paths]
    jobs = jobs[mine]
    _refuse_overwriting_inputs(jobs, Path(checkpoints), manifest)
    config = PredictConfig(
        checkpoints=Path(checkpoints),
        weights=weights,
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
    finish(run_predict(jobs, config), print_predict_results)


def _refuse_overwriting_inputs(jobs, checkpoints: Path, manifest: Path | None) -> None:
    """No mask, probability map, GeoJSON or overlay may land on a slide, the annotations
    beside it, the manifest or the checkpoints (one line, before any work)."""
    from msn_cli.commands.batch import slide_inputs
    from msn_cli.io.guard import refuse_overwrite
    from msn_cli.options import checkpoint_files

    model = checkpoint_files(checkpoints)
    for job in jobs:
        outputs = [("--out", job.out), ("--probabilities", job.probabilities),
                   ("--geojson", job.geojson), ("--overlay", job.overlay)]  # fmt: skip
        files, folders = slide_inputs(job.slide)
        refuse_overwrite(outputs, files=[*files, manifest, *model], folders=folders)


def _job(slide: Path, out: Path, folder: bool, probs, geojson, overlay, suffix: str = ".tif"):
    """Output paths of one slide: the given files, or ``<folder>/<slide>.<ext>`` in folder mode
    (the mask ``<slide><suffix>``; --probabilities/--geojson/--overlay name folders too)."""
    from msn_cli.io.store import slide_stem
    from msn_cli.prediction.config import PredictJob

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
