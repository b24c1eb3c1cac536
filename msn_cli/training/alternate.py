"""``train-fusion --experts ... --alternate``: AWMF-CNN's end-to-end training.

The paper trains AWMF-CNN "similar to the original way": pre-train the three branches (10
epochs of ``train-meta --input xK``), then train the fusion, then alternate between the
branches and the fusion (20 epochs). Here epoch 1, 3, 5, ... train the fusion with the experts
frozen, L(S, Y1); epochs 2, 4, ... train the three experts with the fusion frozen, on
L(S, Y1) + L(S1, Y1) + L(S2, Y2) + L(S3, Y3) plus each expert's deep-supervision losses (as
in ``train-meta``), so the fused loss reaches the experts and each expert stays a segmenter
of its own input (Table 1 scores every branch). The fusion starts as ``--fusion-init``
says, like every fusion (default: the mean of the three experts). Each part has its own
Adam optimizer; both are in ``last.pt``. The final ``fusion/weights.pt`` holds the fusion and
the tuned experts (``model.json``: ``tune_experts``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from msn_cli.io.card import ModelCard
from msn_cli.runtime import to_input, to_target
from msn_cli.training.common import dataset, freeze, wrap_ddp
from msn_cli.training.config import FusionConfig
from msn_cli.training.context import Context
from msn_cli.training.data import Augment, FitView
from msn_cli.training.loop import segmentation_loss
from msn_cli.training.trainer import Epochs, Phase, Plan, Validation
from msn_cli.vocab import BRANCHES, LABELS, OUTPUTS


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


def alternating(model, card: ModelCard, cfg: FusionConfig, ctx: Context, fit_patches: int) -> Plan:
    """The alternating training of an independent-experts model (see the module docstring);
    ``fit_patches``: the size of the split it fits on."""
    trained = {"fusion": model.fusion, "experts": model.expert_modules()}
    opts = {k: torch.optim.Adam(list(m.parameters()), lr=cfg.lr) for k, m in trained.items()}

    def step(batch, step_net: nn.Module, part: str):
        x = [to_input(batch[k], ctx.device, ctx.channels_last, card.normalize) for k in BRANCHES]
        y = [to_target(batch[k], ctx.device) for k in LABELS]
        s, aux, fused = step_net(*x)
        losses = {"loss_fusion": segmentation_loss(fused, y[0])}
        preds = {"fusion": (fused, y[0])}
        for k, logits, extra, target in zip(BRANCHES, s, aux, y, strict=True):
            preds[k] = (logits, target)
            if part == "experts":
                losses[f"loss_{k}"] = segmentation_loss(logits, target)
                for i, a in enumerate(extra):
                    losses[f"loss_{k}_aux{i + 1}"] = segmentation_loss(a, target)
        return losses, preds

    def epoch_phase(epoch: int) -> Phase:
        part = phase(epoch)
        freeze(model, trained[part])
        step_net = wrap_ddp(AlternateStep(model, part == "experts"), ctx)
        return Phase(opts[part], partial(step, step_net=step_net, part=part), part)

    def epochs() -> Epochs:
        train = FitView(
            dataset(cfg.store, cfg.split, (*BRANCHES, *LABELS)),
            transform=Augment(cfg.seed, flips=cfg.augment, jitter=0.0),
        )
        return Epochs(train, epoch_phase)

    optimizers = {"optimizer": opts["fusion"], "optimizer_experts": opts["experts"]}
    validation = Validation(model, ("experts", "fusion"), OUTPUTS)
    config = {"fit_patches": fit_patches}
    return Plan(card, model.stage_part("fusion"), optimizers, epochs, validation, config)
