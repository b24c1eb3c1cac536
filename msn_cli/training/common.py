"""Setup every training stage shares: inputs checked, model parts frozen, result summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.dataset import PatchDataset
from msn_cli.io.store import PatchStore, StoreSpec


@dataclass
class StageResult:
    """What a training stage did: its folder, the epochs it ran now, the history."""

    stage: str
    directory: Path
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    rank: int = 0  # under torchrun only rank 0 reports


def store_spec(url: str) -> StoreSpec:
    return PatchStore.open(url).spec


def checked_store(ck: CheckpointDir, url: str, *stages: str) -> StoreSpec:
    """Refuse missing earlier stages and a store unlike ``model.json``; the store's spec."""
    ck.require(*stages)
    spec = store_spec(url)
    ck.check_store(spec, url)
    return spec


def require_msn(ck: CheckpointDir) -> None:
    card = ck.read_card()
    if card.model.get("branches", "shared") != "shared":
        raise MsnError(
            ck.model_json,
            "holds independent experts (`train-fusion --experts`); give the same --experts "
            "to train its fusion, or use an MSN directory",
        )
    if card.input != "x3":
        raise MsnError(
            ck.model_json,
            f"the meta-branch was trained on {card.input} (a single-resolution baseline); "
            "MSN needs `msn train-meta --input x3` in its own --checkpoints directory",
        )


def dataset(url: str, split: str, fields, what: str = "--split") -> PatchDataset:
    try:
        return PatchDataset(url, split=split, fields=fields)
    except MsnError as exc:
        raise MsnError(url, f"{exc.problem} ({what} {split})") from None


def freeze(model: nn.Module, trained: nn.Module) -> None:
    """Only ``trained``'s parameters learn; everything is in eval mode but ``trained``."""
    model.requires_grad_(False)
    trained.requires_grad_(True)
    model.eval()
    trained.train()


def wrap_ddp(module: nn.Module, ctx) -> nn.Module:
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr)
