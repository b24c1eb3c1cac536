"""``msn evaluate``: the paper's per-branch mIoU tables, slide scores, reports, figures."""

from __future__ import annotations

from msn_cli.console import reported
from msn_cli.errors import MsnError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_STORE,
    CheckpointsOpt,
    DeviceOpt,
    StoreOpt,
    parse_device,
)


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
    raise MsnError(None, "`msn evaluate` is not implemented yet")
