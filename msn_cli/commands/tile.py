"""``msn tile``: slides and their annotations into aligned X1/X2/X3 patch triplets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.errors import MsnUsageError
from msn_cli.options import (
    DEFAULT_CLASSES,
    DEFAULT_STORE,
    ClassesOpt,
    ShardOpt,
    StoreOpt,
    WorkersOpt,
    parse_classes,
)
from msn_cli.vocab import IGNORE


@reported
def tile(
    slides: Annotated[
        list[Path] | None, typer.Argument(help="Slides or images to tile.", show_default=False)
    ] = None,
    annotations: Annotated[
        Path | None, typer.Option(help="QuPath GeoJSON or ASAP XML annotations (one slide).")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Label mask image at the slide's size or a downsample.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="CSV with header slide,annotations,split.")
    ] = None,
    levels: Annotated[
        tuple[str, str, str],
        typer.Option(help="Relative magnifications of X1 X2 X3, e.g. 16x 4x 1x."),
    ] = ("16x", "4x", "1x"),
    patch_size: Annotated[int, typer.Option(help="Patch side in pixels.")] = 256,
    split: Annotated[str, typer.Option(help="train, sub-train or test.")] = "train",
    classes: ClassesOpt = DEFAULT_CLASSES,
    min_tissue: Annotated[
        float, typer.Option(help="Tissue fraction an X1 patch needs; 0 keeps every patch.")
    ] = 0.1,
    unannotated: Annotated[
        str,
        typer.Option(
            help="Pixels without annotation (a whole slide without an annotation file, too): "
            f"'normal' (class 0) or 'ignore' ({IGNORE})."
        ),
    ] = "normal",
    mpp: Annotated[
        float | None, typer.Option(help="Base resolution of X1 in µm/px (default: level 0).")
    ] = None,
    mask_values: Annotated[
        str | None, typer.Option(help="Mask value to class, e.g. 0:normal,255:lesion.")
    ] = None,
    lossless: Annotated[
        bool,
        typer.Option(
            "--lossless", help="Store the images' exact pixels (zstd), not JPEG (quality 90)."
        ),
    ] = False,
    codec: Annotated[
        str | None,
        typer.Option(
            help="Image codec: jpeg[:QUALITY] (default jpeg:90), or lossless zstd[:LEVEL] "
            "(--lossless: zstd:3) or jpegxl[:EFFORT].",
            show_default=False,
        ),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    workers: WorkersOpt = 0,
    shard: ShardOpt = None,
) -> None:
    """Cut slides into aligned X1/X2/X3 patch triplets with labels, into the patch store.

    Example: `msn tile slides/*.svs --levels 16x 4x 1x --split train --store store.zarr`
    """
    from msn_cli.commands.batch import finish, shard_slice, slide_inputs, slide_rows
    from msn_cli.io.codecs import image_codec
    from msn_cli.io.guard import refuse_overwrite
    from msn_cli.io.patches import Levels
    from msn_cli.report import print_tile_results
    from msn_cli.stages.tile import SlideJob, TileConfig
    from msn_cli.stages.tile import tile as run_tile

    if annotations and mask:
        raise MsnUsageError("--annotations", "give --annotations or --mask, not both")
    rows = slide_rows(slides, manifest, annotations or mask)
    jobs = [SlideJob(r.slide, r.annotations, r.split) for r in rows]
    if (annotations or mask) and len(slides or []) != 1:
        raise MsnUsageError("--annotations", "--annotations/--mask name the labels of ONE slide")
    jobs = jobs[shard_slice(shard)]
    if mask_values is not None:
        from msn_cli.io.annotations import parse_mask_values

        parse_mask_values(mask_values, parse_classes(classes))  # a usage error, before any work
    config = TileConfig(
        Levels.parse(levels),
        parse_classes(classes),
        patch_size,
        split,
        min_tissue,
        unannotated,
        mpp,
        mask_values,
        workers,
        image_codec(codec, lossless),
    )
    files, folders = [manifest, *(j.labels for j in jobs)], []
    for job in jobs:
        slide_files, data = slide_inputs(job.slide)
        files += slide_files
        folders += data
    refuse_overwrite([("--store", store)], files=files, folders=folders)
    finish(run_tile(store, jobs, config), print_tile_results)
