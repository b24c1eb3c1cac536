"""What the commands over many slides (``tile``, ``predict``) share: the slides from the
arguments and ``--manifest``, ``--shard``, the inputs a slide's outputs must not overwrite, and
the per-slide failure report.

No torch, no stages: the slides' results come in, one line per failure goes out.

Example:
    >>> from pathlib import Path
    >>> [r.slide.name for r in slide_rows([Path("a.svs"), Path("b.svs")], None)]
    ['a.svs', 'b.svs']
    >>> ["a", "b", "c", "d", "e"][shard_slice("1/2")]
    ['b', 'd']
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from msn_cli.console import error, state
from msn_cli.errors import MsnUsageError
from msn_cli.io.manifest import ManifestRow
from msn_cli.options import parse_shard


def slide_rows(
    slides: Sequence[Path] | None, manifest: Path | None, labels: Path | None = None
) -> list[ManifestRow]:
    """The ``--manifest`` rows, then one row per SLIDE argument (its labels ``labels``, no
    split); a usage error when there are none."""
    from msn_cli.io.manifest import read_manifest

    rows = read_manifest(manifest) if manifest else []
    rows += [ManifestRow(s, labels, None) for s in slides or []]
    if not rows:
        raise MsnUsageError("SLIDE", "give at least one slide or --manifest")
    return rows


def shard_slice(text: str | None) -> slice:
    """The slides of this ``--shard I/N`` (or SLURM array task): every N-th from the I-th."""
    index, count = parse_shard(text)
    return slice(index, None, count)


def slide_inputs(slide: Path) -> tuple[list[Path], list[Path]]:
    """The files an output must not be (the slide and the annotations beside it) and the
    folder it must not write into (an MRXS slide's data folder, where there is one)."""
    from msn_cli.io.annotations import annotations_beside

    data = slide.parent / slide.stem
    return [slide, *annotations_beside(slide)], [data] if data.is_dir() else []


def finish(results: Sequence, print_table: Callable[[Sequence], None]) -> None:
    """Print the table of the slides (when any did not fail), then each failed slide's error
    in one line (its traceback too with --debug); exit 1 when any failed."""
    if any(r.status != "failed" for r in results):
        print_table(results)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        if state["debug"] and r.exc is not None:
            traceback.print_exception(r.exc)
        error(r.error or f"{r.slide}: failed")
    if failed:
        raise typer.Exit(1)
