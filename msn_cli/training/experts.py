"""``train-fusion --experts``: three separately trained experts become one multi-branch model.

The paper's comparison systems that fuse independent branches (Table 1's AWMF-CNN, Table 3's
"Multi-branch" and "Meta-branch" rows) are built from ``train-meta`` directories: the
selected ``meta`` weights of each source (``best.pt``, else ``weights.pt``) become the expert
of one input, X1, X2, X3 in that order. A source may be a single-resolution baseline
(``train-meta --input x1``) or an MSN directory, whose meta-branch then serves an input it was
not trained on (Table 3's "Meta-branch": the X3-trained meta-branch applied to every input).
All three must share the backbone, width, classes, patch size, magnifications and input
normalisation, and match the store; the new ``model.json`` takes their normalisation (and
their ``pretrained`` record when they share it).

The new directory gets ``model.json`` (``branches: independent``) and ``experts/`` with the
three experts' weights and a ``config.json`` naming each source and the SHA-256 of the
weights taken from it; importing again with the same sources is a no-op, other sources are
refused (``--restart`` re-imports and drops every other stage).
"""

from __future__ import annotations

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import CheckpointDir, ModelCard
from msn_cli.io.store import StoreSpec
from msn_cli.training.cache import file_digest
from msn_cli.vocab import BRANCHES


def _sources(dirs: list[str], spec: StoreSpec, url: str) -> tuple[list[ModelCard], dict]:
    """Each source's card, checked against the store and the first source."""
    from msn_cli.models.msn import ARCH_KEYS

    cards: list[ModelCard] = []
    recorded = {}
    for which, src in zip(BRANCHES, dirs, strict=True):
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
            if card.normalize != first.normalize:
                raise MsnError(
                    sck.model_json,
                    f"expert {which} normalises inputs with {card.normalize}, expert x1 with "
                    f"{first.normalize}; the three experts must share it",
                )
        cards.append(card)
        weights = sck.stage("meta").selected
        recorded[which] = {
            "checkpoints": str(src),
            "trained_on": card.input,
            "epochs": len(sck.stage("meta").read_history()),
            "sha256": file_digest(weights),
        }
    return cards, recorded


def check_experts(
    ck: CheckpointDir, dirs: list[str], spec: StoreSpec, url: str, restart: bool
) -> dict | None:
    """Check the sources and ``ck`` (read-only: every rank runs it before training starts).

    Returns what :func:`write_experts` records, or None when ``ck`` already holds these
    experts.
    """
    _, recorded = _sources(dirs, spec, url)
    stage = ck.stage("experts")
    if not ck.exists() or restart:
        return recorded
    if ck.read_card().model.get("branches", "shared") != "independent":
        raise MsnError(
            ck.model_json,
            "holds an MSN, not independent experts; use another --checkpoints directory",
        )
    done = (stage.read_config() or {}).get("sources") or {}
    if not stage.complete:
        return recorded
    if done == recorded:
        return None
    changed = next(b for b in BRANCHES if done.get(b) != recorded[b])
    was = (done.get(changed) or {}).get("checkpoints")
    if was == recorded[changed]["checkpoints"]:
        why = f"the weights of expert {changed} ({was}) changed since they were imported"
    else:
        why = f"holds other experts (expert {changed} came from {was})"
    raise MsnError(stage.config, f"{why}; use another --checkpoints directory or add --restart")


def write_experts(ck: CheckpointDir, dirs: list[str], recorded: dict) -> None:
    """Write ``ck``'s model.json and ``experts/`` (every earlier stage is dropped).

    Call on the main rank only, after :func:`check_experts`; the caller synchronises.
    """
    from msn_cli.io.checkpoints import STAGES, load_checkpoint_file
    from msn_cli.models.msn import ARCH_KEYS, MSN, MSNConfig

    cards = [CheckpointDir(d).read_card() for d in dirs]
    first = cards[0]
    mcfg = MSNConfig(**{k: first.model[k] for k in ARCH_KEYS}, branches="independent")
    model = MSN(mcfg)
    for which, src in zip(BRANCHES, dirs, strict=True):
        weights = CheckpointDir(src).stage("meta").selected
        try:
            model.branch_net(which).load_state_dict(load_checkpoint_file(weights))
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            text = " ".join(str(exc).split())[:200]
            raise MsnError(weights, f"weights do not fit its model.json: {text}") from exc
    for name in STAGES:
        ck.stage(name).reset()
    same = all(c.pretrained == first.pretrained for c in cards)
    card = ModelCard(
        mcfg.to_dict(),
        list(first.classes),
        input="x3",
        extra={"experts": dirs},
        normalize=first.normalize,
        pretrained=first.pretrained if same else None,
    )
    ck.write_card(card)
    stage = ck.stage("experts")
    stage.write_config({"sources": recorded})
    stage.save_weights(model.stage_part("experts").state_dict())
