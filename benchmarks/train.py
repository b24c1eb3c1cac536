"""Training throughput: the data pipeline against the model-only bound, and stage epochs.

Bound: model-only forward+backward+Adam step of the meta-branch on batches already in memory
(the same augmented batches). The real pipeline (PatchDataset -> augmentation -> DataLoader
workers -> device) should cost under 10% of it. Then one epoch of ``train-memrm`` and one of
``train-fusion`` on the same number of patches against one ``train-meta`` epoch: their frozen
parts are cached (X3 meta-features; branch logits and σ parts), so they should be cheaper.
Cache building (once per stage) is reported separately.

    python benchmarks/train.py                              # CPU, small, about a minute
    python benchmarks/train.py --device cuda --width 1 --patch 256 --batch-size 32 --amp
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from msn_cli.io.patches import Levels
from msn_cli.runtime import to_input, to_target
from msn_cli.stages.tile import SlideJob, TileConfig, tile
from msn_cli.stages.train_fusion import train_fusion
from msn_cli.stages.train_memrm import train_memrm
from msn_cli.stages.train_meta import MetaStep, train_meta
from msn_cli.synth import write_synthetic_slide
from msn_cli.training.config import FusionConfig, MemRMConfig, MetaConfig
from msn_cli.training.context import make_context
from msn_cli.training.data import Augment, FitView, train_loader
from msn_cli.training.loop import segmentation_loss

WORK = Path(__file__).parent / "_work" / "train"
ALL_FIELDS = ("x1", "x2", "x3", "y1", "y2", "y3")


def make_store(size: int, patch: int, codec: str) -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    url = str(WORK / f"store_{size}_{patch}_{codec.replace(':', '')}.zarr")
    jobs = []
    for i, split in enumerate(("train", "sub-train")):
        path = WORK / f"s{i}_{size}_{patch}.tif"
        if not path.exists():
            write_synthetic_slide(path, size=(size, size), seed=i, patch=patch)
        jobs.append(SlideJob(path, split=split))
    cfg = TileConfig(Levels.parse("16x 4x 1x"), ("normal", "benign", "in situ", "invasive"),
                     patch_size=patch, min_tissue=0, codec=codec)  # fmt: skip
    tile(url, jobs, cfg)
    return url


def model_only_rate(store: str, args, ctx) -> tuple[float, float]:
    """(pipeline patches/s, model-only patches/s) of train-meta's step on the same batches."""
    from msn_cli.io.dataset import PatchDataset
    from msn_cli.models.registry import build_backbone

    ds = PatchDataset(store, split="train", fields=("x3", "y3"))
    net = build_backbone("bisenet", 4, args.width).to(ctx.device).train()
    if ctx.channels_last:
        net.to(memory_format=torch.channels_last)
    step = MetaStep(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loader = train_loader(FitView(ds, transform=Augment(0)), args.batch_size, 0, ctx, args.workers)

    def train_on(batch):
        opt.zero_grad(set_to_none=True)
        with ctx.autocast():
            logits, aux = step(to_input(batch["x3"], ctx.device, ctx.channels_last))
            y = to_target(batch["y3"], ctx.device)
            loss = segmentation_loss(logits, y) + sum(segmentation_loss(a, y) for a in aux)
        loss.backward()
        opt.step()
        return loss.item()

    batches = list(loader)  # warm-up epoch (also starts the workers) and the in-memory copy
    for b in batches[:2]:
        train_on(b)
    rates = []
    for source in (loader, batches):
        t0, n = time.perf_counter(), 0
        for batch in source:
            train_on(batch)
            n += len(batch["x3"])
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def loader_rate(store: str, args, ctx, fields) -> float:
    """Patches/s of the shuffled training loader alone (``fields`` of every sample, augmented,
    ``args.workers`` workers), no model: what the data pipeline can feed."""
    from msn_cli.io.dataset import PatchDataset

    ds = PatchDataset(store, split="train", fields=fields)
    view = FitView(ds, transform=Augment(0, images=[f for f in fields if f.startswith("x")]))
    loader = train_loader(view, args.batch_size, 0, ctx, args.workers)
    rates = []
    for epoch in range(2):  # the first epoch also starts the workers
        loader.sampler.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch[fields[0]])
        rates.append(n / (time.perf_counter() - t0))
    return rates[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="synthetic slide side (level 0)")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--codec", default="jpeg", help="tile's image codec for the store")
    args = p.parse_args()
    store = make_store(args.size, args.patch, args.codec)
    ctx = make_context(args.device, args.amp)
    print(f"device {ctx.device}, {ctx.threads} threads, workers {args.workers}, "
          f"patch {args.patch}, width {args.width}, batch {args.batch_size}")  # fmt: skip

    pipe, bound = model_only_rate(store, args, ctx)
    print(f"train-meta step, real pipeline : {pipe:8.1f} patches/s")
    print(f"train-meta step, model only    : {bound:8.1f} patches/s  (bound)")
    print(f"pipeline cost                  : {100 * (1 - pipe / bound):8.1f} %  (goal < 10 %)")
    per = max(1, args.workers)
    for name, fields in (("x3,y3", ("x3", "y3")), ("whole triplets", ALL_FIELDS)):
        alone = loader_rate(store, args, ctx, fields)
        print(f"loader alone, {name:16s} : {alone:8.1f} patches/s  "
              f"= {alone / per / bound:5.1f}x model-only per worker (goal >= 3x)")  # fmt: skip

    ck = WORK / "ck"
    shutil.rmtree(ck, ignore_errors=True)
    common = dict(batch_size=args.batch_size, workers=args.workers, device=args.device,
                  amp=args.amp, val_split=None)  # fmt: skip
    t0 = time.perf_counter()
    meta = train_meta(MetaConfig(store, str(ck), epochs=1, width=args.width, split="sub-train",
                                 **common))  # fmt: skip
    meta_epoch = meta.history[-1]["seconds"]
    rows = [("train-meta", meta_epoch, time.perf_counter() - t0 - meta_epoch)]
    for name, fn, cfg in (
        ("train-memrm", train_memrm, MemRMConfig(store, str(ck), epochs=2, **common)),
        ("train-fusion", train_fusion, FusionConfig(store, str(ck), epochs=2, **common)),
    ):
        t0 = time.perf_counter()
        res = fn(cfg)
        epochs = sum(h["seconds"] for h in res.history)
        rows.append((name, res.history[-1]["seconds"], time.perf_counter() - t0 - epochs))
    n = meta.history[-1]["patches_per_s"] * meta_epoch
    print(f"\none epoch on the same {n:.0f} sub-train patches (second epoch for memrm/fusion):")
    for name, sec, setup in rows:
        print(f"  {name:13s} {sec:7.2f} s  ({sec / meta_epoch:5.2f} x train-meta)"
              f"   setup/cache/outside epochs {setup:6.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
