"""Stage ``train-fusion`` (Step 3): Meta-FM in support/query episodes, or a comparison fusion.

The meta-branch and Mem-RMs are frozen, so one pass over the fit patches caches what the
fusion needs (``fusion/cache/``, float16/float32 ``.npy`` memory maps):

* ``s1 s2 s3``: each branch's logits *before* the final bilinear upsampling (``Wo`` applied
  to the penultimate tensor: tiny), upsampled again per batch, which is exactly the model's
  own S1, S2, S3; skipped (recomputed per batch) when over ``cache_gb``;
* ``g1 g2 c1 c2``: per patch, -dL/dWo summed over its labelled pixels through the X1 branch
  (vs Y1) and the X2 branch (S2' vs Y1), and the pixel counts (``output_gradient``), so σ of
  any support batch is an exact, cheap average (Eq. 3); kept in memory (a few KB per patch).

Meta-FM episodes: for each query batch (the shuffled loader), a support batch of the same
size is drawn (seeded by seed, epoch, step, rank) from the other fit patches; σ comes from the
support batch, the loss L(S, Y1) from the query batch: no query label reaches the weights.
After each epoch σ* over the whole fit (support) set is stored (``model.store_sigma``), so the
checkpoint predicts without labels. ``--sigma pseudo`` instead gives each query patch its
own σ, from its pseudo-labels argmax(S1) (``p1 p2 q1 q2`` in the cache: the parts of
``g1 g2 c1 c2`` with that label), exactly as ``predict`` computes it, so no label reaches the
weights either and nothing is stored; the cached σ is the un-augmented patch's.
``--method conv|awmf`` train the comparison fusions
(AWMF reads the three images too). The fit set is the split, or by default the patches
``train-memrm --holdout`` held out (docs/architecture.md §4); with ``--experts``, the whole
split, or with ``--holdout-from DIR`` the patches DIR's train-memrm held out, so that
Table 3's rows fit their fusions on the same patches, for the same number of steps.
``--fusion-init average|he`` (default ``average``) starts every method alike
(:mod:`msn_cli.models.fusion`); ``config.json`` records it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import CheckpointDir, ModelCard
from msn_cli.models.base import OutputGradient
from msn_cli.models.fusion import sigma_from_gradients
from msn_cli.models.layers import upsample
from msn_cli.runtime import to_input, to_target
from msn_cli.training.alternate import alternating
from msn_cli.training.cache import ArrayCache, cache_key, normalization_part
from msn_cli.training.common import (
    StageResult,
    adam,
    checked_store,
    dataset,
    freeze,
    require_msn,
    store_spec,
    wrap_ddp,
)
from msn_cli.training.config import FusionConfig
from msn_cli.training.context import Context, make_context
from msn_cli.training.data import Augment, FitView, indices_of, ordered_loader
from msn_cli.training.experts import check_experts, write_experts
from msn_cli.training.loop import segmentation_loss
from msn_cli.training.trainer import Epochs, Phase, Plan, Trainer, Validation
from msn_cli.vocab import BRANCHES

log = logging.getLogger("msn")
LOGITS = ("s1", "s2", "s3")


class FusionStep(nn.Module):
    """The DDP-wrapped training forward: fused logits from the three branch logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, s1, s2, s3, images, sigma):
        return self.model.fuse(s1, s2, s3, images=images, sigma=sigma)


