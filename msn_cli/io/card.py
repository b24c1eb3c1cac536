"""``model.json``: the model card, and its schema with bounds (no torch).

A card is read by every later stage and by ``predict``; a hand-edited or foreign one must
fail in one line naming the key, never as a TypeError deep in model building, a huge
allocation (``"patch_size": 1e9``) or one-letter classes (``"classes": "nbsi"``).

``normalize`` (``{"mean": [r, g, b], "std": [r, g, b]}``) is how every stage and ``predict``
normalise the images; a card without it (msn before pretrained encoders) means
:data:`DEFAULT_NORMALIZE`. ``pretrained`` records the encoder weights ``train-meta
--pretrained`` started from (``{"source", "file", "sha256"}``) or is null. ``model.crop``
is the crop geometry the Mem-RMs were trained with (``receptive-field``, or ``centre``: msn
0.1.0, and every card without the key), so a Mem-RM is never run with another;
``model.sigma`` is Meta-FM's σ at test time (``fixed``, the default and every card without
the key, or ``pseudo``).

Example:
    >>> parse_card({"schema_version": 1, "classes": "nbsi",
    ...             "model": {"backbone": "unet", "num_classes": 4, "patch_size": 64,
    ...                       "magnifications": [4, 2, 1]}})
    Traceback (most recent call last):
    ...
    ValueError: classes: expected a list of class names, got a string
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from msn_cli.io.store import MAX_PATCH_SIZE, StoreSpec
from msn_cli.vocab import BRANCHES, IGNORE

SCHEMA_VERSION = 1
#: Most classes a label image can hold (uint8; the value 255 is the ignore label).
MAX_CLASSES = IGNORE
#: Bounds of a recorded normalisation (pixels are in [0, 1] before it).
MEAN_RANGE = (0.0, 1.0)
STD_RANGE = (1e-3, 10.0)


@dataclass(frozen=True)
class Normalization:
    """Pixel normalisation of every model input: uint8 RGB -> (x/255 - mean) / std.

    Example:
        >>> DEFAULT_NORMALIZE.mean, IMAGENET_NORMALIZE.std
        ((0.5, 0.5, 0.5), (0.229, 0.224, 0.225))
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __str__(self) -> str:
        return f"mean {list(self.mean)}, std {list(self.std)}"


#: msn's own normalisation (and that of every model.json without a ``normalize`` key).
DEFAULT_NORMALIZE = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
#: What ImageNet-pretrained weights (torchvision, timm) expect.
IMAGENET_NORMALIZE = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class PretrainedRecord:
    """Where a meta-branch's initial encoder weights came from (``train-meta --pretrained``).

    ``source`` is ``imagenet`` or the absolute path given; ``file`` the file read;
    ``sha256`` its digest.
    """

    source: str
    file: str
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """What ``model.json`` holds.

    ``model`` is ``MSNConfig.to_dict()``; ``input`` the branch the meta stage was trained on
    (``x3`` for MSN; ``x1``/``x2`` for the paper's single-resolution baselines);
    ``normalize`` how every stage normalises the images; ``pretrained`` the encoder weights
    the meta-branch started from (None: He initialisation).
    """

    model: dict[str, Any]
    classes: list[str]
    input: str = "x3"
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    normalize: Normalization = DEFAULT_NORMALIZE
    pretrained: PretrainedRecord | None = None

    @property
    def patch_size(self) -> int:
        return int(self.model["patch_size"])

    @property
    def magnifications(self) -> tuple[float, ...]:
        return tuple(float(m) for m in self.model["magnifications"])

    def store_spec(self) -> StoreSpec:
        return StoreSpec(self.patch_size, self.magnifications, tuple(self.classes))  # type: ignore[arg-type]

    def config(self):
        """The ``MSNConfig`` (imports torch)."""
        from msn_cli.models.msn import MSNConfig

        return MSNConfig.from_dict(self.model)


def _show(v: Any) -> str:
    kind = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}.get(type(v))
    if v is None:
        return "null"
    return kind or repr(v)


def _int(lo: int, hi: int):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected a whole number, got {_show(v)}"
        return None if lo <= v <= hi else f"{v} is out of range [{lo}, {hi}]"

    return check


def _real(lo: float, hi: float):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return f"expected a number, got {_show(v)}"
        return None if lo <= v <= hi else f"{v:g} is out of range [{lo:g}, {hi:g}]"

    return check


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"expected a non-empty string, got {_show(v)}"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {_show(v)}"


def _magnifications(v: Any) -> str | None:
    if not isinstance(v, list) or len(v) != 3:
        return f"expected a list of three numbers (X1, X2, X3), got {_show(v)}"
    for m in v:
        why = _real(1e-3, 1e4)(m)
        if why:
            return why
    return None


def _choice(*options: str):
    def check(v: Any) -> str | None:
        if v in options:
            return None
        return f"expected one of {list(options)}, got {repr(v) if isinstance(v, str) else _show(v)}"

    return check


def _gap_layers(v: Any) -> str | None:
    if v is None or (isinstance(v, list) and all(isinstance(g, str) and g for g in v)):
        return None
    return f"expected a list of layer names, got {_show(v)}"


