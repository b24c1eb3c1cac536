"""The model library: backbones, Mem-FP/Mem-RM, Meta-FM and the assembled MSN.

Submodules: ``layers`` (blocks, ``init_weights``), ``base`` (the backbone contract and the
``BackboneOutput``/``MSNOutput`` results), ``resnet``, ``bisenet``, ``unet``, ``pspnet``,
``deeplab``, ``registry`` (``build_backbone``), ``memory`` (crop geometry, Mem-RM), ``fusion``
(Meta-FM, "w/o Meta", AWMF-CNN's fusion), ``awmf`` (the whole AWMF-CNN baseline),
``msn`` (``MSNConfig``, ``MSN``) and ``summary`` (parameter table). The common names are
re-exported lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKBONES": "registry",
    "build_backbone": "registry",
    "BackboneOutput": "base",
    "OutputGradient": "base",
    "SegmentationBackbone": "base",
    "init_weights": "layers",
    "crop_center": "memory",
    "MemoryRecall": "memory",
    "MetaFusion": "fusion",
    "ConvFusion": "fusion",
    "AWMFFusion": "fusion",
    "AWMFCNN": "awmf",
    "MSN": "msn",
    "MSNConfig": "msn",
    "MSNOutput": "base",
    "parameter_table": "summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
