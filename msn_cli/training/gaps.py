"""The gap-layer analysis of the paper's Fig. 1 (docs/architecture.md §4).

X1, X2 and X3 of the same patches run through the frozen meta-branch; for every candidate
layer we accumulate per-channel activation mean and variance per input scale. A layer's gap
for scale s is how far its statistics sit from X3's (the scale the meta-branch learnt on)::

    gap_s = mean_c |mu_s,c - mu_3,c| / sqrt(var_3,c + eps)
          + mean_c |log((var_s,c + eps) / (var_3,c + eps))|

(a standardised mean shift plus a log variance ratio: scale-free, comparable across layers).
``raw_score = gap_x1 + gap_x2`` is that literal reading of Fig. 1, and on the demo data it
ranks the stem first: the stem only inherits the *pixels'* gap (X3's 16x wider view holds
glass, fragment borders and class boundaries: X1's pixel variance is e^-1.8 of X3's; input
shift 0.59 / |log var ratio| 1.83, stem 0.49 / 1.63). A gap there is texture, not context,
and Mem-RM cannot bridge it: X3's stem features at X1's field of view are a blurred copy of
what X1 sees.

So the score weights each gap by the layer's *context dependence* ``context_s``: how much of
X3's meta-feature at branch s's field of view (the ``up(crop(A))`` of Eq. 1 that Mem-RM
recalls) comes from outside that field of view. X3 runs once more with everything outside
the centre window of side 1/ratio replaced by the window's mean colour
(:func:`window_only`); ``context_s`` is the mean over channels of the squared change of the
cropped features over X3's channel variance, 0 for a layer that sees only the window::

    score = sum_s gap_s * min(1, context_s)        (s = x1, x2)

``--gap-layers auto`` takes the ``top_k`` highest, ``nongap`` the ``top_k`` lowest (Table 4's
"on non-gap layers" ablation). ``gap_layers.json`` keeps ``gap_x1``, ``gap_x2``,
``context_x1``, ``context_x2``, ``raw_score`` and ``score`` of every layer.

Why the default stays a fixed layer (``--gap-layers default``, BiSeNet ``layer3``). On the
demo checkpoint (README's demo settings), as ``train-memrm`` writes them (64 of the 66
Mem-RM fit patches of sub-train, ``--holdout 0.5``), the rankings are

    raw_score: stem 3.85, arm16 3.44, arm32 3.43, layer3 3.20, layer2 3.00, ffm 2.97,
               spatial 2.80, layer4 2.74, layer1 2.64
    score:     arm32 3.43, ffm 2.97, arm16 2.70, layer4 2.60, layer3 1.64, layer2 1.07,
               layer1 0.76, spatial 0.61, stem 0.42

(context_x1: stem 0.15, layer3 0.52, layer4 1.08, ffm 1.43, arm32 2.47). The stem is now
last, but neither ranking predicts which layer helps. Test mIoU % with Mem-RM at one layer
(X1 / X2 / fusion; train-memrm --epochs 10 --lr 1e-3, train-fusion --epochs 10; seeds 0 and
1 of the Mem-RM and fusion training, one meta-branch; the meta-branch alone: 38.3 / 46.4):

    layer3  (default)          64.4 / 74.5 / 87.6    55.2 / 73.2 / 82.4
    arm32   (auto, score)      48.2 / 43.9 / 49.6    46.5 / 42.0 / 50.1
    arm16                      72.5 / 74.2 / 84.7    60.3 / 72.9 / 77.1
    ffm                        57.8 / 71.4 / 75.8
    layer4                     48.9 / 51.4 / 62.4
    stem    (auto, raw_score)  51.1 / 52.2 / 75.9    40.8 / 48.2 / 45.9

``layer3`` gives the best fusion on both seeds (arm16 the best X1, not the best fusion). arm32,
the layer with the most context (its tail is a global pool of the whole patch), does worst,
below the meta-branch alone on X2; probably Mem-RM fits that per-patch descriptor on 66
patches (train mIoU 0.83 / 0.80, layer3's 0.83 / 0.87) and does not generalise. Small
synthetic data, two seeds: evidence for this data, not a law.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from msn_cli.io.card import Normalization
from msn_cli.models.memory import crop_center
from msn_cli.runtime import to_input
from msn_cli.training.context import Context
from msn_cli.vocab import BRANCHES

EPS = 1e-6


@torch.no_grad()
def layer_statistics(
    meta_branch,
    loader,
    ctx: Context,
    normalize: Normalization,
    ratios: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Per-layer, per-scale activation statistics, context dependence and gap scores over
    ``loader``'s patches (inputs normalised with ``normalize``, the checkpoint's).

    ``ratios``: the side of X3's field of view over X1's and X2's (``MSNConfig.ratios``, 16
    and 4 by default); without them no layer has context (every score is 0, ``raw_score``
    still the Fig. 1 gap).
    """
    layers = tuple(meta_branch.candidate_layers)
    ratios = {s: float(ratios[s]) for s in ("x1", "x2")} if ratios else {}
    phases = _phases(meta_branch, layers)
    meta_branch.eval()
    sums: dict[tuple[str, str], torch.Tensor] = {}
    moved: dict[tuple[str, str], torch.Tensor] = {}
    patches = torch.zeros((), dtype=torch.float64)
    for batch in loader:
        patches += len(batch["x3"])
        for scale in BRANCHES:
            x = to_input(batch[scale], ctx.device, ctx.channels_last, normalize)
            with ctx.autocast():
                feats = meta_branch(x, features=layers).features
            for name, f in feats.items():
                _add(sums, (name, scale), _moments(f.double()))
            if scale != "x3":
                continue
            for s, ratio in ratios.items():
                with ctx.autocast():
                    alone = meta_branch(window_only(x, ratio), features=layers).features
                for name, f in feats.items():
                    a = crop_center(f.double(), ratio, phase=phases[name])
                    b = crop_center(alone[name].double(), ratio, phase=phases[name])
                    d = (a - b).pow(2).sum((0, 2, 3))
                    n = torch.full_like(d, a[:, 0].numel())
                    _add(moved, (name, s), torch.stack([d, n]))
    out: dict[str, Any] = {"patches": int(ctx.all_sum(patches).item()), "layers": {}}
    for name in layers:
        per: dict[str, Any] = {}
        mu, var = {}, {}
        for scale in BRANCHES:
            s, s2, n = ctx.all_sum(sums[(name, scale)]).cpu()
            mu[scale] = s / n
            var[scale] = (s2 / n - mu[scale] ** 2).clamp(min=0)
            per[scale] = {"mean": float(mu[scale].mean()), "variance": float(var[scale].mean())}
        score = 0.0
        for scale in ("x1", "x2"):
            shift = ((mu[scale] - mu["x3"]).abs() / (var["x3"] + EPS).sqrt()).mean()
            ratio = ((var[scale] + EPS) / (var["x3"] + EPS)).log().abs().mean()
            per[f"gap_{scale}"] = float(shift + ratio)
            context = 0.0
            if (name, scale) in moved:
                d, n = ctx.all_sum(moved[(name, scale)]).cpu()
                context = float(((d / n) / (var["x3"] + EPS)).mean())
            per[f"context_{scale}"] = context
            score += per[f"gap_{scale}"] * min(1.0, context)
        per["raw_score"] = per["gap_x1"] + per["gap_x2"]
        per["score"] = score
        out["layers"][name] = per
    return out


