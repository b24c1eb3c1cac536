"""The resolved configuration of each training stage (what ``config.json`` records).

Example:
    >>> MetaConfig(store="s.zarr", checkpoints="ck").epochs, FusionConfig("s", "c").epochs
    (30, 10)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from msn_cli.errors import MsnUsageError
from msn_cli.io.store import SPLITS
from msn_cli.vocab import BRANCHES

METHODS = ("meta", "conv", "awmf")
#: Mem-RM crop geometries (models/msn.py ``CROPS``) and fusion starts (models/fusion.py
#: ``FUSION_INITS``), the default first; repeated here so that ``--help`` imports no torch.
CROPS = ("receptive-field", "centre")
FUSION_INITS = ("average", "he")
SIGMAS = ("fixed", "pseudo")  # models/fusion.py SIGMAS


@dataclass
class TrainConfig:
    """Options every stage shares; the paper's defaults (Adam, lr 1e-4, batch 32)."""

    store: str
    checkpoints: str
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    split: str = "sub-train"
    val_split: str | None = None
    device: str = "auto"
    amp: bool = False
    workers: int | None = None  # None: min(8, cores - 1) DataLoader workers; 0: main process
    seed: int = 0
    threads: int | None = None  # CPU intra-op threads; None: all cores (shared by ranks)
    augment: bool = True
    color_jitter: float = 0.0
    restart: bool = False

    def validate(self) -> None:
        if self.epochs < 1:
            raise MsnUsageError("--epochs", f"{self.epochs}: need at least 1")
        if self.batch_size < 1:
            raise MsnUsageError("--batch-size", f"{self.batch_size}: need at least 1")
        if not self.lr > 0:
            raise MsnUsageError("--lr", f"{self.lr}: must be > 0")
        if self.split not in SPLITS:
            raise MsnUsageError("--split", f"{self.split!r} is not one of {', '.join(SPLITS)}")
        if self.val_split is not None and self.val_split not in SPLITS:
            raise MsnUsageError(
                "--val-split", f"{self.val_split!r} is not none or one of {', '.join(SPLITS)}"
            )
        if self.val_split == "test":
            raise MsnUsageError(
                "--val-split",
                "test: validation picks best.pt, so it never sees the test split; "
                "use sub-train, train or none",
            )
        if not 0 <= self.color_jitter < 1:
            raise MsnUsageError("--color-jitter", f"{self.color_jitter}: need 0 <= j < 1")
        if self.workers is not None and self.workers < 0:
            raise MsnUsageError("--workers", "must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetaConfig(TrainConfig):
    """``msn train-meta``: Step 1, the meta-branch on X3 (or a baseline on X1/X2)."""

    epochs: int = 30
    split: str = "train"
    val_split: str | None = "sub-train"
    backbone: str = "bisenet"
    width: float = 1.0
    input: str = "x3"
    #: ``imagenet`` or a ResNet state dict's path: the encoder's starting weights (None: He)
    pretrained: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.input not in BRANCHES:
            raise MsnUsageError("--input", f"{self.input!r} is not one of x1, x2, x3")


@dataclass
class MemRMConfig(TrainConfig):
    """``msn train-memrm``: Step 2, gap layers and the X1/X2 Mem-RMs."""

    gap_layers: str = "default"
    top_k: int = 1
    #: Kept out of Mem-RM training for train-fusion: 0.5 by evidence (README, "The demo");
    #: 0 is the paper's protocol (Mem-RM and Meta-FM on the same patches).
    holdout: float = 0.5
    analysis_patches: int = 64
    cache_gb: float = 8.0
    #: where the crop samples X3's meta-features: each gap-layer pixel's receptive-field
    #: centre, or ``centre`` (msn 0.1.0: every pixel at its block's middle); into model.json
    crop: str = "receptive-field"

    def validate(self) -> None:
        super().validate()
        if self.crop not in CROPS:
            raise MsnUsageError("--crop", f"{self.crop!r} is not one of {', '.join(CROPS)}")
        if self.top_k < 1:
            raise MsnUsageError("--top-k", f"{self.top_k}: need at least 1")
        if not 0 <= self.holdout < 1:
            raise MsnUsageError("--holdout", f"{self.holdout}: need a fraction in [0, 1)")
        if self.analysis_patches < 1:
            raise MsnUsageError("--analysis-patches", "need at least 1")
        if self.cache_gb < 0:
            raise MsnUsageError("--cache-gb", "must be >= 0")


@dataclass
class FusionConfig(TrainConfig):
    """``msn train-fusion``: Step 3, Meta-FM (or the conv / AWMF fusion)."""

    method: str = "meta"
    holdout: bool | None = None  # None: the patches train-memrm held out, if it held any
    cache_gb: float = 8.0
    #: "X1DIR,X2DIR,X3DIR": fuse three independently trained experts instead of an MSN
    experts: str | None = None
    #: AWMF-CNN's end-to-end training: even epochs the fusion, odd epochs the experts
    alternate: bool = False
    #: how the fusion starts, the same for every method (models/fusion.py)
    fusion_init: str = "average"
    #: with ``experts``: fit on the patches this MSN directory's train-memrm held out, the
    #: fit set of that MSN's own fusion (Table 3 compares fusions fitted on the same patches)
    holdout_from: str | None = None
    #: Meta-FM's σ: ``fixed`` (σ* of the fit set) or ``pseudo`` (per patch, from argmax S1)
    sigma: str = "fixed"

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise MsnUsageError("--method", f"{self.method!r} is not one of meta, conv, awmf")
        if self.fusion_init not in FUSION_INITS:
            raise MsnUsageError(
                "--fusion-init", f"{self.fusion_init!r} is not one of {', '.join(FUSION_INITS)}"
            )
        if self.sigma not in SIGMAS:
            raise MsnUsageError("--sigma", f"{self.sigma!r} is not one of {', '.join(SIGMAS)}")
        if self.sigma != "fixed" and self.method != "meta":
            raise MsnUsageError("--sigma", f"is Meta-FM's; --method {self.method} has no σ")
        if self.holdout_from is not None:
            if self.experts is None:
                raise MsnUsageError(
                    "--holdout-from", "is for --experts; an MSN fits on its own held-out patches"
                )
            if self.alternate:
                raise MsnUsageError("--holdout-from", "--alternate trains on the whole split")
            if self.holdout is False:
                raise MsnUsageError("--holdout-from", "fits on held-out patches: drop --no-holdout")
        if self.cache_gb < 0:
            raise MsnUsageError("--cache-gb", "must be >= 0")
        if self.experts is not None and len(self.expert_dirs) != 3:
            raise MsnUsageError(
                "--experts", f"{self.experts!r}: give three directories, X1DIR,X2DIR,X3DIR"
            )
        if self.experts is not None and self.holdout and self.holdout_from is None:
            raise MsnUsageError(
                "--holdout",
                "held-out patches come from train-memrm, not --experts (see --holdout-from)",
            )
        if self.alternate and self.experts is None:
            raise MsnUsageError("--alternate", "trains independent experts: add --experts")
        if self.alternate and self.method == "meta":
            raise MsnUsageError(
                "--alternate", "Meta-FM's σ needs fixed branches; use --method awmf or conv"
            )

    @property
    def expert_dirs(self) -> list[str]:
        return [d.strip() for d in (self.experts or "").split(",") if d.strip()]
