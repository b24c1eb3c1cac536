"""The resumable epoch loop every training stage runs, and its loss and validation.

After each epoch, rank 0 writes the stage's ``last.pt`` atomically: the trained part's
weights, optimizer, grad scaler, epoch, history, the resolved configuration, and the RNG
states and data order as tensors (``torch.load(weights_only=True)`` reads it). Rerunning the
same command loads it and continues with the next epoch; since data order and augmentation
derive from (seed, epoch) and every RNG is restored, the result equals an uninterrupted run
(on CPU, same threads). A ``last.pt`` made with other options is refused (``--restart``
starts over); ``--epochs`` may grow to train a finished stage further.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import STAGES, CheckpointDir
from msn_cli.metrics import ConfusionMatrix
from msn_cli.models.base import IGNORE_INDEX
from msn_cli.runtime import to_input, to_target
from msn_cli.training.context import Context
from msn_cli.training.rng import capture_rng, restore_rng

log = logging.getLogger("msn")

#: Options that may change between a run and its resumption.
RESUMABLE = frozenset(
    {"epochs", "workers", "device", "amp", "threads", "restart", "cache_gb", "store", "checkpoints"}
)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (Eq. 4) averaged over labelled pixels; 0 (with a graph) if none is."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


class Confusion:
    """A confusion matrix accumulated on the device (no sync per batch)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.n = num_classes
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.argmax(1).flatten()
        t = target.flatten()
        keep = t != IGNORE_INDEX
        idx = t[keep] * self.n + pred[keep]
        self.counts += torch.bincount(idx, minlength=self.n * self.n)

    def result(self, ctx: Context) -> ConfusionMatrix:
        cm = ConfusionMatrix(self.n)
        cm.matrix += ctx.all_sum(self.counts).cpu().numpy().reshape(self.n, self.n)
        return cm


class StageRun:
    """One stage's run in a checkpoint directory: config, resume, per-epoch checkpoints."""

    def __init__(self, ck: CheckpointDir, name: str, ctx: Context, config: dict[str, Any]):
        # ``base``: the SHA-256 of every earlier stage's weights this stage is built on.
        self.ck, self.ctx, self.config = ck, ctx, {**config, "base": ck.base_of(name)}
        self.stage = ck.stage(name)
        self.name = name
        self.history: list[dict[str, Any]] = []

    # -- start ----------------------------------------------------------------------------
    def restart(self) -> None:
        """Forget this stage and the stages after it (they were built on it)."""
        if self.ctx.is_main:
            for later in STAGES[STAGES.index(self.name) :]:
                st = self.ck.stage(later)
                if later != self.name and st.dir.exists() and any(st.dir.iterdir()):
                    log.warning("%s: removed (it depended on the restarted stage)", st.dir)
                st.reset()
                for extra in st.dir.glob("*") if st.dir.is_dir() else ():
                    _remove(extra)
        self.ctx.barrier()

    def check_resumable(self) -> dict[str, Any] | None:
        """The saved ``last.pt`` (refused when made with other options), or None."""
        state = self.stage.load_last()
        if state is None:
            return None
        saved = dict(state.get("config", {}))
        if "base" in saved:  # (checkpoints of msn 0.1 record no base)
            self.ck.check_base(self.name, saved["base"], self.stage.last)
        diff = sorted(
            k
            for k in set(saved) | set(self.config)
            if k not in RESUMABLE | {"base"} and saved.get(k) != self.config.get(k)
        )
        if diff:
            k = diff[0]
            raise MsnError(
                self.stage.last,
                f"was made with {k}={saved.get(k)!r}, not {self.config.get(k)!r}; rerun with "
                f"the same options to resume, or add --restart to start over",
            )
        return state

    def resume(self, parts: dict[str, Any], state: dict[str, Any] | None) -> int:
        """Load ``state`` (from :meth:`check_resumable`) into ``parts``; the next epoch."""
        if state is None:
            return 0
        for key, obj in parts.items():
            if obj is not None and key in state:
                obj.load_state_dict(state[key])
        restore_rng(state["rng"])
        self.history = list(state.get("history", []))
        done = int(state["epoch"])
        if self.ctx.is_main:
            log.info("%s: resuming after epoch %d", self.stage.dir, done)
            if self.stage.weights.exists() and done < int(self.config["epochs"]):
                self.stage.weights.unlink()  # training further: not finished any more
        self.ctx.barrier()
        return done

    def write_config(self, **extra: Any) -> None:
        """``config.json``: the options, plus what the stage derived (``extra``)."""
        if self.ctx.is_main:
            self.stage.write_config({**self.config, **extra})

    # -- per epoch ------------------------------------------------------------------------
    def end_epoch(self, epoch: int, record: dict[str, Any], parts: dict[str, Any]) -> None:
        """Record epoch ``epoch`` (0-based) and write ``last.pt`` (rank 0), atomically."""
        self.history.append({"epoch": epoch + 1, **record})
        if self.ctx.is_main:
            state = {k: v.state_dict() for k, v in parts.items() if v is not None}
            state.update(
                epoch=epoch + 1,
                config=self.config,
                history=self.history,
                rng=capture_rng(),
                data_order=torch.tensor([int(self.config.get("seed", 0)), epoch + 1]),
            )
            self.stage.save_last(state)
            self.stage.write_history(self.history)
            line = " ".join(f"{k}={_fmt(v)}" for k, v in record.items())
            log.info("%s epoch %d/%d: %s", self.name, epoch + 1, self.config["epochs"], line)
        self.ctx.barrier()

    def finish(self, weights: dict[str, Any], plot: Callable[[], None] | None = None) -> None:
        if self.ctx.is_main:
            if plot is not None:
                plot()
            self.stage.save_weights(weights)
        self.ctx.barrier()


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

    target_of = {"x1": "y1", "x2": "y2", "x3": "y3", "fusion": "y1"}
    cms = {o: Confusion(len(card.classes), ctx.device) for o in outputs}
    was_training = model.training
    model.eval()
    for batch in loader:
        x = {
            k: to_input(batch[k], ctx.device, ctx.channels_last, card.normalize)
            if k in batch
            else None
            for k in ("x1", "x2", "x3")
        }
        with ctx.autocast():
            out = run_branches(model, stages, card, x["x1"], x["x2"], x["x3"], outputs)
        for o in outputs:
            cms[o].update(out[o], to_target(batch[target_of[o]], ctx.device))
    model.train(was_training)
    return {o: cms[o].result(ctx).miou() for o in outputs}


def val_fields(outputs: Sequence[str]) -> tuple[str, ...]:
    need = {"x1": ("x1", "y1"), "x2": ("x2", "y2"), "x3": ("x3", "y3")}
    fields: set[str] = set()
    for o in outputs:
        fields.update(need.get(o, ("x1", "x2", "x3", "y1")))
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
    cms: dict[str, Confusion] = {}
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
                cms.setdefault(o, Confusion(num_classes, ctx.device)).update(logits, target)
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _remove(path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
