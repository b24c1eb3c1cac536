"""Stage ``train-meta`` (Step 1): the meta-branch on X3, L(S3, Y3).

``--input x1|x2`` trains the same backbone on another scale: the paper's separately trained
single-resolution baselines (such a directory cannot go on to ``train-memrm``). BiSeNet's two
auxiliary heads (deep supervision) add their cross-entropy with weight 1 in training.

``--pretrained imagenet|PATH`` starts the backbone's ResNet from ImageNet weights
(:mod:`msn_cli.models.pretrained`), read and checked before anything is written, and only when
the stage starts afresh: a resumed run never loads them over trained weights. The model then
takes ImageNet-normalised inputs; ``model.json`` records that (``normalize``) and the file
(``pretrained``: source, path, SHA-256), so that every later stage normalises identically.

Writes ``model.json`` (from the store: classes, patch size, magnifications; and the
backbone, width, input, normalisation, pretrained source), ``meta/last.pt`` after every
epoch, ``meta/history.jsonl`` (loss, training and validation mIoU, seconds, patches/s),
``meta/curves.png``, ``meta/config.json`` and finally ``meta/weights.pt``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.card import DEFAULT_NORMALIZE, IMAGENET_NORMALIZE
from msn_cli.io.checkpoints import CheckpointDir, ModelCard
from msn_cli.runtime import to_input, to_target
from msn_cli.training.common import StageResult, adam, dataset, store_spec, wrap_ddp
from msn_cli.training.config import MetaConfig
from msn_cli.training.context import make_context
from msn_cli.training.data import Augment, FitView
from msn_cli.training.loop import segmentation_loss
from msn_cli.training.trainer import Epochs, Phase, Plan, Trainer, Validation
from msn_cli.vocab import LABEL_OF


class MetaStep(nn.Module):
    """The DDP-wrapped training forward: logits and deep-supervision logits of one input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out.logits, out.aux_logits


def train_meta(cfg: MetaConfig) -> StageResult:
    """Train (or resume) the meta-branch; see the module docstring."""
    from msn_cli.models.msn import MSN, MSNConfig
    from msn_cli.models.pretrained import load_pretrained, pretrained_source

    cfg.validate()
    ck = CheckpointDir(cfg.checkpoints)
    spec = store_spec(cfg.store)
    try:
        mcfg = MSNConfig(
            backbone=cfg.backbone,
            width=cfg.width,
            num_classes=len(spec.classes),
            patch_size=spec.patch_size,
            magnifications=spec.magnifications,
        )
    except ValueError as exc:
        raise MsnUsageError("--backbone", str(exc)) from None
    source = pretrained_source(cfg.pretrained, cfg.backbone, cfg.width, mcfg.in_channels)
    normalize = DEFAULT_NORMALIZE if source is None else IMAGENET_NORMALIZE
    card = ModelCard(mcfg.to_dict(), list(spec.classes), cfg.input, normalize=normalize)
    _check_card(ck, card, cfg.restart, source)
    # Pretrained weights only for a fresh start (read and checked before anything changes).
    fresh = cfg.restart or not ck.exists() or not ck.stage("meta").last.is_file()
    weights = load_pretrained(source, cfg.backbone, mcfg.num_classes) if source and fresh else None
    if weights is not None:
        card = replace(card, pretrained=weights.record)
    ctx = make_context(cfg.device, cfg.amp, cfg.threads)
    try:
        trainer = Trainer(ck, "meta", ctx, cfg, {**cfg.to_dict(), "pretrained": source})
        state = trainer.start()
        if ctx.is_main and (cfg.restart or not ck.exists() or state is None):
            ck.write_card(card)
        ctx.barrier()
        model = MSN(mcfg)
        if weights is not None and state is None:
            weights.load_into(model.meta_branch)
        net = model.meta_branch.to(ctx.device)
        if ctx.channels_last:
            net.to(memory_format=torch.channels_last)
        step_net = wrap_ddp(MetaStep(net), ctx)
        opt = adam(net.parameters(), cfg.lr)
        xk, yk = cfg.input, LABEL_OF[cfg.input]

        def step(batch):
            x = to_input(batch[xk], ctx.device, ctx.channels_last, card.normalize)
            y = to_target(batch[yk], ctx.device)
            logits, aux = step_net(x)
            losses = {f"loss_{xk}": segmentation_loss(logits, y)}
            for i, a in enumerate(aux):
                losses[f"loss_aux{i + 1}"] = segmentation_loss(a, y)
            return losses, {xk: (logits, y)}

        def phase(epoch: int) -> Phase:
            net.train()
            return Phase(opt, step)

        def epochs() -> Epochs:
            aug = Augment(cfg.seed, flips=cfg.augment, jitter=cfg.color_jitter)
            return Epochs(FitView(dataset(cfg.store, cfg.split, (xk, yk)), transform=aug), phase)

        validation = Validation(model, ("meta",), (xk,))
        return trainer.fit(Plan(card, net, {"optimizer": opt}, epochs, validation))
    finally:
        ctx.close()


def _check_card(ck: CheckpointDir, card: ModelCard, restart: bool, source: str | None) -> None:
    """Refuse a directory that holds another model (unless --restart)."""
    if restart or not ck.exists():
        return
    from msn_cli.models.msn import ARCH_KEYS

    old = ck.read_card()
    if old.model.get("branches", "shared") != "shared":
        raise MsnError(
            ck.model_json,
            "holds independent experts (`train-fusion --experts`); use another --checkpoints "
            "directory or add --restart",
        )
    for key in ARCH_KEYS:
        if old.model.get(key) != card.model.get(key):
            raise MsnError(
                ck.model_json,
                f"holds a model with {key}={old.model.get(key)!r}, not {card.model.get(key)!r}; "
                "use another --checkpoints directory or add --restart",
            )
    was = old.pretrained.source if old.pretrained else None
    if was != source:
        raise MsnError(
            ck.model_json,
            f"holds a model started from pretrained={was!r}, not {source!r}; use another "
            "--checkpoints directory or add --restart",
        )
    if old.normalize != card.normalize:
        raise MsnError(
            ck.model_json,
            f"holds a model normalising inputs with {old.normalize}, not {card.normalize}; "
            "use another --checkpoints directory or add --restart",
        )
    if old.classes != card.classes or old.input != card.input:
        what = "classes" if old.classes != card.classes else "input"
        raise MsnError(
            ck.model_json,
            f"holds a model with another {what} ({getattr(old, what)!r}); use another "
            "--checkpoints directory or add --restart",
        )
