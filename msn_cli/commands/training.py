"""``msn train-meta``, ``train-memrm``, ``train-fusion``: the paper's three training steps."""

from __future__ import annotations

from msn_cli.console import reported
from msn_cli.errors import MsnError
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_STORE,
    CheckpointsOpt,
    DeviceOpt,
    SeedOpt,
    StoreOpt,
    WorkersOpt,
    parse_device,
)


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
    raise MsnError(None, "`msn train-meta` is not implemented yet")


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
    raise MsnError(None, "`msn train-memrm` is not implemented yet")


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
    raise MsnError(None, "`msn train-fusion` is not implemented yet")
