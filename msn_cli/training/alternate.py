"""``train-fusion --experts ... --alternate``: AWMF-CNN's end-to-end training.

The paper trains AWMF-CNN "similar to the original way": pre-train the three branches (10
epochs of ``train-meta --input xK``), then train the fusion, then alternate between the
branches and the fusion (20 epochs). Here epoch 1, 3, 5, ... train the fusion with the experts
frozen, L(S, Y1); epochs 2, 4, ... train the three experts with the fusion frozen, on
L(S, Y1) + L(S1, Y1) + L(S2, Y2) + L(S3, Y3) plus each expert's deep-supervision losses (as
in ``train-meta``), so the fused loss reaches the experts and each expert stays a segmenter
of its own input (Table 1 scores every branch). Each part has its own
Adam optimizer; both are in ``last.pt``. The final ``fusion/weights.pt`` holds the fusion and
the tuned experts (``model.json``: ``tune_experts``).
"""

from __future__ import annotations

import torch
from torch import nn

from msn_cli.runtime import to_input, to_target
from msn_cli.training.common import StageResult, dataset, freeze, wrap_ddp
from msn_cli.training.data import Augment, FitView, ordered_loader, train_loader
from msn_cli.training.loop import fit_epoch, segmentation_loss, val_fields, validate
from msn_cli.training.plots import plot_history

OUTPUTS = ("x1", "x2", "x3", "fusion")
TARGETS = ("y1", "y2", "y3")


class AlternateStep(nn.Module):
    """The DDP-wrapped forward: the three experts' logits and the fused logits."""

    def __init__(self, model: nn.Module, tune_experts: bool) -> None:
        super().__init__()
        self.model = model
        self.tune_experts = tune_experts

    def forward(self, x1, x2, x3):
        """(S1, S2, S3), their deep-supervision logits (training experts only), and S."""
        with torch.set_grad_enabled(self.tune_experts and torch.is_grad_enabled()):
            outs = [self.model.branch(x, k) for x, k in ((x1, "x1"), (x2, "x2"), (x3, "x3"))]
        s = [o.logits for o in outs]
        return s, [o.aux_logits for o in outs], self.model.fuse(*s, images=(x1, x2, x3))


def phase(epoch: int) -> str:
    """What epoch ``epoch`` (0-based) trains: ``fusion`` first, then ``experts``, in turn."""
    return "fusion" if epoch % 2 == 0 else "experts"


def train_alternating(run, model, card, cfg, ctx, state, scaler, workers) -> StageResult:
    """The alternating loop of an independent-experts model (see the module docstring)."""
    experts = model.expert_modules()
    trained = {"fusion": model.fusion, "experts": experts}
    opts = {k: torch.optim.Adam(list(m.parameters()), lr=cfg.lr) for k, m in trained.items()}
    parts = {
        "model": model.stage_part("fusion"),
        "optimizer": opts["fusion"],
        "optimizer_experts": opts["experts"],
        "scaler": scaler,
    }
    start = run.resume(parts, state)
    if start >= cfg.epochs and run.stage.complete:
        return StageResult("fusion", run.stage.dir, 0, run.history, "already finished", ctx.rank)
    train = FitView(
        dataset(cfg.store, cfg.split, ("x1", "x2", "x3", *TARGETS)),
        transform=Augment(cfg.seed, flips=cfg.augment, jitter=0.0),
    )
    run.write_config(fit_patches=len(train))
    val = None
    if cfg.val_split:
        vds = dataset(cfg.store, cfg.val_split, val_fields(OUTPUTS), "--val-split")
        val = ordered_loader(vds, cfg.batch_size, ctx, workers)
    loader = train_loader(train, cfg.batch_size, cfg.seed, ctx, workers)
    nc = len(card.classes)
    for epoch in range(start, cfg.epochs):
        part = phase(epoch)
        freeze(model, trained[part])
        step_net = wrap_ddp(AlternateStep(model, part == "experts"), ctx)

        def step(batch, step_net=step_net, part=part):
            x = [
                to_input(batch[k], ctx.device, ctx.channels_last, card.normalize)
                for k in ("x1", "x2", "x3")
            ]
            y = [to_target(batch[k], ctx.device) for k in TARGETS]
            s, aux, fused = step_net(*x)
            losses = {"loss_fusion": segmentation_loss(fused, y[0])}
            preds = {"fusion": (fused, y[0])}
            for k, logits, extra, target in zip(OUTPUTS[:3], s, aux, y, strict=True):
                preds[k] = (logits, target)
                if part == "experts":
                    losses[f"loss_{k}"] = segmentation_loss(logits, target)
                    for i, a in enumerate(extra):
                        losses[f"loss_{k}_aux{i + 1}"] = segmentation_loss(a, target)
            return losses, preds

        loader.sampler.set_epoch(epoch)
        desc = f"train-fusion {epoch + 1}/{cfg.epochs} ({part})"
        record = fit_epoch(loader, step, opts[part], scaler, ctx, desc, len(train), nc)
        record["trained"] = part
        if val is not None:
            miou = validate(model, ("experts", "fusion"), card, val, OUTPUTS, ctx)
            record.update({f"val_miou_{k}": v for k, v in miou.items()})
        run.end_epoch(epoch, record, parts)
    run.finish(
        model.stage_part("fusion").state_dict(),
        lambda: plot_history(run.history, run.stage.file("curves.png"), "train-fusion"),
    )
    return StageResult("fusion", run.stage.dir, cfg.epochs - start, run.history, rank=ctx.rank)
