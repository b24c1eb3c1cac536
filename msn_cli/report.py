"""Every summary the commands print: one printer per result, printing only (the data and
numbers come from the stages).

Imported inside the command bodies (rich is not needed for ``msn --help``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from msn_cli.vocab import IGNORE, OUTPUTS, TARGETS

if TYPE_CHECKING:
    from msn_cli.evaluation.compare import Comparison


def _console() -> Console:
    return Console(soft_wrap=True)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def print_tile_results(results) -> None:
    table = Table(title="msn tile")
    for col in ("slide", "status", "patches", "grid", "seconds", "patches/s"):
        table.add_column(col, justify="left" if col in ("slide", "status") else "right")
    for r in results:
        rate = f"{r.n_patches / r.seconds:.1f}" if r.seconds > 0 and r.n_patches else "-"
        table.add_row(
            r.name, r.status, str(r.n_patches), str(r.n_grid or "-"), f"{r.seconds:.1f}", rate
        )
    _console().print(table)


def print_predict_results(results) -> None:
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
    _console().print(table)


def print_training(result) -> None:
    """One line per training stage: epochs trained and the last epoch's mIoUs (rank 0 only)."""
    if result.rank != 0:
        return
    if result.note:
        typer.echo(f"{result.directory}: {result.note} (add --epochs N to train further)")
        return
    last = result.history[-1] if result.history else {}
    scores = ", ".join(
        f"{k.replace('_miou_', ' mIoU ')} {v:.3f}"
        for k, v in last.items()
        if "miou" in k and isinstance(v, float) and v == v
    )
    typer.echo(f"{result.directory}: {result.epochs_run} epoch(s) trained; {scores or 'done'}")


def print_store(data: dict[str, Any]) -> None:
    con = _console()
    con.print(
        f"[bold]{data['store']}[/bold]  patch {data['patch_size']}  levels "
        f"{' '.join(data['levels'])}  schema v{data['schema_version']}"
    )
    splits = Table(title="patches per split")
    for col in ("split", "slides", "patches"):
        splits.add_column(col)
    for name, s in data["splits"].items():
        splits.add_row(name, str(s["slides"]), str(s["patches"]))
    con.print(splits)
    classes = Table(title="class pixel fractions (X1, labelled pixels)")
    classes.add_column("index", justify="right")
    classes.add_column("class")
    classes.add_column("fraction", justify="right")
    for i, (name, frac) in enumerate(data["class_fractions"].items()):
        classes.add_row(str(i), name, f"{frac:.3f}")
    con.print(classes)
    con.print(f"ignored ({IGNORE}): {data['ignored_fraction']:.3f} of X1 pixels")
    slides = Table(title="slides")
    for col in ("name", "split", "patches", "size", "mpp", "codecs (x1 x2 x3)", "complete"):
        slides.add_column(col)
    for s in data["slides"]:
        mpp = f"{s['mpp']:.3f}" if s["mpp"] else "-"
        slides.add_row(
            s["name"],
            s["split"],
            str(s["patches"]),
            "x".join(map(str, s["size"])),
            mpp,
            " ".join(s["codecs"] or ["-"]),
            "yes" if s["complete"] else "NO",
        )
    con.print(slides)


def print_slide(data: dict[str, Any]) -> None:
    """``msn info SLIDE``: the pyramid, then one table per ``--mpp`` choice."""
    con = _console()
    mpp = f"{data['mpp']:.4g} µm/px" if data["mpp"] else "no mpp recorded"
    power = f", {data['objective_power']:g}x objective" if data["objective_power"] else ""
    w, h = data["size"]
    con.print(f"[bold]{data['slide']}[/bold]  {data['vendor']}  {w}x{h}  {mpp}{power}")
    if data["associated"]:
        con.print(f"associated images: {', '.join(data['associated'])}")
    pyramid = Table(title="pyramid levels")
    for col in ("level", "size", "downsample", "µm/px"):
        pyramid.add_column(col, justify="right")
    for lv in data["levels"]:
        um = f"{lv['mpp']:.4g}" if lv["mpp"] else "-"
        pyramid.add_row(
            str(lv["level"]), "x".join(map(str, lv["size"])), f"{lv['downsample']:.4g}", um
        )
    con.print(pyramid)
    asked = " ".join(data["levels_asked"])
    for row in data["serving"]:
        choice = f"--levels {asked} --patch-size {data['patch_size']}"
        choice += f" --mpp {row['mpp']:g}" if row["mpp"] else " (X1 at level 0)"
        if not row["ok"]:
            con.print(f"[red]cannot serve[/red] {choice}: {row['problem']}")
            continue
        table = Table(title=f"{choice}: {row['patches']} patches")
        for col in ("branch", "downsample", "µm/px", "read from", "decode/px", "view µm"):
            table.add_column(col, justify="left" if col in ("branch", "read from") else "right")
        for b in row["branches"]:
            table.add_row(
                b["branch"],
                f"{b['downsample']:.4g}",
                f"{b['mpp']:.4g}" if b["mpp"] else "-",
                f"level {b['read_level']} ({b['read']})",
                f"{b['decode_per_pixel']:.3g}",
                f"{b['view_um']:.0f}" if b["view_um"] else "-",
            )
        con.print(table)
        for note in row["notes"]:
            con.print(f"  note: {note}")


