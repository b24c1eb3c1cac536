"""The gap-layer analysis of the paper's Fig. 1 (docs/architecture.md §4).

X1, X2 and X3 of the same patches run through the frozen meta-branch; for every candidate
layer we accumulate per-channel activation mean and variance per input scale. A layer's gap
for scale s is how far its statistics sit from X3's (the scale the meta-branch learnt on)::

    gap_s = mean_c |mu_s,c - mu_3,c| / sqrt(var_3,c + eps)
          + mean_c |log((var_s,c + eps) / (var_3,c + eps))|

(a standardised mean shift plus a log variance ratio: scale-free, comparable across layers).
A layer's score is gap_x1 + gap_x2; ``--gap-layers auto`` takes the ``top_k`` highest,
``--gap-layers nongap`` the ``top_k`` lowest (Table 4's "on non-gap layers" ablation).
The default, ``--gap-layers default``, is the backbone's deep layer(s) (BiSeNet ``layer3``):
on the demo data ``auto`` chose the stem, where X3's features carry no context, and MSN's
X1 scored 37 % test mIoU against 84 % with ``layer3`` (README, "The demo").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from msn_cli.io.card import Normalization
from msn_cli.runtime import to_input
from msn_cli.training.context import Context
from msn_cli.vocab import BRANCHES

EPS = 1e-6


@torch.no_grad()
def layer_statistics(meta_branch, loader, ctx: Context, normalize: Normalization) -> dict[str, Any]:
    """Per-layer, per-scale activation statistics and gap scores over ``loader``'s patches
    (inputs normalised with ``normalize``, the checkpoint's)."""
    layers = tuple(meta_branch.candidate_layers)
    meta_branch.eval()
    sums: dict[tuple[str, str], torch.Tensor] = {}
    patches = torch.zeros((), dtype=torch.float64)
    for batch in loader:
        patches += len(batch["x3"])
        for scale in BRANCHES:
            x = to_input(batch[scale], ctx.device, ctx.channels_last, normalize)
            with ctx.autocast():
                feats = meta_branch(x, features=layers).features
            for name, f in feats.items():
                f = f.double()
                part = torch.stack(
                    [
                        f.sum((0, 2, 3)),
                        f.pow(2).sum((0, 2, 3)),
                        torch.full((f.shape[1],), f[:, 0].numel(), dtype=torch.float64),
                    ]
                )
                key = (name, scale)
                sums[key] = part if key not in sums else sums[key] + part
    out: dict[str, Any] = {"patches": int(ctx.all_sum(patches).item()), "layers": {}}
    for name in layers:
        per: dict[str, Any] = {}
        mu, var = {}, {}
        for scale in BRANCHES:
            s, s2, n = ctx.all_sum(sums[(name, scale)]).cpu()
            mu[scale] = s / n
            var[scale] = (s2 / n - mu[scale] ** 2).clamp(min=0)
            per[scale] = {"mean": float(mu[scale].mean()), "variance": float(var[scale].mean())}
        for scale in ("x1", "x2"):
            shift = ((mu[scale] - mu["x3"]).abs() / (var["x3"] + EPS).sqrt()).mean()
            ratio = ((var[scale] + EPS) / (var["x3"] + EPS)).log().abs().mean()
            per[f"gap_{scale}"] = float(shift + ratio)
        per["score"] = per["gap_x1"] + per["gap_x2"]
        out["layers"][name] = per
    return out


def choose_layers(stats: dict[str, Any], top_k: int, lowest: bool = False) -> tuple[str, ...]:
    """The ``top_k`` layers with the highest (``lowest``: lowest) gap score, in network order."""
    layers = list(stats["layers"])
    sign = 1 if lowest else -1
    ranked = sorted(layers, key=lambda n: sign * stats["layers"][n]["score"])[:top_k]
    return tuple(n for n in layers if n in ranked)


def parse_gap_layers(
    text: str, candidates: Sequence[str], default: Sequence[str] = ()
) -> tuple[str, ...] | None:
    """``auto``/``nongap`` -> None (choose by the analysis); ``default`` -> the backbone's
    default gap layers; else the comma-separated names, checked against ``candidates``."""
    from msn_cli.errors import MsnUsageError

    key = text.strip().lower()
    if key in ("auto", "nongap"):
        return None
    if key == "default":
        return tuple(default)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in candidates]
    if not names or bad or len(set(names)) != len(names):
        raise MsnUsageError(
            "--gap-layers",
            f"{text!r}: give default, auto, nongap or distinct names among {', '.join(candidates)}",
        )
    return names
