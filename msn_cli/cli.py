"""The ``msn`` command line: parse, validate, call a stage, print. No logic lives here.

Every command imports its stage (and torch) inside its body so that ``msn --help`` is instant.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from msn_cli import __version__
from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_CLASSES,
    DEFAULT_STORE,
    CheckpointsOpt,
    ClassesOpt,
    DeviceOpt,
    SeedOpt,
    ShardOpt,
    StoreOpt,
    WorkersOpt,
    parse_classes,
    parse_device,
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
_state = {"debug": False}
log = logging.getLogger("msn")


def reported(fn):
    """Turn expected failures into one line on stderr and an exit code (traceback: --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MsnError as exc:
            if _state["debug"]:
                traceback.print_exc()
            _error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: still one line unless --debug
            if _state["debug"]:
                raise
            _error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)")
            raise typer.Exit(1) from None

    return wrapper


def _error(message: str) -> None:
    sys.stderr.write(f"msn: error: {message}\n")
    sys.stderr.flush()


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"msn: {record.levelname.lower()}: {record.getMessage()}"
        return record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it per invocation)."""

    _msn = True

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Formatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging() -> None:
    if not any(getattr(h, "_msn", False) for h in log.handlers):
        log.addHandler(_StderrHandler())
    # tifffile logs parser complaints about broken files; our error line already names them.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    log.setLevel(logging.INFO)
    log.propagate = False
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        log.warning("%s", message)

    warnings.showwarning = show


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

    _state["debug"] = debug or os.environ.get("MSN_DEBUG", "") not in ("", "0")
    progress.QUIET = quiet
    _setup_logging()


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
        str, typer.Option(help="Tissue without annotation: 'normal' (class 0) or 'ignore'.")
    ] = "normal",
    mpp: Annotated[
        float | None, typer.Option(help="Base resolution of X1 in µm/px (default: level 0).")
    ] = None,
    mask_values: Annotated[
        str | None, typer.Option(help="Mask value to class, e.g. 0:normal,255:lesion.")
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    workers: WorkersOpt = 0,
    shard: ShardOpt = None,
) -> None:
    """Cut slides into aligned X1/X2/X3 patch triplets with labels, into the patch store.

    Example: `msn tile slides/*.svs --levels 16x 4x 1x --split train --store store.zarr`
    """
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
    )
    results = run_tile(store, jobs, config)
    from msn_cli.report import print_tile_results

    if any(r.status != "failed" for r in results):
        print_tile_results(results)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        if _state["debug"] and r.exc is not None:
            traceback.print_exception(r.exc)
        _error(r.error or f"{r.slide}: failed")
    if failed:
        raise typer.Exit(1)


@app.command()
@reported
def info(
    store_path: Annotated[
        str | None, typer.Argument(metavar="STORE", help="Patch store (default: --store).")
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    models: Annotated[bool, typer.Option("--models", help="Model parameter counts.")] = False,
    num_classes: Annotated[int, typer.Option("--classes", help="Classes, with --models.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a patch store (slides, patches per split, class fractions) or the models.

    Example: `msn info store.zarr` · `msn info --models --classes 4 --json`
    """
    from msn_cli import report

    if models:
        from msn_cli.models.summary import parameter_table

        rows = parameter_table(num_classes)
        typer.echo(json.dumps(rows, indent=2)) if as_json else report.print_models(rows)
        return
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


def _not_yet(name: str) -> None:
    raise MsnError(None, f"`msn {name}` is not implemented yet")


@app.command("train-meta")
@reported
def train_meta(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
) -> None:
    """Step 1: train the meta-branch on X3.

    Example: `msn train-meta --store store.zarr --checkpoints ckpt --epochs 30`
    """
    parse_device(device)
    _not_yet("train-meta")


@app.command("train-memrm")
@reported
def train_memrm(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
) -> None:
    """Step 2: find the gap layers and train the X1/X2 memory-recall modules.

    Example: `msn train-memrm --store store.zarr --checkpoints ckpt --epochs 10`
    """
    parse_device(device)
    _not_yet("train-memrm")


@app.command("train-fusion")
@reported
def train_fusion(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
) -> None:
    """Step 3: train the meta fusion module (Meta-FM).

    Example: `msn train-fusion --store store.zarr --checkpoints ckpt --epochs 10`
    """
    parse_device(device)
    _not_yet("train-fusion")


@app.command()
@reported
def predict(
    slides: Annotated[list[Path] | None, typer.Argument(help="Slides to segment.")] = None,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 0,
    shard: ShardOpt = None,
) -> None:
    """Segment whole slides into pyramidal TIFF masks.

    Example: `msn predict slide.svs --checkpoints ckpt --out mask.tif`
    """
    parse_device(device)
    parse_shard(shard)
    _not_yet("predict")


@app.command()
@reported
def evaluate(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    device: DeviceOpt = "auto",
) -> None:
    """Per-branch mIoU on the store's test split, or of masks against annotations.

    Example: `msn evaluate --store store.zarr --checkpoints ckpt --split test`
    """
    parse_device(device)
    _not_yet("evaluate")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
