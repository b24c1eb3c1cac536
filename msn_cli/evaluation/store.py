"""Store mode: every available output of a checkpoint on one split of the patch store.

Imports torch: only imported inside a command's body or a stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from msn_cli.errors import MsnError
from msn_cli.evaluation import SCHEMA_VERSION
from msn_cli.evaluation.results import scores
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.dataset import PatchDataset
from msn_cli.io.store import PatchStore
from msn_cli.metrics import ConfusionMatrix
from msn_cli.models.layers import count_parameters
from msn_cli.vocab import ALIGNED, BRANCHES, LABELS, OUTPUTS, TARGETS


@dataclass
class Shown:
    """Patches kept for the Fig. 4 grid: images, labels and each output's prediction (numpy)."""

    images: dict[str, np.ndarray] = field(default_factory=dict)  # x1.. -> (K, P, P, 3)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # y1.. -> (K, P, P)
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # x1.. fusion -> (K, P, P)
    names: list[str] = field(default_factory=list)  # "slide#patch"


FUSION_NAMES = {"meta": "Meta-FM", "conv": "w/o Meta", "awmf": "AWMF fusion"}


def method_name(
    backbone: str, stages: tuple[str, ...], model_input: str, model=None, extra=None
) -> str:
    """A default row label: Table 1/3/5 style (``model``: its ``MSNConfig`` dict, ``extra``:
    model.json's ``extra``)."""
    model, extra = model or {}, extra or {}
    fusion = FUSION_NAMES.get(str(model.get("fusion")), str(model.get("fusion")))
    if "experts" in stages:
        sources = extra.get("experts") or []
        kind = "Meta-branch" if len(set(sources)) == 1 else "Multi-branch"
        if "fusion" not in stages:
            return f"{kind} ({backbone})"
        if model.get("fusion") == "awmf":
            return f"AWMF-CNN ({backbone}{'' if model.get('tune_experts') else ', fixed'})"
        return f"{kind} + {fusion} ({backbone})"
    if model_input != "x3":
        return f"{backbone} ({model_input.upper()} only)"
    if "memrm" not in stages:
        return f"Meta-branch ({backbone})"
    if "fusion" not in stages:
        return f"MSN w/o fusion ({backbone})"
    if model.get("fusion", "meta") != "meta":
        return f"MSN ({backbone}, {fusion})"
    return f"MSN ({backbone})"


def trained_parameters(model, stages: tuple[str, ...]) -> int:
    """Parameters of the parts the finished stages trained (the whole model once all are),
    each counted once."""
    unique = {id(p): p for s in stages for p in model.stage_part(s).parameters()}
    return sum(p.numel() for p in unique.values())


def loaded_epoch(ck: CheckpointDir, stage: str, path) -> int | None:
    """The training epoch (1-based) of a stage's loaded weights file: ``best.json``'s for
    ``best.pt``, the last recorded one for ``weights.pt``; None when unknown (``experts``)."""
    st = ck.stage(stage)
    if path == st.best:
        info = st.read_best() or {}
        epoch = info.get("epoch")
        return epoch if isinstance(epoch, int) else None
    history = st.read_history()
    return int(history[-1]["epoch"]) if history else None


