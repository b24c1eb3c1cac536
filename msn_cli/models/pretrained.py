"""``train-meta --pretrained``: ImageNet-trained ResNet weights for a backbone's encoder.

A pretrained file is a state dict of a torchvision or timm ResNet (both name the layers
``conv1``, ``bn1``, ``layerS.I.convK``/``bnK``, ``layerS.I.downsample.0``/``.1`` and ``fc``),
as ``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``, optionally
wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` and with DDP's ``module.`` prefix.
Every key of the encoder must be there with its shape; ``fc.*`` (the ImageNet classifier) is
dropped on purpose, ``num_batches_tracked`` may be absent (old files); anything else missing
or left over is refused in one line. ``imagenet`` is torchvision's file in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``): msn never downloads; a missing file is one line naming
where to put it and where it comes from.

Example:
    >>> torchvision_name("layer2.0.conv1.1.running_var"), torchvision_name("stem.0.0.weight")
    ('layer2.0.bn1.running_var', 'conv1.weight')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from msn_cli.errors import MsnError, MsnUsageError
from msn_cli.io.card import PretrainedRecord
from msn_cli.models.registry import BACKBONES, backbone_spec, build_backbone
from msn_cli.models.resnet import RESNET_DEPTHS, ResNet

__all__ = [
    "IMAGENET",
    "TORCHVISION_FILES",
    "PretrainedWeights",
    "encoder_of",
    "imagenet_file",
    "load_pretrained",
    "pretrained_source",
    "read_state_dict",
    "torchvision_name",
]

IMAGENET = "imagenet"
#: torchvision's ImageNet weights per ResNet depth, preferred first (ResNet-50: V1, then V2).
TORCHVISION_FILES = {
    18: ("resnet18-f37072fd.pth",),
    50: ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
}
TORCHVISION_URL = "https://download.pytorch.org/models/"
#: Our encoder's names -> torchvision's (timm's are the same). Exact: a name that none of
#: these rules maps is a bug, never skipped.
_RULES = (
    (re.compile(r"stem\.0\.0\.weight"), "conv1.weight"),
    (re.compile(r"stem\.0\.1\.(\w+)"), r"bn1.\1"),
    (re.compile(r"(layer[1-4]\.\d+)\.conv([1-3])\.0\.weight"), r"\1.conv\2.weight"),
    (re.compile(r"(layer[1-4]\.\d+)\.conv([1-3])\.1\.(\w+)"), r"\1.bn\2.\3"),
    (re.compile(r"(layer[1-4]\.\d+\.downsample\.[01]\.\w+)"), r"\1"),
)
#: The ImageNet classifier: in every such file, never in an encoder.
DROPPED = ("fc.",)
OPTIONAL = "num_batches_tracked"
LAYOUT = "a torchvision or timm ResNet state dict (conv1, bn1, layer1.0.conv1, ..., fc)"


def torchvision_name(ours: str) -> str:
    """The torchvision (and timm) name of our encoder's parameter or buffer ``ours``."""
    for pattern, repl in _RULES:
        if pattern.fullmatch(ours):
            return pattern.sub(repl, ours)
    raise ValueError(f"no torchvision name for encoder key {ours!r}")


def encoder_of(backbone: nn.Module, name: str) -> ResNet | None:
    """The ResNet of backbone ``name`` that pretrained weights load into (None: it has none)."""
    path = backbone_spec(name).encoder
    return None if path is None else backbone.get_submodule(path)  # type: ignore[return-value]


def pretrained_source(
    text: str | None, backbone: str, width: float, in_channels: int = 3
) -> str | None:
    """The ``--pretrained`` value checked against the model: None, ``imagenet`` or an absolute
    path (nothing is read here)."""
    if text is None or not text.strip():
        return None
    spec = backbone_spec(backbone)
    if spec.encoder is None:
        with_resnet = ", ".join(n for n, s in BACKBONES.items() if s.encoder is not None)
        raise MsnUsageError(
            "--pretrained", f"{backbone} has no ResNet encoder to load into; use {with_resnet}"
        )
    if width != 1.0 or in_channels != 3:
        raise MsnUsageError(
            "--pretrained",
            f"ImageNet weights fit width 1.0 and 3 input channels, not width {width:g}"
            + (f" and {in_channels} channels" if in_channels != 3 else ""),
        )
    if text.strip().lower() == IMAGENET:
        return IMAGENET
    return str(Path(text).expanduser().absolute())


