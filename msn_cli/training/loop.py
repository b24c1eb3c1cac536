"""One epoch of training, its loss, and validation: what :class:`~msn_cli.training.trainer.
Trainer` runs each epoch (the resumable loop around them lives there)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from msn_cli.errors import MsnError
from msn_cli.metrics import DeviceConfusion
from msn_cli.runtime import to_input, to_target
from msn_cli.training.context import Context
from msn_cli.vocab import BRANCHES, IGNORE, LABEL_OF, TARGETS


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (Eq. 4) averaged over labelled pixels; 0 (with a graph) if none is."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp(min=1)


@torch.no_grad()
def validate(
    model: nn.Module,
    stages: Sequence[str],
    card,
    loader,
    outputs: Sequence[str],
    ctx: Context,
) -> dict[str, float]:
    """mIoU of each output over the loader (sharded over ranks, summed), via run_branches."""
    from msn_cli.inference import run_branches

    cms = {o: DeviceConfusion(len(card.classes), ctx.device) for o in outputs}
    was_training = model.training
    model.eval()
    for batch in loader:
        x = {
            k: to_input(batch[k], ctx.device, ctx.channels_last, card.normalize)
            if k in batch
            else None
            for k in BRANCHES
        }
        with ctx.autocast():
            out = run_branches(model, stages, card, x["x1"], x["x2"], x["x3"], outputs)
        for o in outputs:
            cms[o].update(out[o], to_target(batch[TARGETS[o]], ctx.device))
    model.train(was_training)
    return {o: cms[o].result(ctx).miou() for o in outputs}


def val_score(record: dict, select: Sequence[str]) -> float | None:
    """The score that picks ``best.pt``: the mean validation mIoU (``val_miou_<output>``) of
    the outputs ``select`` in one history record; None when one is missing or NaN.

    Example:
        >>> val_score({"val_miou_x1": 0.5, "val_miou_x2": 0.25}, ("x1", "x2"))
        0.375
        >>> val_score({"loss": 1.0}, ("x3",)) is None
        True
    """
    values = [record.get(f"val_miou_{o}") for o in select]
    ok = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not select or len(ok) != len(values) or any(math.isnan(v) for v in ok):
        return None
    return float(sum(ok) / len(ok))


def best_epoch(history: Sequence[dict], select: Sequence[str]) -> tuple[int, float] | None:
    """``(epoch, score)`` of the history record with the highest :func:`val_score` (ties: the
    earlier epoch); None when no record has a score (no validation).

    Example:
        >>> h = [{"epoch": 1, "val_miou_x2": 0.4}, {"epoch": 2, "val_miou_x2": 0.6},
        ...      {"epoch": 3, "val_miou_x2": 0.6}, {"epoch": 4, "val_miou_x2": 0.5}]
        >>> best_epoch(h, ("x2",))
        (2, 0.6)
    """
    best: tuple[int, float] | None = None
    for record in history:
        score = val_score(record, select)
        if score is not None and (best is None or score > best[1]):
            best = (int(record["epoch"]), score)
    return best


def val_fields(outputs: Sequence[str]) -> tuple[str, ...]:
    """The store fields that scoring ``outputs`` reads: a branch's input and labels; the
    fusion's three inputs and Y1."""
    fields: set[str] = set()
    for o in outputs:
        fields.update((o, LABEL_OF[o]) if o in LABEL_OF else (*BRANCHES, TARGETS[o]))
    return tuple(sorted(fields))


Step = Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], dict[str, tuple]]]


def fit_epoch(
    loader,
    step: Step,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: Context,
    description: str,
    total: int,
    num_classes: int,
) -> dict[str, float]:
    """One pass over ``loader``: ``step(batch)`` returns (named losses, {output: (logits,
    target)}); their sum is minimised. Returns mean losses, training mIoU per output,
    seconds and patches/s (summed over ranks). A last batch of a single patch is skipped
    (when the batch size is larger), since BatchNorm cannot train on it."""
    from msn_cli.progress import progress

    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    cms: dict[str, DeviceConfusion] = {}
    seen = torch.zeros((), dtype=torch.float64, device=ctx.device)
    bar = progress(description, total, "patches") if ctx.is_main else nullcontext(_Silent())
    single_ok = getattr(loader, "batch_size", None) in (None, 1)
    steps = skipped = 0
    with bar as p:
        for batch in loader:
            if len(batch["row"]) == 1 and not single_ok:
                # The last batch holds one patch: BatchNorm cannot train on a 1x1 map of one
                # sample (PSPNet's pooling, AWMF's weighting net), so it sits this epoch out.
                p.advance(ctx.world)
                skipped += 1
                continue
            steps += 1
            optimizer.zero_grad(set_to_none=True)
            with ctx.autocast():
                losses, preds = step(batch)
            loss = sum(losses.values())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = len(batch["row"])
            seen += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach().double() * n
            for o, (logits, target) in preds.items():
                cms.setdefault(o, DeviceConfusion(num_classes, ctx.device)).update(logits, target)
            p.advance(n * ctx.world, loss=f"{loss.item():.4f}")
    if steps == 0 and skipped:
        raise MsnError(
            None,
            "no training step this epoch: the only batch held a single patch (BatchNorm needs "
            "2 or more); use more patches, or fewer processes",
        )
    count = ctx.all_sum(seen).clamp(min=1)
    record: dict[str, float] = {}
    if len(sums) > 1:
        record["loss"] = float(sum(ctx.all_sum(v) for v in sums.values()) / count)
    for k, v in sums.items():
        record[k] = float(ctx.all_sum(v) / count)
    for o, cm in cms.items():
        record[f"train_miou_{o}"] = cm.result(ctx).miou()
    seconds = time.perf_counter() - t0
    record["seconds"] = seconds
    record["patches_per_s"] = float(count) / max(seconds, 1e-9)
    return record


class _Silent:
    def advance(self, n: int = 1, **fields: object) -> None:
        pass
