"""Parameter counts of every model and fusion part, next to the paper's "# Parm (M)".

Models are built on PyTorch's ``meta`` device: no memory is allocated and nothing is
initialised for real, so the whole table takes about a second.

Where our count differs from the paper (the paper does not give the layer sizes):

* Meta-FM: the paper gives 0.01 M (4 classes) and 0.006 M (2 classes) without the hidden size
  of FC-ReLU-FC. σ (2|Wo| = 2(128·Nc + Nc) for BiSeNet) and the generated kernels (2Nc→Nc and
  Nc→Nc, 3x3, with biases) both grow with Nc, so no single hidden width gives 10 k and 6 k
  exactly; a hidden width of 9 reproduces both at the paper's printed precision
  (13.7 k -> "0.01", 5.8 k -> "0.006").
* AWMF-CNN: the MSN paper re-implemented it without publishing layer sizes; ours (see
  :mod:`msn_cli.models.awmf`) lands at 36.9 M for the fusion part (paper 37.9 M).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from msn_cli.models.awmf import AWMFCNN
from msn_cli.models.fusion import AWMFFusion, ConvFusion
from msn_cli.models.layers import count_parameters
from msn_cli.models.msn import MSN, MSNConfig
from msn_cli.models.registry import BACKBONES, build_backbone

__all__ = ["PAPER_PARAMS_M", "parameter_table"]

#: the paper's sizes in millions, by row name and number of classes (Tables 1, 2 and 5:
#: BACH has 4 classes, ISIC 2; Table 2 prints the 4-class sizes for ISIC too).
PAPER_PARAMS_M: dict[str, dict[int, float]] = {
    "BiSeNet": {4: 12.8, 2: 12.8},
    "UNet": {4: 7.8},
    "PSPNet": {4: 48.8},
    "DeepLab-V3+": {4: 40.9, 2: 40.9},
    "MSN † (BiSeNet)": {4: 15.6, 2: 15.6},
    "MSN ‡ (UNet)": {4: 9.2},
    "AWMF-CNN † (BiSeNet)": {4: 76.3, 2: 76.3},
    "AWMF-CNN ‡ (UNet)": {4: 61.2},
    "fusion: Meta-FM": {4: 0.01, 2: 0.006},
    "fusion: w/o Meta": {4: 0.0004, 2: 0.0001},
    "fusion: AWMF-CNN": {4: 37.9, 2: 37.9},
}


def _builders(num_classes: int, width: float) -> list[tuple[str, str, Callable[[], nn.Module]]]:
    nc = num_classes
    rows: list[tuple[str, str, Callable[[], nn.Module]]] = []
    for name, spec in BACKBONES.items():
        rows.append((spec.display_name, "backbone", lambda n=name: build_backbone(n, nc, width)))
    for mark, bb, label in (("†", "bisenet", "BiSeNet"), ("‡", "unet", "UNet")):
        cfg = MSNConfig(backbone=bb, num_classes=nc, width=width)
        rows.append((f"MSN {mark} ({label})", "msn", lambda c=cfg: MSN(c)))
    for mark, bb, label in (("†", "bisenet", "BiSeNet"), ("‡", "unet", "UNet")):
        rows.append(
            (f"AWMF-CNN {mark} ({label})", "awmf", lambda b=bb: AWMFCNN(b, nc, width=width))
        )
    msn_meta = MSNConfig(backbone="bisenet", num_classes=nc, width=width)
    rows += [
        ("fusion: Meta-FM", "fusion", lambda: MSN(msn_meta).fusion),
        ("fusion: w/o Meta", "fusion", lambda: ConvFusion(nc)),
        ("fusion: AWMF-CNN", "fusion", lambda: AWMFFusion(nc, width=width)),
        ("Mem-RMs (BiSeNet †)", "part", lambda: MSN(msn_meta).memory_recall),
        (
            "Mem-RMs (UNet ‡)",
            "part",
            lambda: MSN(MSNConfig(backbone="unet", num_classes=nc, width=width)).memory_recall,
        ),
    ]
    return rows


def parameter_table(num_classes: int, width: float = 1.0) -> list[dict]:
    """Rows ``{"name", "kind", "params", "params_m", "paper_m"}`` (``paper_m`` None if unknown).

    ``kind`` is ``backbone``, ``msn``, ``awmf``, ``fusion`` or ``part``; MSN rows use the
    backbone's default gap layers and Meta-FM; fusion rows are those of MSN † (Table 5).
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    table = []
    with torch.device("meta"):
        for name, kind, build in _builders(int(num_classes), width):
            n = count_parameters(build())
            paper = PAPER_PARAMS_M.get(name, {}).get(int(num_classes)) if width == 1.0 else None
            table.append(
                {"name": name, "kind": kind, "params": n, "params_m": n / 1e6, "paper_m": paper}
            )
    return table