def print_models(rows: list[dict[str, Any]]) -> None:
    table = Table(title="# Parm (M)")
    table.add_column("model")
    table.add_column("ours", justify="right")
    table.add_column("paper", justify="right")
    for r in rows:
        paper = r.get("paper_m")
        table.add_row(r["name"], f"{r['params_m']:.4g}", "-" if paper is None else f"{paper:g}")
    _console().print(table)


def print_comparison(table: Comparison) -> None:
    """The table; one that merges several runs per cell has its note (runs, sd) as caption."""
    t = Table(title=table.title, caption=table.note)  # caption None: none
    for col, kind in zip(table.columns, table.kinds, strict=True):
        t.add_column(col, justify="left" if kind == "text" else "right")
    for row in table.cells():
        t.add_row(*row)
    _console().print(t)


def print_versus(table: Comparison, a: str, b: str) -> None:
    """Row ``a`` against row ``b``, one line per mIoU column: separated (more than one sd
    apart), not separated, or one run (see :func:`msn_cli.evaluation.compare.versus`)."""
    from msn_cli.evaluation.compare import versus

    for line in versus(table, a, b):
        typer.echo(line)


def print_store_details(result: dict[str, Any]) -> None:
    """Per-class IoU of every output and each output's confusion matrix; S2′/S3′ against Y1
    (``x2@y1``, ``x3@y1``) too where the result has them."""
    from msn_cli.evaluation.compare import ALIGNED_KEYS, STORE_FIELDS

    con = _console()
    classes = result["classes"]
    heads = {o: f"{o.upper()} vs {TARGETS[o].upper()}" for o in OUTPUTS}
    heads.update({key: STORE_FIELDS[col] for col, key in ALIGNED_KEYS.items()})
    outs = [o for o in heads if result["iou"].get(o) is not None]
    t = Table(title=f"IoU (%) per class, {result['n_patches']} patches of '{result['split']}'")
    t.add_column("class")
    for o in outs:
        t.add_column(heads[o], justify="right")
    for i, name in enumerate(classes):
        t.add_row(name, *[_pct(result["iou"][o][i]) for o in outs])
    con.print(t)
    for o in outs:
        title = o.upper() if o in TARGETS else heads[o]
        print_confusion(result["confusion"][o], classes, f"confusion {title} (rows: truth)")


def print_confusion(matrix: list[list[int]], classes: list[str], title: str) -> None:
    t = Table(title=title)
    t.add_column("truth \\ pred")
    for name in classes:
        t.add_column(name, justify="right")
    for name, row in zip(classes, matrix, strict=True):
        t.add_row(name, *[str(v) for v in row])
    _console().print(t)


def print_slides(result: dict[str, Any]) -> None:
    classes = result["classes"]
    t = Table(title="IoU (%) over whole slides")
    for col in ("slide", "mIoU", *classes, "pixels", "unpredicted"):
        t.add_column(col, justify="left" if col == "slide" else "right")
    entries = [(s["name"], s) for s in result["slides"]] + [("pooled", result["pooled"])]
    for name, s in entries:
        t.add_row(
            name,
            _pct(s["miou"]),
            *[_pct(v) for v in s["iou"]],
            str(s["pixels"]),
            str(s["unpredicted_pixels"]),
        )
    _console().print(t)
    print_confusion(result["pooled"]["confusion"], classes, "pooled confusion (rows: truth)")
