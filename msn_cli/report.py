"""Rich tables for the CLI's summaries (printing only; the data comes from the stages)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _console() -> Console:
    return Console(soft_wrap=True)


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
    con.print(f"ignored (255): {data['ignored_fraction']:.3f} of X1 pixels")
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
