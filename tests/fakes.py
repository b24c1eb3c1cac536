"""Checkpoint directories with random-init weights, for tests that need a model but no training."""

from __future__ import annotations

from pathlib import Path

import torch

from msn_cli.io.checkpoints import EXPERT_STAGES, MSN_STAGES, CheckpointDir, ModelCard
from msn_cli.models.msn import MSN, MSNConfig

CLASSES = ("normal", "benign", "in situ", "invasive")


def random_checkpoints(
    path: Path,
    stages=None,
    seed: int = 0,
    classes=CLASSES,
    histories: dict[str, list[dict]] | None = None,
    **config,
) -> tuple[CheckpointDir, MSN]:
    """A checkpoint directory whose finished ``stages`` hold random weights (Meta-FM gets a
    random stored σ*, so the fusion predicts without labels; with ``sigma="pseudo"`` a
    generator whose kernels depend on each patch's σ). ``config``: MSNConfig fields
    (default: BiSeNet at width 0.125, patch 32); ``branches="independent"`` makes a directory
    of experts (default stages: experts and fusion)."""
    torch.manual_seed(seed)
    cfg = MSNConfig(**{"backbone": "bisenet", "width": 0.125, "patch_size": 32, **config,
                       "num_classes": len(classes)})  # fmt: skip
    model = MSN(cfg)
    if stages is None:
        stages = EXPERT_STAGES if cfg.branches == "independent" else MSN_STAGES
    ck = CheckpointDir(path)
    ck.write_card(ModelCard(cfg.to_dict(), list(classes)))
    if cfg.fusion == "meta" and "fusion" in stages:
        if cfg.sigma == "fixed":
            model.store_sigma(torch.randn(model.sigma_dim))
        else:  # σ per patch: a generator that, as a trained one, depends on it
            torch.nn.init.normal_(model.fusion.fc2.weight, std=0.5)
    for name in stages:
        st = ck.stage(name)
        if name != "experts":  # as training writes it: best.pt (here the final weights) first
            info = {"epoch": 1, "score": None, "select": [], "reason": "random weights"}
            st.save_best(model.stage_part(name).state_dict(), info)
        st.save_weights(model.stage_part(name).state_dict())
        if histories and name in histories:
            st.write_history(histories[name])
    return ck, model