def train_fusion(cfg: FusionConfig) -> StageResult:
    """Train (or resume) the fusion; see the module docstring."""
    from msn_cli.models.msn import MSN

    cfg.validate()
    ck = CheckpointDir(cfg.checkpoints)
    if cfg.experts is not None:  # checked on every rank before any process group exists
        frozen_stages: tuple[str, ...] = ("experts",)
        spec = store_spec(cfg.store)
        held, use_holdout = _holdout_from(cfg, spec) if cfg.holdout_from else ({}, False)
        plan = check_experts(ck, cfg.expert_dirs, spec, cfg.store, cfg.restart)
    else:
        frozen_stages = ("meta", "memrm")
        held, use_holdout = _holdout(ck, cfg)
    ctx = make_context(cfg.device, cfg.amp, cfg.threads)
    try:
        if cfg.experts is not None:
            if ctx.is_main and plan is not None:
                write_experts(ck, cfg.expert_dirs, plan)
            ctx.barrier()
            checked_store(ck, cfg.store, *frozen_stages)
        card = ck.read_card()
        trainer = Trainer(ck, "fusion", ctx, cfg, {**cfg.to_dict(), "holdout": use_holdout})
        trainer.start()
        mcfg = replace(
            card.config(), fusion=cfg.method, tune_experts=cfg.alternate, sigma=cfg.sigma
        )
        new_card = replace(card, model=mcfg.to_dict())
        if ctx.is_main and new_card != card:
            ck.write_card(new_card)
        ctx.barrier()
        ds = dataset(cfg.store, cfg.split, (*BRANCHES, "y1"))
        fit = indices_of(ds, held, inside=True) if use_holdout else np.arange(len(ds))
        n_held = sum(map(len, held.values()))
        if use_holdout and len(fit) != n_held:
            raise MsnError(
                cfg.store,
                f"split {cfg.split!r} holds {len(fit)} of the {n_held} patches train-memrm held "
                "out: not the store (or split) it was trained on",
            )
        if cfg.method == "meta" and len(fit) < 2:
            raise MsnError(cfg.store, "Meta-FM episodes need at least 2 fit patches")

        model = MSN(mcfg, fusion_init=cfg.fusion_init)
        frozen, _ = ck.load_model("cpu", stages=frozen_stages)
        for name in frozen_stages:
            model.stage_part(name).load_state_dict(frozen.stage_part(name).state_dict())
        del frozen
        model.to(ctx.device)
        if ctx.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.alternate:
            return trainer.fit(alternating(model, new_card, cfg, ctx, len(fit)))
        return trainer.fit(_fusion(trainer, model, new_card, ds, fit, frozen_stages))
    finally:
        ctx.close()


def _fusion(trainer: Trainer, model, card: ModelCard, ds, fit, frozen: tuple[str, ...]) -> Plan:
    """The fusion on frozen branches, from their cached logits; Meta-FM in episodes."""
    cfg, ctx = trainer.cfg, trainer.ctx
    freeze(model, model.fusion)
    step_net = wrap_ddp(FusionStep(model), ctx)
    opt = adam(model.fusion_parameters(), cfg.lr)

    def epochs() -> Epochs:
        cache = _branch_cache(trainer, model, ds, fit, frozen, card)
        cached_logits = "s1" in cache.arrays

        def gradients(*names: tuple[str, str]) -> list[OutputGradient]:
            def load(key: str) -> torch.Tensor:
                return torch.from_numpy(cache.load(key)).to(ctx.device)

            return [OutputGradient(load(g), load(c)) for g, c in names]

        parts = gradients(("g1", "c1"), ("g2", "c2"))  # σ vs Y1: support sets (fixed)
        pseudo = gradients(("p1", "q1"), ("p2", "q2")) if model.pseudo else None
        need = [] if cached_logits and cfg.method != "awmf" else list(BRANCHES)
        aug = Augment(cfg.seed, flips=cfg.augment, jitter=0.0)
        train = FitView(
            dataset(cfg.store, cfg.split, (*need, "y1")),
            fit,
            cache,
            LOGITS if cached_logits else (),
            aug,
        )
        p = ds.spec.patch_size
        counter = {"epoch": 0, "step": 0}

        def step(batch):
            y1 = to_target(batch["y1"], ctx.device)
            x = [to_input(batch[k], ctx.device, ctx.channels_last, card.normalize) for k in need]
            if cached_logits:
                s = [upsample(batch[k].to(ctx.device).float(), (p, p)) for k in LOGITS]
            else:
                with torch.no_grad():
                    s = _branch_logits(model, *x)
            sigma, rows = None, batch["row"].numpy()
            if pseudo is not None:  # the query patches' own label-free σ, as at predict
                sigma = _sigma(pseudo, torch.from_numpy(rows).to(ctx.device), per_sample=True)
            elif cfg.method == "meta":
                sigma = _support_sigma(parts, rows, len(fit), cfg, ctx, counter)
            fused = step_net(*s, x if cfg.method == "awmf" else None, sigma)
            counter["step"] += 1
            return {"loss_fusion": segmentation_loss(fused, y1)}, {"fusion": (fused, y1)}

        def phase(epoch: int) -> Phase:
            counter["epoch"] = epoch
            counter["step"] = 0
            freeze(model, model.fusion)
            return Phase(opt, step)

        def store_sigma() -> None:  # σ* over the whole fit (support) set
            model.store_sigma(_sigma(parts, slice(None)))

        fixed = cfg.method == "meta" and not model.pseudo
        return Epochs(train, phase, store_sigma if fixed else None)

    validation = Validation(model, (*frozen, "fusion"), ("x1", "fusion"))
    return Plan(
        card, model.fusion, {"optimizer": opt}, epochs, validation, {"fit_patches": len(fit)}
    )


