"""What a trained checkpoint can predict, and one function that runs it on a batch.

Outputs depend on the finished stages (and on ``model.json``'s ``input``):

* meta only: the meta-branch applied directly to X1, X2 and X3 (the paper's Table 3
  "Meta-branch" row);
* meta + memrm: X1 and X2 through their Mem-RMs (fed by X3's meta-features), X3 plain;
* + fusion: also the fused map S, in X1's frame;
* a single-resolution baseline (``train-meta --input x1``): only that input's output;
* independent experts (``experts``): each input through its own expert, + fusion.

``train-*`` validation, ``evaluate`` and ``predict`` all call :func:`run_branches`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from msn_cli.vocab import OUTPUTS


def available_outputs(stages: Sequence[str], model_input: str = "x3") -> tuple[str, ...]:
    """The outputs a checkpoint with ``stages`` finished can produce.

    Example:
        >>> available_outputs(("meta",)), available_outputs(("meta", "memrm", "fusion"))
        (('x1', 'x2', 'x3'), ('x1', 'x2', 'x3', 'fusion'))
        >>> available_outputs(("meta",), "x1"), available_outputs(("experts",))
        (('x1',), ('x1', 'x2', 'x3'))
    """
    if "experts" in stages:
        return OUTPUTS if "fusion" in stages else OUTPUTS[:3]
    if "meta" not in stages:
        return ()
    if model_input != "x3":
        return (model_input,)
    return OUTPUTS if "fusion" in stages else OUTPUTS[:3]


@torch.no_grad()
def run_branches(
    model,
    stages: Sequence[str],
    card,
    x1: Tensor,
    x2: Tensor,
    x3: Tensor,
    outputs: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Logits of each requested output: branches in their own frames, ``fusion`` in X1's.

    ``x1 x2 x3`` are normalised float inputs on the model's device (``runtime.to_input``);
    ``card`` is the checkpoint's ModelCard. ``outputs`` defaults to everything available.
    """
    have = available_outputs(stages, card.input)
    want = tuple(have if outputs is None else outputs)
    missing = [o for o in want if o not in have]
    if missing:
        raise ValueError(f"outputs {missing} need stages not finished (have {list(stages)})")
    inputs = {"x1": x1, "x2": x2, "x3": x3}
    if "experts" not in stages and (card.input != "x3" or "memrm" not in stages):
        return {o: model.meta_branch(inputs[o]).logits for o in want}
    out: dict[str, Tensor] = {}
    memory = {}
    if "x3" in want or "fusion" in want or not model.independent:
        meta = model.meta_features(x3)
        out["x3"], memory = meta.logits, meta.features
    branches = {}
    for which, x in (("x1", x1), ("x2", x2)):
        if which in want or "fusion" in want:
            branches[which] = model.branch(x, which, memory)
            out[which] = branches[which].logits
    if "fusion" in want:
        images = (x1, x2, x3)
        out["fusion"] = model.fuse_outputs(branches["x1"], branches["x2"], out["x3"], images)
    return {o: out[o] for o in want}
