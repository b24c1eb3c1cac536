"""The registered backbones, by name, and the one function that builds them.

Example:
    >>> net = build_backbone("unet", num_classes=4, width=0.125)
    >>> type(net).__name__, net.num_classes
    ('UNet', 4)
"""

from __future__ import annotations

from dataclasses import dataclass

from msn_cli.models.base import SegmentationBackbone
from msn_cli.models.bisenet import BiSeNet
from msn_cli.models.deeplab import DeepLabV3Plus
from msn_cli.models.pspnet import PSPNet
from msn_cli.models.unet import UNet

__all__ = ["BACKBONES", "BackboneSpec", "backbone_spec", "build_backbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its class, display name and the paper's size (4 classes).

    ``encoder`` is the path of its torchvision-layout ResNet, the module ``train-meta
    --pretrained`` loads ImageNet weights into (None: the backbone has none).
    """

    cls: type[SegmentationBackbone]
    display_name: str
    paper_params_m: float | None
    encoder: str | None = None

    @property
    def candidate_layers(self) -> tuple[str, ...]:
        return self.cls.candidate_layers

    @property
    def default_gap_layers(self) -> tuple[str, ...]:
        return tuple(getattr(self.cls, "default_gap_layers", ()))


BACKBONES: dict[str, BackboneSpec] = {
    "bisenet": BackboneSpec(BiSeNet, "BiSeNet", 12.8, encoder="context_path.resnet"),
    "unet": BackboneSpec(UNet, "UNet", 7.8),
    "pspnet": BackboneSpec(PSPNet, "PSPNet", 48.8, encoder="encoder"),
    "deeplabv3plus": BackboneSpec(DeepLabV3Plus, "DeepLab-V3+", 40.9, encoder="encoder"),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` registered as ``name`` (ValueError naming the choices)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}"
        ) from None


def build_backbone(
    name: str, num_classes: int, width: float = 1.0, in_channels: int = 3
) -> SegmentationBackbone:
    """Build the backbone registered as ``name``, He-initialised (no pretrained weights)."""
    return backbone_spec(name).cls(num_classes=num_classes, width=width, in_channels=in_channels)
