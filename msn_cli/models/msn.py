"""The assembled Meta Segmentation Network: composition only.

One shared meta-branch (a registered backbone) segments X3 and, at the gap layers, its
features are the memory (Mem-FP). X1 and X2 run through the *same* meta-branch, with one
Mem-RM per branch per gap layer injected through the backbone's ``recall`` hook. S1 and
S2' = up(crop(S2)) are fused (Meta-FM, "w/o Meta" or AWMF). See docs/architecture.md §4.

Example:
    >>> import torch
    >>> cfg = MSNConfig(backbone="bisenet", width=0.125, num_classes=4, patch_size=64)
    >>> net = MSN(cfg).eval()
    >>> x = torch.zeros(1, 3, 64, 64)
    >>> out = net(x, x, x, sigma=torch.zeros(net.sigma_dim))
    >>> tuple(out.s.shape)
    (1, 4, 64, 64)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from msn_cli.models.base import BackboneOutput, MSNOutput, OutputGradient
from msn_cli.models.fusion import SIGMAS, AWMFFusion, ConvFusion, MetaFusion, sigma_from_gradients
from msn_cli.models.memory import MemoryRecall, crop_center, magnification_ratio
from msn_cli.models.registry import backbone_spec, build_backbone
from msn_cli.vocab import BRANCHES, IGNORE

__all__ = ["ARCH_KEYS", "BRANCH_KINDS", "CROPS", "FUSIONS", "MSN", "MSNConfig"]

FUSIONS = ("meta", "conv", "awmf")
#: ``shared``: MSN (one meta-branch, Mem-RMs); ``independent``: three separately trained
#: experts of the same backbone (the paper's "Multi-branch" and AWMF-CNN systems).
BRANCH_KINDS = ("shared", "independent")
#: Mem-RM's crop geometry (models/memory.py): ``receptive-field`` samples A where each pixel
#: of B sits (the gap layer's traced grid); ``centre`` assumes every feature pixel sits in the
#: middle of its block, as msn 0.1.0 did (a ``model.json`` without ``crop``).
CROPS = ("receptive-field", "centre")
#: The MSNConfig keys that fix a backbone's weights' shapes (what train-meta writes).
ARCH_KEYS = ("backbone", "width", "num_classes", "patch_size", "magnifications", "in_channels")


@dataclass(frozen=True)
class MSNConfig:
    """The architecture of an MSN, as stored in a checkpoint's ``model.json``.

    ``gap_layers=None`` means the backbone's default gap layers. ``branches="independent"``
    gives each input its own backbone (no gap layers, no Mem-RM); ``tune_experts`` records
    that ``train-fusion --alternate`` trained those experts with the fusion. ``crop`` is the
    Mem-RM crop geometry the Mem-RMs were trained with (:data:`CROPS`); :meth:`from_dict`
    reads a card without it as ``centre``.

    Example:
        >>> cfg = MSNConfig(backbone="unet", num_classes=2, magnifications=(4, 2, 1))
        >>> MSNConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    backbone: str = "bisenet"
    width: float = 1.0
    num_classes: int = 4
    patch_size: int = 256
    magnifications: tuple[float, float, float] = (16, 4, 1)
    gap_layers: tuple[str, ...] | None = None
    fusion: str = "meta"
    meta_hidden: int = 9
    in_channels: int = 3
    branches: str = "shared"
    tune_experts: bool = False
    crop: str = "receptive-field"
    sigma: str = "fixed"

    def __post_init__(self) -> None:
        spec = backbone_spec(self.backbone)
        object.__setattr__(self, "magnifications", tuple(float(m) for m in self.magnifications))
        if len(self.magnifications) != 3:
            raise ValueError(f"need three magnifications (X1, X2, X3), got {self.magnifications}")
        m1, m2, m3 = self.magnifications
        if not m1 >= m2 >= m3 > 0:
            raise ValueError(f"magnifications must satisfy X1 >= X2 >= X3 > 0, got {m1, m2, m3}")
        if self.num_classes < 1 or not self.width > 0 or self.meta_hidden < 1:
            raise ValueError("num_classes and meta_hidden must be >= 1 and width > 0")
        if self.patch_size < 1 or self.patch_size % spec.cls.size_multiple:
            raise ValueError(
                f"patch_size must be a multiple of {spec.cls.size_multiple} for "
                f"{self.backbone}, got {self.patch_size}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.branches not in BRANCH_KINDS:
            raise ValueError(f"branches must be one of {BRANCH_KINDS}, got {self.branches!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.sigma not in SIGMAS:
            raise ValueError(f"sigma must be one of {SIGMAS}, got {self.sigma!r}")
        if self.sigma != "fixed" and self.fusion != "meta":
            raise ValueError(f"sigma {self.sigma!r} is Meta-FM's; fusion is {self.fusion!r}")
        if self.branches == "independent":
            if self.gap_layers:
                raise ValueError("independent branches have no gap layers (no Mem-RM)")
            object.__setattr__(self, "gap_layers", ())
            return
        if self.tune_experts:
            raise ValueError("tune_experts needs independent branches")
        gaps = spec.default_gap_layers if self.gap_layers is None else tuple(self.gap_layers)
        unknown = [g for g in gaps if g not in spec.candidate_layers]
        if unknown or len(set(gaps)) != len(gaps):
            choices = list(spec.candidate_layers)
            raise ValueError(f"gap layers {list(gaps)} must be distinct names among {choices}")
        object.__setattr__(self, "gap_layers", gaps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        d = asdict(self)
        d["magnifications"] = list(self.magnifications)
        d["gap_layers"] = list(self.gap_layers or ())
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MSNConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError; no ``crop``: a card of
        msn 0.1.0, whose Mem-RMs were trained with the ``centre`` crop."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model.json key(s): {unknown}")
        d = {"crop": "centre", **data}
        for key in ("magnifications", "gap_layers"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def ratios(self) -> dict[str, float]:
        """Field-of-view side ratios: X1 in X3, X2 in X3, X1 in X2 (16, 4, 4 by default)."""
        m1, m2, m3 = self.magnifications
        return {
            "x1": magnification_ratio(m1, m3),
            "x2": magnification_ratio(m2, m3),
            "x1_in_x2": magnification_ratio(m1, m2),
        }


class MSN(nn.Module):
    """Meta Segmentation Network: meta-branch, Mem-RMs, fusion (see module docstring).

    With ``branches="independent"`` the same interface runs three separate experts:
    ``meta_branch`` is the X3 expert and ``experts`` holds X1's and X2's. ``fusion_init``
    (:data:`~msn_cli.models.fusion.FUSION_INITS`) is how a fresh fusion starts, whichever it
    is (``train-fusion --fusion-init``); loaded weights replace it.
    """

    def __init__(self, config: MSNConfig, fusion_init: str = "average") -> None:
        super().__init__()
        self.config = config
        make = partial(
            build_backbone, config.backbone, config.num_classes, config.width, config.in_channels
        )
        self.meta_branch = make()
        independent = config.branches == "independent"
        self.experts = nn.ModuleDict({b: make() for b in ("x1", "x2")} if independent else {})
        ratios, phases = config.ratios, self.crop_phases()
        self.memory_recall = nn.ModuleDict(
            {
                b: nn.ModuleDict(
                    {
                        g: MemoryRecall(self.meta_branch.layer_channels[g], ratios[b], phases[g])
                        for g in self.gap_layers
                    }
                )
                for b in ("x1", "x2")
            }
        )
        nc = config.num_classes
        self.sigma_dim = 2 * self.meta_branch.output_size
        if config.fusion == "meta":
            self.fusion: nn.Module = MetaFusion(
                nc,
                self.sigma_dim,
                hidden=config.meta_hidden,
                init=fusion_init,
                magnitude=config.sigma == "pseudo",
            )
        elif config.fusion == "conv":
            self.fusion = ConvFusion(nc, init=fusion_init)
        else:
            self.fusion = AWMFFusion(nc, config.in_channels, config.width, init=fusion_init)

    def crop_phases(self) -> dict[str, float]:
        """Mem-RM's crop phase of each gap layer: its grid's (``crop="receptive-field"``,
        traced once from the backbone: :meth:`feature_grids`) or 0.5 (``"centre"``)."""
        if self.config.crop == "centre" or not self.gap_layers:
            return {g: 0.5 for g in self.gap_layers}
        grids = self.meta_branch.feature_grids()
        return {g: grids[g].phase for g in self.gap_layers}

    @property
    def gap_layers(self) -> tuple[str, ...]:
        return tuple(self.config.gap_layers or ())

    @property
    def independent(self) -> bool:
        return self.config.branches == "independent"

    def branch_net(self, which: str) -> nn.Module:
        """The backbone that computes branch ``which`` (the meta-branch unless independent)."""
        if which not in BRANCHES:
            raise ValueError(f"which must be one of {BRANCHES}, got {which!r}")
        return self.experts[which] if which in self.experts else self.meta_branch  # noqa: SIM401

    def expert_modules(self) -> nn.ModuleDict:
        """X1, X2, X3 experts of an independent model, by input (shared modules, not copies)."""
        if not self.independent:
            raise ValueError("only independent branches have experts")
        return nn.ModuleDict({b: self.branch_net(b) for b in BRANCHES})

    def stage_part(self, stage: str) -> nn.Module:
        """The module whose weights a checkpoint stage holds (see io/checkpoints.py)."""
        if stage == "meta":
            return self.meta_branch
        if stage == "memrm":
            return self.memory_recall
        if stage == "experts":
            return self.expert_modules()
        if stage == "fusion":
            if self.config.tune_experts:
                return nn.ModuleDict({"fusion": self.fusion, **self.expert_modules()})
            return self.fusion
        raise ValueError(f"unknown stage {stage!r}")

    # -- parts, for the three training steps ---------------------------------------------
    def meta_parameters(self) -> list[nn.Parameter]:
        """Step 1: the shared meta-branch."""
        return list(self.meta_branch.parameters())

    def memory_parameters(self, branch: str | None = None) -> list[nn.Parameter]:
        """Step 2: the Mem-RMs (of one branch, or both)."""
        parts = self.memory_recall.values() if branch is None else [self._memrm(branch)]
        return [p for part in parts for p in part.parameters()]

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Step 3: the fusion (Meta-FM's FC layers, or the ablation's convolutions)."""
        return list(self.fusion.parameters())

    # -- forward pieces -------------------------------------------------------------------
    def meta_features(self, x3: Tensor) -> BackboneOutput:
        """Mem-FP: run X3 through the meta-branch, keep the gap-layer meta-features."""
        return self.meta_branch(x3, features=self.gap_layers)

    def branch(
        self,
        x: Tensor,
        which: str = "x3",
        memory: Mapping[str, Tensor] | None = None,
        features: Sequence[str] = (),
        mirrored: Tensor | None = None,
    ) -> BackboneOutput:
        """Run one branch: ``x3`` plain; ``x1``/``x2`` with their Mem-RMs fed by ``memory``
        (or, independent, through their own experts). ``mirrored`` (B, 2): the x, y axes of
        ``memory`` mirrored since it was computed (flipped cached meta-features)."""
        if which == "x3" or self.independent:
            return self.branch_net(which)(x, features=features)
        rms = self._memrm(which)
        memory = {} if memory is None else memory
        missing = [g for g in self.gap_layers if g not in memory]
        if missing:
            raise ValueError(f"branch {which} needs the X3 meta-features of {missing}")
        recall = {g: partial(rms[g], a=memory[g], mirrored=mirrored) for g in self.gap_layers}
        return self.meta_branch(x, features=features, recall=recall)

    def align(self, s: Tensor, which: str, size: Sequence[int]) -> Tensor:
        """A branch's map in X1's frame: up(crop(s)) (``which`` is ``x2`` or ``x3``)."""
        ratio = {"x2": self.config.ratios["x1_in_x2"], "x3": self.config.ratios["x1"]}
        if which not in ratio:
            raise ValueError(f"which must be 'x2' or 'x3', got {which!r}")
        return crop_center(s, ratio[which], size)

    def output_gradients(
        self, out1: BackboneOutput, out2: BackboneOutput, y1: Tensor
    ) -> tuple[OutputGradient, OutputGradient]:
        """Per-sample -dL/dWo through the X1 branch (vs Y1) and the X2 branch (S2' vs Y1)."""
        if out1.penultimate is None or out2.penultimate is None:
            raise ValueError("branch outputs carry no penultimate tensor")
        size = out1.logits.shape[-2:]
        g1 = self.branch_net("x1").output_gradient(
            out1.penultimate, y1, size=size, ignore_index=IGNORE
        )
        g2 = self.branch_net("x2").output_gradient(
            out2.penultimate,
            y1,
            size=out2.logits.shape[-2:],
            transform=partial(self.align, which="x2", size=size),
            ignore_index=IGNORE,
        )
        return g1, g2

    @torch.no_grad()
    def support_gradients(
        self, x1: Tensor, x2: Tensor, x3: Tensor, y1: Tensor
    ) -> tuple[OutputGradient, OutputGradient]:
        """Run a support batch (no graph through the branches) and return its σ parts."""
        mem = self.meta_features(x3).features
        return self.output_gradients(self.branch(x1, "x1", mem), self.branch(x2, "x2", mem), y1)

    def store_sigma(self, sigma: Tensor) -> None:
        """Store the kernels generated from σ* for label-free inference (Meta-FM only)."""
        if not isinstance(self.fusion, MetaFusion):
            raise ValueError(f"fusion {self.config.fusion!r} has no σ to store")
        self.fusion.store(sigma)

    def fuse(
        self,
        s1: Tensor,
        s2: Tensor,
        s3: Tensor,
        images: Sequence[Tensor] | None = None,
        sigma: Tensor | None = None,
    ) -> Tensor:
        """Fused logits S in X1's frame from the branch logits in their own frames."""
        size = s1.shape[-2:]
        s2a, s3a = self.align(s2, "x2", size), self.align(s3, "x3", size)
        return self.fusion(s1, s2a, s3a, images=images, sigma=sigma)

    @property
    def pseudo(self) -> bool:
        """Meta-FM with σ ``pseudo``: each patch's own σ from its pseudo-labels."""
        return self.config.fusion == "meta" and self.config.sigma == "pseudo"

    def pseudo_gradients(
        self, out1: BackboneOutput, out2: BackboneOutput
    ) -> tuple[OutputGradient, OutputGradient]:
        """:meth:`output_gradients` with argmax(S1) as the label of every pixel: no label."""
        return self.output_gradients(out1, out2, out1.logits.detach().argmax(1))

    def pseudo_sigma(self, out1: BackboneOutput, out2: BackboneOutput) -> Tensor:
        """Per-patch σ (B, D) from pseudo-labels (σ ``pseudo``, module docstring of
        :mod:`msn_cli.models.fusion`): the same at training and at predict time."""
        return sigma_from_gradients(*self.pseudo_gradients(out1, out2), per_sample=True)

    def fuse_outputs(
        self,
        out1: BackboneOutput,
        out2: BackboneOutput,
        s3: Tensor,
        images: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Fused logits from the X1 and X2 branch outputs (their penultimate tensors give σ
        ``pseudo``) and X3's logits; σ ``fixed``: the stored σ* kernels."""
        sigma = self.pseudo_sigma(out1, out2) if self.pseudo else None
        return self.fuse(out1.logits, out2.logits, s3, images=images, sigma=sigma)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor, sigma: Tensor | None = None) -> MSNOutput:
        """All branches and the fusion. Meta-FM uses ``sigma`` (from a *support* batch,
        never the labels of this batch) or, when None, the stored σ* kernels (σ ``fixed``)
        or each patch's pseudo-label σ (σ ``pseudo``)."""
        out3 = self.meta_features(x3)
        out1 = self.branch(x1, "x1", out3.features)
        out2 = self.branch(x2, "x2", out3.features)
        if sigma is None:
            s = self.fuse_outputs(out1, out2, out3.logits, images=(x1, x2, x3))
        else:
            s = self.fuse(out1.logits, out2.logits, out3.logits, images=(x1, x2, x3), sigma=sigma)
        return MSNOutput(out1.logits, out2.logits, out3.logits, s)

    def _memrm(self, which: str) -> nn.ModuleDict:
        if which not in ("x1", "x2"):
            raise ValueError(f"Mem-RMs exist for branches 'x1' and 'x2', not {which!r}")
        return self.memory_recall[which]  # type: ignore[return-value]