#: ``model``'s keys: a check each, and whether train-meta always writes it.
MODEL_SCHEMA = {
    "backbone": (_text, True),
    "width": (_real(1 / 64, 16), False),
    "num_classes": (_int(1, MAX_CLASSES), True),
    "patch_size": (_int(16, MAX_PATCH_SIZE), True),
    "magnifications": (_magnifications, True),
    "gap_layers": (_gap_layers, False),
    "fusion": (_text, False),
    "meta_hidden": (_int(1, 4096), False),
    "in_channels": (_int(1, 64), False),
    "branches": (_text, False),
    "tune_experts": (_flag, False),
    # Mem-RM's crop geometry (models/msn.py CROPS); absent: msn 0.1.0's "centre"
    "crop": (_choice("receptive-field", "centre"), False),
    # Meta-FM's σ at test time (models/fusion.py SIGMAS); absent: "fixed"
    "sigma": (_choice("fixed", "pseudo"), False),
}


def _triple(lo: float, hi: float):
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or len(v) != 3:
            return f"expected a list of three numbers (R, G, B), got {_show(v)}"
        for x in v:
            why = _real(lo, hi)(x)
            if why:
                return why
        return None

    return check


def _normalize(v: Any) -> Normalization:
    if not isinstance(v, dict):
        raise ValueError(f"normalize: expected an object with mean and std, got {_show(v)}")
    unknown = sorted(set(v) - {"mean", "std"})
    if unknown:
        raise ValueError(f"normalize: unknown key(s) {unknown}")
    for key, (lo, hi) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        if key not in v:
            raise ValueError(f"normalize.{key}: missing")
        why = _triple(lo, hi)(v[key])
        if why:
            raise ValueError(f"normalize.{key}: {why}")
    mean, std = (tuple(float(x) for x in v[k]) for k in ("mean", "std"))
    return Normalization(mean, std)  # type: ignore[arg-type]


def _sha256(v: Any) -> str | None:
    if isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef"):
        return None
    got = repr(v[:80]) if isinstance(v, str) else _show(v)
    return f"expected 64 lowercase hex digits, got {got}"


def _pretrained(v: Any) -> PretrainedRecord | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"pretrained: expected an object or null, got {_show(v)}")
    unknown = sorted(set(v) - {"source", "file", "sha256"})
    if unknown:
        raise ValueError(f"pretrained: unknown key(s) {unknown}")
    for key, check in (("source", _text), ("file", _text), ("sha256", _sha256)):
        if key not in v:
            raise ValueError(f"pretrained.{key}: missing")
        why = check(v[key])
        if why:
            raise ValueError(f"pretrained.{key}: {why}")
    return PretrainedRecord(v["source"], v["file"], v["sha256"])


def _classes(v: Any, num_classes: int) -> str | None:
    if isinstance(v, str):
        return "expected a list of class names, got a string"
    if not isinstance(v, list) or not all(isinstance(c, str) and c.strip() for c in v):
        return f"expected a list of non-empty class names, got {_show(v)}"
    if len(set(v)) != len(v):
        return f"class names repeat: {v}"
    if len(v) != num_classes:
        return f"{len(v)} class names for num_classes {num_classes}"
    return None


def parse_card(raw: Any) -> ModelCard:
    """Validate ``model.json``'s parsed JSON against the schema; ``ValueError`` names the key.

    The model's own rules (known backbone, gap layer names, patch size multiple) are checked
    when it is built (:meth:`ModelCard.config`).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {_show(raw)}")
    version = raw.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"schema_version: expected a whole number, got {_show(version)}")
    if version != SCHEMA_VERSION:
        raise ValueError(f"schema version {version}; this msn reads {SCHEMA_VERSION}")
    keys = {"schema_version", "model", "classes", "input", "extra", "normalize", "pretrained"}
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}")
    model = raw.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"model: expected an object, got {_show(model)}")
    extra_keys = sorted(set(model) - set(MODEL_SCHEMA))
    if extra_keys:
        raise ValueError(f"model: unknown key(s) {extra_keys}")
    for key, (check, required) in MODEL_SCHEMA.items():
        if key not in model:
            if required:
                raise ValueError(f"model.{key}: missing")
            continue
        why = check(model[key])
        if why:
            raise ValueError(f"model.{key}: {why}")
    why = _classes(raw.get("classes"), model["num_classes"])
    if why:
        raise ValueError(f"classes: {why}")
    inp = raw.get("input", "x3")
    if inp not in BRANCHES:  # the branch a meta stage was trained on (``x3`` for MSN)
        raise ValueError(f"input: expected one of {list(BRANCHES)}, got {_show(inp)}")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise ValueError(f"extra: expected an object, got {_show(extra)}")
    normalize = _normalize(raw["normalize"]) if "normalize" in raw else DEFAULT_NORMALIZE
    pretrained = _pretrained(raw.get("pretrained"))
    return ModelCard(
        dict(model), list(raw["classes"]), inp, version, dict(extra), normalize, pretrained
    )
