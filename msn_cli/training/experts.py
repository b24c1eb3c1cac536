"""``train-fusion --experts``: three separately trained experts become one multi-branch model.

The paper's comparison systems that fuse independent branches (Table 1's AWMF-CNN, Table 3's
"Multi-branch" and "Meta-branch" rows) are built from ``train-meta`` directories: each
source's ``meta/weights.pt`` becomes the expert of one input, X1, X2, X3 in that order. A
source may be a single-resolution baseline (``train-meta --input x1``) or an MSN directory,
whose meta-branch then serves an input it was not trained on (Table 3's "Meta-branch": the
X3-trained meta-branch applied to every input). All three must share the backbone, width,
classes, patch size and magnifications, and match the store.

The new directory gets ``model.json`` (``branches: independent``) and ``experts/`` with the
three experts' weights and a ``config.json`` naming each source and the SHA-256 of the
weights taken from it; importing again with the same sources is a no-op, other sources are
refused (``--restart`` re-imports and drops the fusion).
"""

from __future__ import annotations

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import CheckpointDir, ModelCard
from msn_cli.io.store import StoreSpec
from msn_cli.training.cache import file_digest

EXPERT_INPUTS = ("x1", "x2", "x3")


def _sources(dirs: list[str], spec: StoreSpec, url: str) -> tuple[list[ModelCard], dict]:
    """Each source's card, checked against the store and the first source."""
    from msn_cli.models.msn import ARCH_KEYS

    cards: list[ModelCard] = []
    recorded = {}
    for which, src in zip(EXPERT_INPUTS, dirs, strict=True):
        sck = CheckpointDir(src)
        sck.require("meta")
        sck.check_store(spec, url)
        card = sck.read_card()
        if cards:
            first = cards[0]
            for key in ARCH_KEYS:
                if card.model.get(key) != first.model.get(key):
                    raise MsnError(
                        sck.model_json,
                        f"expert {which} has {key}={card.model.get(key)!r}, expert x1 "
                        f"{first.model.get(key)!r}; the three experts must share the architecture",
                    )
        cards.append(card)
        weights = sck.stage("meta").weights
        recorded[which] = {
            "checkpoints": str(src),
            "trained_on": card.input,
            "epochs": len(sck.stage("meta").read_history()),
            "sha256": file_digest(weights),
        }
    return cards, recorded


def import_experts(ck: CheckpointDir, dirs: list[str], spec: StoreSpec, url: str, restart: bool):
    """Write (or check) ``ck``'s model.json and ``experts/``; returns the ModelCard.

    Call on the main rank only; the caller synchronises the others.
    """
    from msn_cli.io.checkpoints import load_checkpoint_file
    from msn_cli.models.msn import ARCH_KEYS, MSN, MSNConfig

    cards, recorded = _sources(dirs, spec, url)
    stage = ck.stage("experts")
    if ck.exists() and not restart:
        old = ck.read_card()
        if old.model.get("branches", "shared") != "independent":
            raise MsnError(
                ck.model_json,
                "holds an MSN, not independent experts; use another --checkpoints directory",
            )
        done = (stage.read_config() or {}).get("sources")
        if stage.complete and done == recorded:
            return old
        if stage.complete:
            done = done or {}
            changed = next(b for b in EXPERT_INPUTS if done.get(b) != recorded[b])
            was = (done.get(changed) or {}).get("checkpoints")
            raise MsnError(
                stage.config,
                f"holds other experts (expert {changed} came from {was}); use another "
                "--checkpoints directory or add --restart",
            )
    mcfg = MSNConfig(**{k: cards[0].model[k] for k in ARCH_KEYS}, branches="independent")
    model = MSN(mcfg)
    for which, src in zip(EXPERT_INPUTS, dirs, strict=True):
        weights = CheckpointDir(src).stage("meta").weights
        try:
            model.branch_net(which).load_state_dict(load_checkpoint_file(weights))
        except (RuntimeError, KeyError) as exc:
            first = " ".join(str(exc).split())[:200]
            raise MsnError(weights, f"weights do not fit its model.json: {first}") from exc
    card = ModelCard(
        mcfg.to_dict(), list(cards[0].classes), input="x3", extra={"experts": list(dirs)}
    )
    stage.reset()
    for later in ("fusion",):
        ck.stage(later).reset()
    ck.write_card(card)
    stage.write_config({"sources": recorded})
    stage.save_weights(model.stage_part("experts").state_dict())
    return card
