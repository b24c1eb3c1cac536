"""``msn info``: a patch store, a slide (and which ``--levels``/``--mpp`` it serves), or the
models' parameter counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.errors import MsnUsageError
from msn_cli.options import DEFAULT_STORE, StoreOpt


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