def imagenet_file(depth: int) -> Path:
    """torchvision's ImageNet file for a ResNet of ``depth`` in the torch hub cache."""
    import torch.hub

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    names = TORCHVISION_FILES.get(depth)
    if not names:
        raise MsnUsageError("--pretrained", f"no torchvision ImageNet file for ResNet-{depth}")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise MsnError(
        folder / names[0],
        f"no such file{also}, and msn never downloads: fetch {TORCHVISION_URL}{names[0]} and "
        "put it here ($TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch)",
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` or ``.safetensors`` file, unwrapped, without ``module.``."""
    if not path.is_file():
        raise MsnError(path, f"no such file (--pretrained: imagenet or {LAYOUT})")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(path, device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, safetensors header: all mean "not such a file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MsnError(path, f"not a loadable state dict (refused: {first})") from exc
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not raw:
        raise MsnError(path, f"expected {LAYOUT}, got {type(raw).__name__}")
    if all(isinstance(k, str) and k.startswith("module.") for k in raw):
        raw = {k[len("module.") :]: v for k, v in raw.items()}
    bad = next(
        (k for k, v in raw.items() if not (isinstance(k, str) and isinstance(v, Tensor))), None
    )
    if bad is not None:
        raise MsnError(path, f"expected {LAYOUT}; {str(bad)[:80]!r} is not a named tensor")
    return raw


@dataclass
class PretrainedWeights:
    """Checked encoder weights (our names) and what ``model.json`` records about them."""

    record: PretrainedRecord
    encoder: str
    state: dict[str, Tensor]

    def load_into(self, backbone: nn.Module) -> None:
        """Copy the weights into ``backbone``'s encoder (keys and shapes already checked)."""
        encoder = backbone.get_submodule(self.encoder)
        state = dict(self.state)
        for key, value in encoder.state_dict().items():
            state.setdefault(key, value)  # only num_batches_tracked can be absent
        encoder.load_state_dict(state, strict=True)


def load_pretrained(source: str, backbone: str, num_classes: int = 1) -> PretrainedWeights:
    """Read and check ``source`` (``imagenet`` or a path) against ``backbone``'s encoder at
    width 1.0, without building the model (the meta device holds only shapes)."""
    from msn_cli.io.checkpoints import weights_sha256

    with torch.device("meta"):
        ref = encoder_of(build_backbone(backbone, num_classes), backbone)
    if ref is None:
        raise MsnUsageError("--pretrained", f"{backbone} has no ResNet encoder")
    path = imagenet_file(ref.depth) if source == IMAGENET else Path(source)
    file_state = read_state_dict(path)
    ours = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    names = {torchvision_name(k): k for k in ours}
    kept = {k: v for k, v in file_state.items() if not k.startswith(DROPPED)}
    missing = [t for t, k in names.items() if t not in kept and not k.endswith(OPTIONAL)]
    unexpected = [k for k in kept if k not in names]
    what = f"{backbone}'s ResNet-{ref.depth}"
    if missing or unexpected:
        found = [(w, v) for w, v in (("missing", missing), ("unexpected", unexpected)) if v]
        parts = ", ".join(f"{len(v)} {w} key(s) ({_first(v)})" for w, v in found)
        guess = _depth_of(kept)
        like = f"; it looks like a ResNet-{guess}" if guess not in (None, ref.depth) else ""
        raise MsnError(path, f"does not fit {what}: {parts}{like}; expected {LAYOUT}")
    state = {}
    for theirs, key in names.items():
        if theirs not in kept:
            continue
        have = tuple(kept[theirs].shape)
        if have != ours[key]:
            shapes = f"{list(have)} in the file, {list(ours[key])} here"
            raise MsnError(path, f"does not fit {what}: {theirs} is {shapes}")
        state[key] = kept[theirs]
    record = PretrainedRecord(source, str(path.absolute()), weights_sha256(path))
    return PretrainedWeights(record, backbone_spec(backbone).encoder or "", state)


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _depth_of(state: dict[str, Tensor]) -> int | None:
    """The ResNet depth whose blocks per stage and block type ``state``'s keys show."""
    blocks = [
        len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5)
    ]
    kind = "bottleneck" if any(".conv3." in k for k in state) else "basic"
    for depth, (k, counts) in RESNET_DEPTHS.items():
        if k == kind and tuple(blocks) == counts:
            return depth
    return None