def _holdout(ck: CheckpointDir, cfg: FusionConfig) -> tuple[dict, bool]:
    """The patches train-memrm held out, and whether to fit on them."""
    require_msn(ck)
    checked_store(ck, cfg.store, "meta", "memrm")
    memrm_cfg = ck.stage("memrm").read_config() or {}
    held = memrm_cfg.get("held_out") or {}
    use_holdout = bool(held) if cfg.holdout is None else cfg.holdout
    if use_holdout and not held:
        raise MsnError(
            ck.stage("memrm").config,
            "train-memrm held no patches out; rerun it with --holdout F, or drop --holdout",
        )
    if use_holdout and memrm_cfg.get("split") != cfg.split:
        raise MsnError(
            ck.stage("memrm").config,
            f"the held-out patches are from split {memrm_cfg.get('split')!r}, not "
            f"{cfg.split!r}; use --split {memrm_cfg.get('split')} or --no-holdout",
        )
    return held, use_holdout


def _holdout_from(cfg: FusionConfig, spec) -> tuple[dict, bool]:
    """``--holdout-from DIR``: the patches DIR's train-memrm held out (its fusion's fit set)."""
    src = CheckpointDir(cfg.holdout_from)
    src.require("memrm")
    src.check_store(spec, cfg.store)
    memrm_cfg = src.stage("memrm").read_config() or {}
    held = memrm_cfg.get("held_out") or {}
    if not held:
        raise MsnError(
            src.stage("memrm").config,
            "train-memrm held no patches out (its fusion fits on the whole split): drop "
            "--holdout-from",
        )
    if memrm_cfg.get("split") != cfg.split:
        raise MsnError(
            src.stage("memrm").config,
            f"the held-out patches are from split {memrm_cfg.get('split')!r}, not "
            f"{cfg.split!r}; use --split {memrm_cfg.get('split')}",
        )
    return held, True


def _sigma(parts: Sequence[OutputGradient], rows, per_sample: bool = False) -> torch.Tensor:
    """σ (Eq. 3) of the fit patches ``rows`` from the cached per-patch parts (X1, X2): their
    mean (D,), or each patch's own (len(rows), D) with ``per_sample``."""
    picked = (OutputGradient(g.grad_sum[rows], g.count[rows]) for g in parts)
    return sigma_from_gradients(*picked, per_sample=per_sample)


