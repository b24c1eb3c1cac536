"""``msn predict``: whole slides into pyramidal TIFF masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.errors import MsnError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    CheckpointsOpt,
    DeviceOpt,
    ShardOpt,
    WorkersOpt,
    parse_device,
    parse_shard,
)


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
    raise MsnError(None, "`msn predict` is not implemented yet")
