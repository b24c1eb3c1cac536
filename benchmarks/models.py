"""Model-only throughput of every registered backbone (and MSN) on this machine.

Bound: this is the model-compute bound of the pipeline (no data loading, no decoding); the
other benchmarks report their speed relative to these numbers. For each model it prints
forward and forward+backward patches/s at ``--size`` (256 by default), the model's GFLOP per
patch (PyTorch's FLOP counter) and the achieved GFLOP/s.

    python benchmarks/models.py                    # CPU, width 1, a couple of minutes
    python benchmarks/models.py --device cuda --batch-size 32 --amp --channels-last
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from msn_cli.models.msn import MSN, MSNConfig
from msn_cli.models.registry import BACKBONES, build_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _flops(fn: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=256, help="patch side in pixels")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--models",
        nargs="+",
        default=[*BACKBONES, "msn-bisenet"],
        help=f"any of {', '.join(BACKBONES)}, msn-<backbone>",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch-size and --iters must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"width={args.width} size={args.size} amp={args.amp} channels_last={args.channels_last}"
    )
    print(f"{'model':<16}{'fwd patch/s':>12}{'f+b patch/s':>12}{'GFLOP/patch':>12}{'GFLOP/s':>10}")
    torch.manual_seed(0)
    for name in args.models:
        x = torch.randn(args.batch_size, 3, args.size, args.size, device=device).to(
            memory_format=fmt
        )
        if name.startswith("msn-"):
            cfg = MSNConfig(
                backbone=name[4:],
                width=args.width,
                num_classes=args.classes,
                patch_size=args.size,
                fusion="conv",
            )
            model = MSN(cfg)

            def run(m=model, x=x):
                return m(x, x, x).s
        else:
            model = build_backbone(name, args.classes, args.width)

            def run(m=model, x=x):
                return m(x).logits

        model = model.to(device, memory_format=fmt).train()

        def forward(run=run) -> None:
            with torch.no_grad(), torch.autocast(device.type, amp_dtype, enabled=args.amp):
                run()

        def step(run=run, model=model) -> None:
            with torch.autocast(device.type, amp_dtype, enabled=args.amp):
                loss = run().float().square().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

        t_fwd = _time(forward, args.iters, args.warmup, device)
        t_step = _time(step, args.iters, args.warmup, device)
        gflop = _flops(forward) / args.batch_size / 1e9
        n = args.batch_size
        print(
            f"{name:<16}{n / t_fwd:>12.2f}{n / t_step:>12.2f}{gflop:>12.2f}"
            f"{gflop * n / t_fwd:>10.1f}"
        )


if __name__ == "__main__":
    main()
