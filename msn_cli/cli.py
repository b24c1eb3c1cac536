"""The ``msn`` command line: parse, validate, call a stage, print. No logic lives here.

Every command imports its stage (and torch) inside its body so that ``msn --help`` is instant.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Annotated

import typer

from msn_cli import __version__
from msn_cli.console import error, reported, setup_logging, state
from msn_cli.errors import MsnUsageError
from msn_cli.options import (
    DEFAULT_CLASSES,
    DEFAULT_STORE,
    ClassesOpt,
    SeedOpt,
    ShardOpt,
    StoreOpt,
    WorkersOpt,
    parse_classes,
    parse_shard,
)

app = typer.Typer(
    name="msn",
    help="Meta Segmentation Network (IJCAI-20) for whole-slide and other ultra-resolution "
    "medical images. Stages talk through a Zarr patch store and a checkpoint directory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msn {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of errors (or MSN_DEBUG=1).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Meta Segmentation Network for ultra-resolution medical images."""
    from msn_cli import progress

    state["debug"] = debug or os.environ.get("MSN_DEBUG", "") not in ("", "0")
    progress.QUIET = quiet
    setup_logging()


@app.command()
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
            "'normal' (class 0) or 'ignore' (255)."
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
    from msn_cli.io.codecs import image_codec
    from msn_cli.io.manifest import read_manifest
    from msn_cli.io.patches import Levels
    from msn_cli.stages.tile import SlideJob, TileConfig
    from msn_cli.stages.tile import tile as run_tile

    if annotations and mask:
        raise MsnUsageError("--annotations", "give --annotations or --mask, not both")
    jobs = (
        [SlideJob(r.slide, r.annotations, r.split) for r in read_manifest(manifest)]
        if (manifest)
        else []
    )
    for s in slides or []:
        jobs.append(SlideJob(s, annotations or mask, None))
    if not jobs:
        raise MsnUsageError("SLIDE", "give at least one slide or --manifest")
    if (annotations or mask) and len(slides or []) != 1:
        raise MsnUsageError("--annotations", "--annotations/--mask name the labels of ONE slide")
    index, count = parse_shard(shard)
    jobs = jobs[index::count]
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
    from msn_cli.io.annotations import annotations_beside
    from msn_cli.io.guard import refuse_overwrite

    inputs = [manifest, *(j.slide for j in jobs), *(j.labels for j in jobs)]
    inputs += [a for j in jobs for a in annotations_beside(j.slide)]
    data = [j.slide.parent / j.slide.stem for j in jobs]  # MRXS data folders
    refuse_overwrite([("--store", store)], files=inputs, folders=[d for d in data if d.is_dir()])
    results = run_tile(store, jobs, config)
    from msn_cli.report import print_tile_results

    if any(r.status != "failed" for r in results):
        print_tile_results(results)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        if state["debug"] and r.exc is not None:
            traceback.print_exception(r.exc)
        error(r.error or f"{r.slide}: failed")
    if failed:
        raise typer.Exit(1)


@app.command()
@reported
def info(
    store_path: Annotated[
        str | None,
        typer.Argument(
            metavar="STORE|SLIDE", help="Patch store (default: --store), or a slide file."
        ),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    models: Annotated[bool, typer.Option("--models", help="Model parameter counts.")] = False,
    num_classes: Annotated[int, typer.Option("--classes", help="Classes, with --models.")] = 4,
    levels: Annotated[
        tuple[str, str, str] | None,
        typer.Option(
            help="With a slide: the --levels to check (default 16x 4x 1x).", show_default=False
        ),
    ] = None,
    patch_size: Annotated[int, typer.Option(help="With a slide: the --patch-size.")] = 256,
    mpp: Annotated[
        float | None,
        typer.Option(
            help="With a slide: the --mpp to check (default: the scan's own and "
            "0.25, 0.5, 1, 2 where coarser).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a patch store (slides, patches per split, class fractions), a slide (levels,
    mpp, vendor, and which --levels/--mpp it serves), or the models.

    Example: `msn info store.zarr` · `msn info slide.svs --levels 16x 4x 1x` ·
    `msn info --models --classes 4 --json`
    """
    from msn_cli import report

    if models:
        from msn_cli.models.summary import parameter_table

        rows = parameter_table(num_classes)
        typer.echo(json.dumps(rows, indent=2)) if as_json else report.print_models(rows)
        return
    if store_path and Path(store_path).is_file():
        from msn_cli.io.patches import Levels
        from msn_cli.stages.slide_info import slide_info

        asked = Levels.parse(levels) if levels else None
        data = slide_info(store_path, asked, patch_size, None if mpp is None else [mpp])
        typer.echo(json.dumps(data, indent=2)) if as_json else report.print_slide(data)
        if not any(row["ok"] for row in data["serving"]):
            raise typer.Exit(1)  # the asked --levels/--mpp cannot be served (said above)
        return
    for flag, given in (("--levels", levels), ("--mpp", mpp), ("--patch-size", patch_size != 256)):
        if given:
            raise MsnUsageError(flag, "applies to a slide file, not a patch store")
    from msn_cli.stages.info import store_info

    data = store_info(store_path or store)
    typer.echo(json.dumps(data, indent=2)) if as_json else report.print_store(data)


@app.command()
@reported
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for slides, annotations, manifest.")],
    slides: Annotated[int, typer.Option(help="Number of slides (at least 3).")] = 4,
    size: Annotated[int, typer.Option(help="Long side of each image in pixels.")] = 4096,
    seed: SeedOpt = 0,
    kind: Annotated[str, typer.Option(help="wsi (pyramidal TIFF) or photo (JPEG).")] = "wsi",
) -> None:
    """Write synthetic slides with annotations and a manifest.csv (train/sub-train/test).

    Example: `msn synth demo/data --slides 4 --size 4096`
    """
    from msn_cli.synth import generate

    if kind not in ("wsi", "photo"):
        raise MsnUsageError("--kind", f"{kind!r} is not wsi or photo")
    manifest = generate(out_dir, slides=slides, size=size, seed=seed, kind=kind)
    typer.echo(f"wrote {slides} {kind} image(s) and {manifest}")


from msn_cli.commands import evaluate as _evaluate  # noqa: E402
from msn_cli.commands import predict as _predict  # noqa: E402
from msn_cli.commands import training as _training  # noqa: E402

app.command("train-meta")(_training.train_meta)
app.command("train-memrm")(_training.train_memrm)
app.command("train-fusion")(_training.train_fusion)
app.command("predict")(_predict.predict)
app.command("evaluate")(_evaluate.evaluate)


def main() -> None:
    """Console-script entry point.

    OpenMP threads that spin while waiting make PyTorch several times slower when another
    process shares the cores (a shared cluster node); passive waiting costs nothing on an idle
    machine (measured: 1 training epoch 10.3 s vs 10.1 s idle, 18.5 s vs 13.7 s beside one busy
    process). Set before torch loads; an explicit OMP_WAIT_POLICY wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
