"""Helpers of the training tests: tiny stores, stage runs in-process and as killable processes.

(No tests here; the ``test_train*`` modules import these.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msn_cli.io.patches import Levels
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.synth import write_synthetic_slide

CLASSES = ("normal", "benign", "in situ", "invasive")
PATCH = 64
#: Options every CLI run of the tests uses: tiny, deterministic, single-threaded, no workers.
FAST = ["--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu"]


def make_store(directory: Path, patch: int = PATCH, size: int = 256, classes=CLASSES) -> str:
    """Three synthetic slides (train, sub-train, test) of (size/patch)^2 patches each."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, split in enumerate(("train", "sub-train", "test")):
        path = directory / f"s{i}.tif"
        if not path.exists():
            write_synthetic_slide(path, size=(size, size), seed=i, patch=patch)
        jobs.append(SlideJob(path, split=split))
    cfg = TileConfig(Levels.parse("4x 2x 1x"), tuple(classes), patch_size=patch, min_tissue=0)
    url = str(directory / "st.zarr")
    tile(url, jobs, cfg)
    return url


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m msn_cli.cli ARGS`` in a fresh process (what a user runs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "msn_cli.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"msn {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def kill_in_second_epoch(stage_dir: Path, *args: str) -> None:
    """Start ``msn ARGS``, SIGKILL it as soon as epoch 1's last.pt exists (busy-wait)."""
    last = stage_dir / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "msn_cli.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    while not last.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited before epoch 1 ended: {proc.stderr.read().decode()}")
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert alive, "the run ended before it could be killed"
    assert not (stage_dir / "weights.pt").exists()
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSN_", "SLURM_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["OMP_NUM_THREADS"] = "1"
    return env


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_last_batch_of_one_patch_sits_the_epoch_out():
    """BatchNorm after global pooling cannot train on one sample; fit_epoch skips that batch."""
    from torch import nn
    from torch.utils.data import DataLoader

    from msn_cli.errors import MsnError
    from msn_cli.training.context import make_context
    from msn_cli.training.loop import fit_epoch, segmentation_loss

    n = torch.get_num_threads()
    ctx = make_context("cpu", threads=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))
    rows = [
        {"row": i, "x": torch.rand(3, 8, 8), "y": torch.randint(0, 4, (1, 1))} for i in range(5)
    ]
    sizes = []

    def step(batch):
        sizes.append(len(batch["row"]))
        logits = net(batch["x"])
        return {"loss": segmentation_loss(logits, batch["y"])}, {"x": (logits, batch["y"])}

    opt = torch.optim.Adam(net.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    record = fit_epoch(DataLoader(rows, batch_size=2), step, opt, scaler, ctx, "t", 5, 4)
    assert sizes == [2, 2] and record["patches_per_s"] > 0  # the fifth patch sat out
    with pytest.raises(MsnError, match="no training step"):  # nothing left to train on
        fit_epoch(DataLoader(rows[:1], batch_size=2), step, opt, scaler, ctx, "t", 1, 4)
    sizes.clear()
    net[2] = nn.Identity()  # --batch-size 1 asked for: nothing is skipped
    fit_epoch(DataLoader(rows[:2], batch_size=1), step, opt, scaler, ctx, "t", 2, 4)
    assert sizes == [1, 1]
    torch.set_num_threads(n)