def evaluate_store(
    store: str,
    checkpoints: str,
    split: str = "test",
    batch_size: int = 16,
    device: str = "auto",
    method: str | None = None,
    show: int = 0,
    workers: int = 0,
    outputs: Sequence[str] | None = None,
    weights: str = "best",
) -> tuple[dict[str, Any], Shown]:
    """Score every output the checkpoint can produce on ``split``; see the package docstring.

    ``weights`` (``best`` or ``last``) picks the top stage's best.pt or weights.pt (the
    stages under it: the weights it was trained on); the result records it (``weights``) and
    the file of each stage (``weight_files``, relative to the checkpoint directory).

    ``show`` > 0 keeps that many evenly spaced patches (with predictions) for the Fig. 4 grid.
    ``workers`` DataLoader processes read the store (0: in this process); order is fixed.
    ``outputs`` limits the scored outputs (default: all the checkpoint has; others are null).
    X2 and X3, where scored, are also scored in X1's frame against Y1 (S2′, S3′: ``x2@y1``,
    ``x3@y1``, :data:`~msn_cli.vocab.ALIGNED`).
    Runs in float32 with deterministic kernels, so equal inputs give equal numbers.
    """
    from msn_cli.inference import available_outputs, run_branches
    from msn_cli.runtime import resolve_device, to_input

    if batch_size < 1:
        raise MsnError(None, f"--batch-size must be >= 1, got {batch_size}")
    ck = CheckpointDir(checkpoints)
    card = ck.read_card()
    opened = PatchStore.open(store)
    ck.check_store(opened.spec, str(store))
    dev = resolve_device(device)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    model, stages = ck.load_model(dev, weights=weights)
    files = {s: p.relative_to(ck.path).as_posix() for s, p in ck.loaded.items()}
    epochs = {s: loaded_epoch(ck, s, p) for s, p in ck.loaded.items()}
    have = available_outputs(stages, card.input)
    if not have:
        raise MsnError(ck.path, "no finished stage to evaluate; run `msn train-meta` first")
    if outputs is None:
        outputs = have
    else:
        from msn_cli.errors import MsnUsageError

        bad = [o for o in outputs if o not in have]
        if not outputs or bad or len(set(outputs)) != len(outputs):
            raise MsnUsageError(
                "--outputs",
                f"{','.join(outputs) or 'nothing'}: this checkpoint scores {', '.join(have)} "
                "(each at most once)",
            )
        outputs = tuple(o for o in OUTPUTS if o in outputs)
    ds = PatchDataset(str(store), split=split)
    n = len(ds)
    nc = len(card.classes)
    aligned = {o: key for o, key in ALIGNED.items() if o in outputs}
    cms = {o: ConfusionMatrix(nc) for o in (*outputs, *aligned.values())}
    keep = set(np.unique(np.linspace(0, n - 1, show).round().astype(int)).tolist()) if show else ()
    kept: dict[str, list[np.ndarray]] = {}
    names: list[str] = []
    from msn_cli.training.data import Loader, ignore_sigint

    loader = Loader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        worker_init_fn=ignore_sigint if workers else None,
    )
    from msn_cli.progress import progress

    with progress(f"evaluate {split}", total=n, unit="patches") as bar, torch.inference_mode():
        for batch in loader:
            xs = [to_input(batch[b], dev, normalize=card.normalize) for b in BRANCHES]
            logits = run_branches(model, stages, card, *xs, outputs=outputs)
            preds = {o: logits[o].argmax(1).to(torch.uint8).cpu() for o in outputs}
            for o in outputs:
                target = batch[TARGETS[o]]
                if preds[o].shape != target.shape:
                    raise MsnError(
                        ck.path, f"output {o} is {tuple(preds[o].shape)}, labels {target.shape}"
                    )
                cms[o].update(preds[o].numpy(), target.numpy())
            y1 = batch["y1"]
            for o, key in aligned.items():  # S2′, S3′: in X1's frame, against Y1
                s = model.align(logits[o], o, y1.shape[-2:]).argmax(1).to(torch.uint8).cpu()
                cms[key].update(s.numpy(), y1.numpy())
            if keep:
                rows = [i for i, j in enumerate(batch["index"].tolist()) if j in keep]
                for i in rows:
                    slide, p = ds.locate(int(batch["index"][i]))
                    names.append(f"{slide}#{p}")
                    for b in BRANCHES:
                        kept.setdefault(b, []).append(batch[b][i].permute(1, 2, 0).numpy())
                    for y in LABELS:
                        kept.setdefault(y, []).append(batch[y][i].numpy())
                    for o in outputs:
                        kept.setdefault("p_" + o, []).append(preds[o][i].numpy())
            bar.advance(len(batch["index"]))
    per = {o: scores(cms[o]) if o in cms else None for o in (*OUTPUTS, *ALIGNED.values())}

    def pick(key: str) -> dict[str, Any]:
        return {o: (per[o] or {}).get(key) if per[o] else None for o in per}

    cfg = card.model
    result = {
        "kind": "store",
        "method": method
        or method_name(str(cfg.get("backbone")), stages, card.input, cfg, card.extra),
        "split": split,
        "n_patches": n,
        "classes": list(card.classes),
        "params_m": trained_parameters(model, stages) / 1e6,
        "fusion_params_m": count_parameters(model.fusion) / 1e6 if "fusion" in stages else None,
        "miou": pick("miou"),
        "iou": pick("iou"),
        "confusion": pick("confusion"),
        "pixels": pick("pixels"),
        "outputs": list(outputs),
        "stages": list(stages),
        "weights": weights,
        "weight_files": files,
        "weight_epochs": epochs,
        "backbone": cfg.get("backbone"),
        "fusion_type": cfg.get("fusion"),
        "branches": cfg.get("branches", "shared"),
        "input": card.input,
        "checkpoints": str(checkpoints),
        "store": str(store),
        "schema_version": SCHEMA_VERSION,
    }
    shown = Shown(names=names)
    for key, arrs in kept.items():
        if key.startswith("p_"):
            shown.preds[key[2:]] = np.stack(arrs)
        elif key.startswith("x"):
            shown.images[key] = np.stack(arrs)
        else:
            shown.labels[key] = np.stack(arrs)
    return result, shown
