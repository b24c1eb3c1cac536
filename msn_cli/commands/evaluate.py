"""``msn evaluate``: the paper's per-branch mIoU tables, slide scores, reports, figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.errors import MsnUsageError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_CLASSES,
    DEFAULT_STORE,
    CheckpointsOpt,
    DeviceOpt,
    StoreOpt,
    WeightsOpt,
    checkpoint_files,
    parse_classes,
    parse_device,
    parse_weights,
)

_SLIDE = "Slide mode"
_CMP = "Comparison"
_OUT = "Outputs"


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",")]


@reported
def evaluate(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Result files of earlier `--json` runs, with --compare (with --curve: stage "
            "folders such as ckpt/memrm, or their history.jsonl).",
            show_default=False,
            metavar="RUNS",
        ),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    weights: WeightsOpt = None,
    split: Annotated[str, typer.Option(help="Store split to score: train, sub-train, test.")] = (
        "test"
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per forward pass.")] = 16,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Processes reading the store (default: up to 4; 0: none).",
            show_default=False,
        ),
    ] = None,
    pred: Annotated[
        Path | None,
        typer.Option(
            help="Predicted mask TIFF (class indices) of one slide.", rich_help_panel=_SLIDE
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Its annotations (GeoJSON, ASAP XML) or label mask.", rich_help_panel=_SLIDE
        ),
    ] = None,
    slide: Annotated[
        Path | None,
        typer.Option(
            help="The slide (its level-0 size; default: the mask's).", rich_help_panel=_SLIDE
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="CSV of pairs, header pred,truth[,slide][,name].", rich_help_panel=_SLIDE
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated class names, index 0 first (default: the classes the mask "
            f"records, else {DEFAULT_CLASSES}).",
            rich_help_panel=_SLIDE,
            show_default=False,
        ),
    ] = None,
    unannotated: Annotated[
        str,
        typer.Option(
            help="Unannotated pixels: 'normal' (class 0) or 'ignore'.", rich_help_panel=_SLIDE
        ),
    ] = "normal",
    mask_values: Annotated[
        str | None,
        typer.Option(
            help="Truth-mask value to class, e.g. 0:normal,255:lesion.", rich_help_panel=_SLIDE
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Print RUNS side by side (rows = runs; runs with the same label share a row).",
            rich_help_panel=_CMP,
        ),
    ] = False,
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated row names for --compare.", rich_help_panel=_CMP),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated table columns among params, fusion-params, x1, x2, x3, "
            "fusion, x2y1, x3y1 (S2′, S3′ against Y1; default: params,x1,x2,x3,fusion).",
            rich_help_panel=_CMP,
            show_default=False,
        ),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option(
            help="The table's title line (default: mIoU (%) on split ...).",
            rich_help_panel=_CMP,
            show_default=False,
        ),
    ] = None,
    versus: Annotated[
        str | None,
        typer.Option(
            help="Two row labels A,B: also print row A against row B in each mIoU column, "
            "the difference and whether they are separated (more than one sd apart), not "
            "separated, or one run (no sd).",
            rich_help_panel=_CMP,
            show_default=False,
            metavar="A,B",
        ),
    ] = None,
    curve: Annotated[
        str | None,
        typer.Option(
            help="Compare training curves instead: mIoU per epoch of these outputs "
            "(comma-separated among x1, x2, x3, fusion) of each RUN.",
            rich_help_panel=_CMP,
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write the --curve lines as a PNG plot.", rich_help_panel=_CMP),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Row name of this run (default: from the checkpoint).")
    ] = None,
    outputs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated outputs to score, among x1, x2, x3, fusion (default: every "
            "one the checkpoint has; e.g. x3 for Table 1's X3-only baseline).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Write the scores as JSON (with --compare: the table, each mIoU cell as mean, "
            "sd and number of runs).",
            rich_help_panel=_OUT,
        ),
    ] = None,
    csv: Annotated[
        Path | None, typer.Option(help="Write the table as CSV.", rich_help_panel=_OUT)
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option(help="Write the table as markdown.", rich_help_panel=_OUT)
    ] = None,
    figures: Annotated[
        Path | None,
        typer.Option(
            help="Folder for training curves, gap-layer stats and a patch grid.",
            rich_help_panel=_OUT,
        ),
    ] = None,
    figure_patches: Annotated[
        int, typer.Option(min=1, help="Patches in the figure grid.", rich_help_panel=_OUT)
    ] = 6,
) -> None:
    """Per-branch mIoU on the store's test split, masks against annotations, or a comparison.

    Example: `msn evaluate --store store.zarr --checkpoints ckpt --json msn.json` ·
    `msn evaluate --pred A01_mask.tif --truth A01.xml --slide A01.svs` ·
    `msn evaluate --compare msn.json bisenet.json --markdown table.md` ·
    `msn evaluate --compare s0.json s1.json u0.json u1.json --labels MSN,MSN,U-Net,U-Net
    --versus MSN,U-Net --json table.json` ·
    `msn evaluate --compare ckpt/memrm ckpt_unet/meta --curve x1 --labels MSN,U-Net --plot f5.png`
    """
    if runs and not compare:
        raise MsnUsageError("RUNS", "result files are compared with --compare")
    only_compare = (("--curve", curve), ("--columns", columns), ("--title", title))
    for option, value in (*only_compare, ("--versus", versus)):
        if value is not None and not compare:
            raise MsnUsageError(option, "only with --compare")
    if plot is not None and curve is None:
        raise MsnUsageError("--plot", "only with --compare --curve (it plots the curves)")
    slide_mode = pred is not None or manifest is not None
    if compare:
        scoring = slide_mode or figures is not None or outputs is not None or weights is not None
        _compare(runs, labels, columns, title, curve, plot, csv, markdown, json_out, versus,
                 scoring=scoring)  # fmt: skip
    elif labels is not None:
        raise MsnUsageError("--labels", "only with --compare (name this run with --method)")
    elif slide_mode:
        store_only = (("--figures", figures), ("--outputs", outputs), ("--weights", weights))
        for what, value in store_only:
            if value is not None:
                raise MsnUsageError(what, "belongs to store mode (--store, --checkpoints)")
        _slides(pred, truth, slide, manifest, classes, unannotated, mask_values, method,
                json_out, csv, markdown)  # fmt: skip
    elif truth is not None or slide is not None:
        raise MsnUsageError("--truth", "--truth and --slide belong with --pred")
    else:
        _store(store, checkpoints, split, batch_size, device, workers, method, outputs,
               json_out, csv, markdown, figures, figure_patches, weights)  # fmt: skip


def _compare(runs, labels, columns, title, curve, plot, csv, markdown, json_out, versus,
             scoring: bool) -> None:  # fmt: skip
    """``--compare``: earlier results, or training curves (``--curve``), side by side; with
    ``--versus A,B`` also row A against row B."""
    from msn_cli.evaluation.compare import versus_rows
    from msn_cli.io.guard import refuse_overwrite
    from msn_cli.report import print_comparison, print_versus
    from msn_cli.stages.evaluate import compare_curves, compare_results

    if not runs:
        what = "stage folders (or history.jsonl)" if curve else "result JSON files"
        raise MsnUsageError("--compare", f"give the {what} to compare")
    if scoring:
        raise MsnUsageError(
            "--compare",
            "--compare takes only RUNS, --labels, --columns, --title, --versus, --curve, "
            "--plot, --csv, --markdown, --json",
        )
    names = _names(labels) if labels else None
    if names is not None and len(names) != len(runs):
        raise MsnUsageError("--labels", f"{len(names)} label(s) for {len(runs)} run(s)")
    histories = [r / "history.jsonl" for r in runs if curve is not None and r.is_dir()]
    outs = [("--csv", csv), ("--markdown", markdown), ("--json", json_out), ("--plot", plot)]
    refuse_overwrite(outs, [*runs, *histories])
    if curve is not None:
        if columns is not None:
            raise MsnUsageError("--columns", "not with --curve (its columns are the runs)")
        if versus is not None:
            raise MsnUsageError("--versus", "not with --curve (its rows are epochs)")
        table = compare_curves(
            runs, _names(curve) or [], names, csv, markdown, plot, title, json_out
        )
    else:
        table = compare_results(
            runs, names, csv, markdown, _names(columns), title, json_out, versus
        )
    print_comparison(table)
    if versus is not None:
        print_versus(table, *versus_rows(table, versus))


def _slides(pred, truth, slide, manifest, classes, unannotated, mask_values, method,
            json_out, csv, markdown) -> None:  # fmt: skip
    """Slide mode: predicted masks against annotations or label masks (``--pred``/``--truth``
    or a ``--manifest`` of pairs), per slide and pooled."""
    from msn_cli.evaluation.slides import SlidePair, read_pairs, recorded_classes
    from msn_cli.io.guard import refuse_overwrite
    from msn_cli.report import print_slides
    from msn_cli.stages.evaluate import evaluate_slide_pairs, single_table

    if unannotated not in ("normal", "ignore"):
        raise MsnUsageError("--unannotated", f"{unannotated!r} is not normal or ignore")
    if manifest is not None:
        if pred or truth or slide:
            raise MsnUsageError("--manifest", "give --manifest or --pred/--truth, not both")
        pairs = read_pairs(manifest)
    else:
        if truth is None:
            raise MsnUsageError("--truth", "--pred needs --truth (annotations or label mask)")
        pairs = [SlidePair(pred, truth, slide)]
    ins = [manifest, *(f for p in pairs for f in (p.pred, p.truth, p.slide))]
    refuse_overwrite([("--json", json_out), ("--csv", csv), ("--markdown", markdown)], ins)
    if classes is not None:
        names = parse_classes(classes)
    else:
        names = recorded_classes(pairs) or parse_classes(DEFAULT_CLASSES)
    if mask_values is not None:
        from msn_cli.io.annotations import parse_mask_values

        parse_mask_values(mask_values, names)
    result = evaluate_slide_pairs(pairs, names, unannotated, mask_values, method, json_out)
    print_slides(result)
    single_table(result, csv, markdown)


def _store(store, checkpoints, split, batch_size, device, workers, method, outputs,
           json_out, csv, markdown, figures, figure_patches, weights=None) -> None:  # fmt: skip
    """Store mode: every output of the checkpoint on one split of the patch store (the
    paper's tables), with per-class IoU, confusion matrices and optional figures;
    ``weights``: ``--weights`` (best or last)."""
    from msn_cli.io.guard import refuse_overwrite
    from msn_cli.io.store import SPLITS
    from msn_cli.report import print_comparison, print_store_details
    from msn_cli.stages.evaluate import evaluate_store, single_table

    if split not in SPLITS:
        raise MsnUsageError("--split", f"{split!r} is not one of {', '.join(SPLITS)}")
    parse_device(device)
    weights = parse_weights(weights)
    refuse_overwrite(
        [("--json", json_out), ("--csv", csv), ("--markdown", markdown), ("--figures", figures)],
        files=checkpoint_files(checkpoints),
        folders=[store],
    )
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    scored = [o.strip() for o in outputs.split(",") if o.strip()] if outputs is not None else None
    result, written = evaluate_store(
        store, checkpoints, split, batch_size, device, method,
        json_out, figures, figure_patches, workers, scored, weights,
    )  # fmt: skip
    print_comparison(single_table(result, csv, markdown))
    print_store_details(result)
    for p in written:
        typer.echo(f"wrote {p}")