def window_only(x3: torch.Tensor, ratio: float) -> torch.Tensor:
    """``x3`` with everything outside the centre window of side ``1/ratio`` (a finer
    branch's field of view) replaced by the window's own mean colour: what the meta-branch
    would see of X3 without the context around that field of view.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> window_only(x, 2)[0, 0].tolist()
        [[7.5, 7.5, 7.5, 7.5], [7.5, 5.0, 6.0, 7.5], [7.5, 9.0, 10.0, 7.5], [7.5, 7.5, 7.5, 7.5]]
    """
    h, w = x3.shape[-2:]
    wh, ww = max(1, round(h / ratio)), max(1, round(w / ratio))
    top, left = (h - wh) // 2, (w - ww) // 2
    window = x3[..., top : top + wh, left : left + ww]
    out = window.mean((-2, -1), keepdim=True).expand_as(x3).clone()
    out[..., top : top + wh, left : left + ww] = window
    return out


def _phases(meta_branch, layers: Sequence[str]) -> dict[str, float]:
    """Each layer's grid phase, where its pixels sit (what Mem-RM's crop samples)."""
    grids = meta_branch.feature_grids()
    return {n: grids[n].phase for n in layers}


def _moments(f: torch.Tensor) -> torch.Tensor:
    """Per-channel sum, sum of squares and count of ``f`` (B, C, H, W)."""
    n = torch.full((f.shape[1],), f[:, 0].numel(), dtype=f.dtype, device=f.device)
    return torch.stack([f.sum((0, 2, 3)), f.pow(2).sum((0, 2, 3)), n])


def _add(acc: dict, key, part: torch.Tensor) -> None:
    acc[key] = part if key not in acc else acc[key] + part


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
