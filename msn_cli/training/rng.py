"""RNG states as tensors, so that ``last.pt`` loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def capture_rng() -> dict[str, torch.Tensor]:
    """torch (CPU and CUDA), numpy and python ``random`` states as tensors."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": torch.tensor([int(pos), int(has_gauss)], dtype=torch.int64),
        "numpy_gauss": torch.tensor(float(gauss), dtype=torch.float64),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": torch.tensor(
            [float(version), math.nan if py_gauss is None else float(py_gauss)],
            dtype=torch.float64,
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(state["numpy_gauss"])))
    version, gauss = state["python_meta"].tolist()
    py = tuple(int(v) for v in state["python"].tolist())
    random.setstate((int(version), py, None if math.isnan(gauss) else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
