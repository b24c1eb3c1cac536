"""``msn synth``: synthetic slides with annotations and a manifest, for demos and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.errors import MsnUsageError
from msn_cli.options import SeedOpt


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
