"""Stage ``train-memrm`` (Step 2): gap layers, then the X1 and X2 Mem-RMs.

1. Gap-layer analysis (Fig. 1): X1, X2, X3 of up to ``analysis_patches`` fit patches through
   the frozen meta-branch; per candidate layer the activation statistics, X3's context
   dependence at X1's and X2's fields of view and a gap score (:mod:`msn_cli.training.gaps`),
   saved as ``memrm/gap_layers.json`` and ``memrm/gap_layers.png``. ``--gap-layers auto``
   takes the ``--top-k`` highest, ``nongap`` the ``--top-k`` lowest (Table 4's ablation);
   ``default`` (the default) the backbone's deep gap layers (see
   :mod:`msn_cli.training.gaps`). The chosen layers go into ``model.json`` (``gap_layers``),
   which sets the model's Mem-RMs.
2. The Mem-RMs learn with L(S1, Y1) + L(S2, Y2), the meta-branch frozen (eval mode). X3's
   meta-features at the gap layers never change in this stage, so they are computed once per
   patch into ``memrm/cache/`` (float16 ``.npy`` memory maps, read by the DataLoader workers)
   and reused every epoch. When that would exceed ``cache_gb`` they are recomputed per batch
   instead. Augmentation flips/rotates the cached maps with the images; a mirrored axis moves
   a map's pixels to the mirrored phase of their grid, so each sample carries where its maps
   were mirrored (``orient``) and the crop samples them where they now sit
   (:mod:`msn_cli.models.memory`). Colour jitter touches X1/X2 only, X3's features come from
   the original image. ``--crop`` (``model.json``'s ``crop``) is the crop geometry:
   ``receptive-field`` (default) or msn 0.1.0's ``centre``.
3. ``--holdout F`` leaves a seeded fraction F of the split's patches out of Mem-RM training
   and records them (``held_out`` in ``memrm/config.json``); ``train-fusion`` then fits the
   fusion on exactly those by default (docs/architecture.md §4).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from msn_cli.io.atomic import atomic_write_json
from msn_cli.io.card import Normalization
from msn_cli.io.checkpoints import CheckpointDir, ModelCard
from msn_cli.plots import gap_figure, parse_gap_stats
from msn_cli.runtime import to_input, to_target
from msn_cli.training.cache import ArrayCache, cache_key, normalization_part
from msn_cli.training.common import (
    StageResult,
    adam,
    checked_store,
    dataset,
    freeze,
    require_msn,
    wrap_ddp,
)
from msn_cli.training.config import MemRMConfig
from msn_cli.training.context import make_context
from msn_cli.training.data import Augment, FitView, holdout_split, indices_of, ordered_loader
from msn_cli.training.gaps import choose_layers, layer_statistics, parse_gap_layers
from msn_cli.training.loop import segmentation_loss, val_fields
from msn_cli.training.trainer import Epochs, Phase, Plan, Trainer, Validation
from msn_cli.vocab import BRANCHES

log = logging.getLogger("msn")


class MemRMStep(nn.Module):
    """The DDP-wrapped training forward: S1 and S2 through their Mem-RMs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x1, x2, memory, mirrored=None):
        m = self.model
        s1 = m.branch(x1, "x1", memory, mirrored=mirrored).logits
        return s1, m.branch(x2, "x2", memory, mirrored=mirrored).logits


#: A 2x2 map of each pixel's (x, y) index, turned with a sample by the augmentation: where
#: the cached meta-features of that sample ended up mirrored (:func:`mirrored_axes`).
ORIENT = torch.tensor([[[0, 1], [0, 1]], [[0, 0], [1, 1]]], dtype=torch.int8)


class Oriented:
    """An :class:`Augment` that also turns ``ORIENT`` with each sample (field ``orient``)."""

    def __init__(self, augment: Augment) -> None:
        self.augment = augment

    def __call__(self, sample, epoch: int | None = None):
        return self.augment({**sample, "orient": ORIENT.clone()}, epoch)