def _support_sigma(parts, query: np.ndarray, n: int, cfg, ctx: Context, counter) -> torch.Tensor:
    """σ of a support batch drawn from the fit patches outside this query batch."""
    rng = np.random.default_rng([cfg.seed, counter["epoch"], counter["step"], ctx.rank, 17])
    others = np.setdiff1d(np.arange(n), query)
    support = rng.choice(others, size=min(cfg.batch_size, len(others)), replace=False)
    return _sigma(parts, torch.from_numpy(np.sort(support)).to(ctx.device))


def _branch_logits(model, x1, x2, x3) -> list[torch.Tensor]:
    meta = model.meta_features(x3)
    s1 = model.branch(x1, "x1", meta.features).logits
    s2 = model.branch(x2, "x2", meta.features).logits
    return [s1, s2, meta.logits]


def _branch_cache(trainer: Trainer, model, ds, fit, frozen, card: ModelCard) -> ArrayCache:
    """Per fit patch: low-resolution branch logits (if within budget) and σ parts."""
    cfg, ctx, stage = trainer.cfg, trainer.ctx, trainer.stage
    p, head = ds.spec.patch_size, model.meta_branch
    with torch.no_grad():
        pen = head(torch.zeros(1, 3, p, p, device=ctx.device)).penultimate
        low = tuple(head.head(pen).shape[1:])
    d = head.output_size
    arrays = {"g1": ((d,), "float32"), "g2": ((d,), "float32"), "c1": ((), "int64")}
    arrays["c2"] = ((), "int64")
    if model.pseudo:  # σ "pseudo": the same parts with argmax S1 as the label
        arrays.update({"p1": ((d,), "float32"), "p2": ((d,), "float32")})
        arrays.update({"q1": ((), "int64"), "q2": ((), "int64")})
    logits = {k: (low, "float16") for k in LOGITS}
    n = len(fit)
    if ArrayCache(stage.cache, logits, n).nbytes <= cfg.cache_gb * 1e9:
        arrays.update(logits)
    else:
        log.info("branch-logit cache over --cache-gb %g: recomputing them per batch", cfg.cache_gb)
    cache = ArrayCache(stage.cache, arrays, n)
    built = trainer.ck.built_on("fusion")  # the files the frozen branches were loaded from
    weights = [built[s] for s in frozen]
    key = cache_key(
        *weights, card.model["gap_layers"], card.model.get("crop"), sorted(arrays), ds.url
    )
    key = cache_key(key, ds.slide_names, fit.tolist(), *normalization_part(card.normalize))
    if cache.valid(key):
        return cache
    if ctx.is_main:
        cache.create()
    ctx.barrier()
    with torch.no_grad():
        for batch in ordered_loader(FitView(ds, fit), cfg.batch_size, ctx, trainer.workers):
            x1, x2, x3 = (
                to_input(batch[k], ctx.device, ctx.channels_last, card.normalize) for k in BRANCHES
            )
            y1 = to_target(batch["y1"], ctx.device)
            with ctx.autocast():
                meta = model.meta_features(x3)
                out1 = model.branch(x1, "x1", meta.features)
                out2 = model.branch(x2, "x2", meta.features)
            g1, g2 = model.output_gradients(out1, out2, y1)
            rows = batch["row"].numpy()
            vals = {"g1": g1.grad_sum, "g2": g2.grad_sum, "c1": g1.count, "c2": g2.count}
            if model.pseudo:
                p1, p2 = model.pseudo_gradients(out1, out2)
                vals.update(p1=p1.grad_sum, p2=p2.grad_sum, q1=p1.count, q2=p2.count)
            if "s1" in arrays:
                for k, out in zip(LOGITS, (out1, out2, meta), strict=True):
                    vals[k] = model.branch_net("x" + k[1]).head(out.penultimate.float())
            for k, v in vals.items():
                cache.write(k, rows, v.float().cpu().numpy().astype(arrays[k][1]))
    ctx.barrier()
    if ctx.is_main:
        cache.seal(key)
    ctx.barrier()
    return cache
