"""Devices, precision, threads, seeds and input normalisation shared by every torch stage.

Imports torch: only ever imported inside a command's body.
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext

import numpy as np
import torch

from msn_cli.errors import MsnUsageError
from msn_cli.io.card import DEFAULT_NORMALIZE, Normalization

#: msn's default pixel normalisation: uint8 RGB -> (x/255 - MEAN) / STD. A checkpoint's
#: ``model.json`` records the one its model was trained with (``ModelCard.normalize``).
MEAN = DEFAULT_NORMALIZE.mean
STD = DEFAULT_NORMALIZE.std


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MsnUsageError("--device", f"{spec}: CUDA is not available on this machine")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise MsnUsageError("--device", f"{spec}: only {torch.cuda.device_count()} GPU(s)")
        return torch.device(spec)
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise MsnUsageError("--device", "mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    if spec == "cpu":
        return torch.device("cpu")
    raise MsnUsageError("--device", f"{spec!r} is not auto, cpu, cuda, cuda:N or mps")


def configure_threads(device: torch.device, threads: int | None = None) -> int:
    """On CPU use every core (or ``threads``) for intra-op work; returns the count used."""
    if device.type != "cpu":
        return torch.get_num_threads()
    n = threads or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_input(
    x: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    normalize: Normalization | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32 on ``device`` (transfer as uint8: 4x less).

    ``normalize`` is the checkpoint's (``card.normalize``); None means msn's default.
    """
    norm = DEFAULT_NORMALIZE if normalize is None else normalize
    x = x.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_target(y: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 labels (B, H, W) -> int64 on ``device`` (255 stays the ignore index)."""
    return y.to(device, non_blocking=True).long()