def mirrored_axes(orient: torch.Tensor) -> torch.Tensor:
    """(B, 2) booleans from turned ``ORIENT`` maps (B, 2, 2, 2): x, y axes now mirrored.

    Along the x axis (a row) one of the turned index maps changes by +1 or -1: -1 means the
    maps' x axis runs backwards (a flip, or a rotation that brought a reversed axis there).

    Example:
        >>> mirrored_axes(torch.flip(ORIENT, dims=(-1,))[None]).tolist()
        [[True, False]]
    """
    along_x = (orient[..., 0, 1] - orient[..., 0, 0]).sum(-1)
    along_y = (orient[..., 1, 0] - orient[..., 0, 0]).sum(-1)
    return torch.stack([along_x < 0, along_y < 0], dim=-1)


def train_memrm(cfg: MemRMConfig) -> StageResult:
    """Analyse the gap layers and train (or resume) the Mem-RMs; see the module docstring."""
    from msn_cli.models.msn import MSN

    cfg.validate()
    ck = CheckpointDir(cfg.checkpoints)
    require_msn(ck)
    checked_store(ck, cfg.store, "meta")
    card = ck.read_card()
    norm = card.normalize  # the meta-branch's, for every input of this stage
    names = parse_gap_layers(cfg.gap_layers, _candidates(card), _defaults(card))
    ctx = make_context(cfg.device, cfg.amp, cfg.threads)
    try:
        trainer = Trainer(ck, "memrm", ctx, cfg, cfg.to_dict())
        state = trainer.start()
        fields = (*BRANCHES, "y1", "y2")
        ds = dataset(cfg.store, cfg.split, fields)
        held = holdout_split(ds, cfg.holdout, cfg.seed) if cfg.holdout > 0 else {}
        fit = indices_of(ds, held, inside=False) if held else np.arange(len(ds))
        if len(fit) == 0:
            raise_usage("--holdout", "leaves no patch to train the Mem-RMs on")

        meta, _ = ck.load_model(ctx.device, stages=("meta",))
        stats = _gap_analysis(trainer, meta, ds, fit, cfg, norm, reuse=state is not None)
        chosen = names or tuple(stats["chosen"])
        mcfg = replace(card.config(), gap_layers=chosen, crop=cfg.crop)
        new_card = replace(card, model=mcfg.to_dict())
        if ctx.is_main and new_card != card:
            ck.write_card(new_card)
            if ck.stage("fusion").complete:
                log.warning(
                    "%s: built on other gap layers or another crop; rerun train-fusion",
                    ck.stage("fusion").dir,
                )
        ctx.barrier()

        model = MSN(mcfg).to(ctx.device)
        model.meta_branch.load_state_dict(meta.meta_branch.state_dict())
        del meta
        if ctx.channels_last:
            model.to(memory_format=torch.channels_last)
        freeze(model, model.memory_recall)
        step_net = wrap_ddp(MemRMStep(model), ctx)
        opt = adam(model.memory_parameters(), cfg.lr)

        def epochs() -> Epochs:
            cache = _meta_feature_cache(trainer, model, ds, fit, cfg, norm)
            mem_keys = [f"mem_{g}" for g in chosen]
            tfields = ("x1", "x2", "y1", "y2") if cache is not None else fields
            aug = Augment(cfg.seed, flips=cfg.augment, jitter=cfg.color_jitter, images=("x1", "x2"))
            oriented = cache is not None and cfg.augment  # cached maps turned after the fact
            train = FitView(
                dataset(cfg.store, cfg.split, tfields),
                fit,
                cache,
                mem_keys if cache is not None else (),
                Oriented(aug) if oriented else aug,
            )

            def step(batch):
                x1 = to_input(batch["x1"], ctx.device, ctx.channels_last, norm)
                x2 = to_input(batch["x2"], ctx.device, ctx.channels_last, norm)
                mirrored = None
                if cache is not None:
                    memory = {g: batch[f"mem_{g}"].to(ctx.device).float() for g in chosen}
                    if oriented:
                        mirrored = mirrored_axes(batch["orient"]).to(ctx.device)
                else:
                    with torch.no_grad():
                        x3 = to_input(batch["x3"], ctx.device, ctx.channels_last, norm)
                        memory = model.meta_features(x3).features
                y1, y2 = to_target(batch["y1"], ctx.device), to_target(batch["y2"], ctx.device)
                s1, s2 = step_net(x1, x2, memory, mirrored)
                losses = {
                    "loss_x1": segmentation_loss(s1, y1),
                    "loss_x2": segmentation_loss(s2, y2),
                }
                return losses, {"x1": (s1, y1), "x2": (s2, y2)}

            def phase(epoch: int) -> Phase:
                freeze(model, model.memory_recall)
                return Phase(opt, step)

            return Epochs(train, phase)

        # Validating X1 and X2 runs the meta-branch on X3 too.
        validation = Validation(model, ("meta", "memrm"), ("x1", "x2"), val_fields(BRANCHES))
        derived = {"gap_layers_chosen": list(chosen), "held_out": held, "fit_patches": len(fit)}
        plan = Plan(new_card, model.memory_recall, {"optimizer": opt}, epochs, validation, derived)
        return trainer.fit(plan)
    finally:
        ctx.close()


def raise_usage(option: str, problem: str) -> None:
    from msn_cli.errors import MsnUsageError

    raise MsnUsageError(option, problem)


def _candidates(card: ModelCard) -> tuple[str, ...]:
    from msn_cli.models.registry import backbone_spec

    return backbone_spec(card.model["backbone"]).candidate_layers


def _defaults(card: ModelCard) -> tuple[str, ...]:
    from msn_cli.models.registry import backbone_spec

    return tuple(backbone_spec(card.model["backbone"]).default_gap_layers)


def _gap_analysis(trainer: Trainer, meta, ds, fit, cfg, norm: Normalization, reuse: bool) -> dict:
    """Fig. 1 statistics (reused from ``gap_layers.json`` when resuming), top-k chosen."""
    ctx, path = trainer.ctx, trainer.stage.gap_stats
    if reuse and path.is_file():
        return json.loads(path.read_text())
    n = min(cfg.analysis_patches, len(fit))
    pick = fit[np.unique(np.linspace(0, len(fit) - 1, n).round().astype(int))]
    view = FitView(ds, pick)
    loader = ordered_loader(view, cfg.batch_size, ctx, trainer.workers)
    stats = layer_statistics(meta.meta_branch, loader, ctx, norm, meta.config.ratios)
    nongap = cfg.gap_layers.strip().lower() == "nongap"
    stats["chosen"] = list(choose_layers(stats, cfg.top_k, lowest=nongap))
    stats["top_k"] = cfg.top_k
    stats["lowest"] = nongap  # --gap-layers nongap: the top_k lowest scores
    if ctx.is_main:
        atomic_write_json(path, stats)
        if (figure := parse_gap_stats(stats)) is not None:
            gap_figure(figure, trainer.stage.gap_figure)
    return stats


def _meta_feature_cache(
    trainer: Trainer, model, ds, fit, cfg, norm: Normalization
) -> ArrayCache | None:
    """X3's gap-layer meta-features of every fit patch, computed once (float16 on disk)."""
    ctx, p = trainer.ctx, ds.spec.patch_size
    with torch.no_grad():
        probe = model.meta_features(torch.zeros(1, 3, p, p, device=ctx.device)).features
    arrays = {f"mem_{g}": (tuple(t.shape[1:]), "float16") for g, t in probe.items()}
    cache = ArrayCache(trainer.stage.cache, arrays, len(fit))
    if cache.nbytes > cfg.cache_gb * 1e9:
        log.info(
            "meta-feature cache would take %.1f GB > --cache-gb %g: recomputing per batch",
            cache.nbytes / 1e9,
            cfg.cache_gb,
        )
        return None
    weights = trainer.ck.built_on("memrm")["meta"]  # the file the frozen meta-branch is
    key = cache_key(
        weights, sorted(arrays), ds.url, ds.slide_names, fit.tolist(), *normalization_part(norm)
    )
    if cache.valid(key):
        return cache
    if ctx.is_main:
        cache.create()
    ctx.barrier()
    view = FitView(dataset(cfg.store, cfg.split, ("x3",)), fit)
    with torch.no_grad():
        for batch in ordered_loader(view, cfg.batch_size, ctx, trainer.workers):
            x3 = to_input(batch["x3"], ctx.device, ctx.channels_last, norm)
            with ctx.autocast():
                feats = model.meta_features(x3).features
            rows = batch["row"].numpy()
            for g, t in feats.items():
                cache.write(f"mem_{g}", rows, t.float().cpu().numpy().astype(np.float16))
    ctx.barrier()
    if ctx.is_main:
        cache.seal(key, {"arrays": {k: list(v[0]) for k, v in arrays.items()}})
    ctx.barrier()
    return cache
