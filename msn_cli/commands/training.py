"""``msn train-meta``, ``train-memrm``, ``train-fusion``: the paper's three training steps.

Each command parses its options into a stage config and calls the stage; torch is imported
inside the body. Launch under ``torchrun --nproc-per-node N`` for DistributedDataParallel.
"""

from __future__ import annotations

from typing import Annotated

import typer

from msn_cli.console import reported
from msn_cli.options import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_STORE,
    CheckpointsOpt,
    DeviceOpt,
    SeedOpt,
    StoreOpt,
    parse_device,
)

EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Epochs (paper: 30 / 10 / 10).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Patches per batch.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Adam learning rate.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Store split to train on.")]
ValOpt = Annotated[
    str,
    typer.Option(
        "--val-split",
        help="Split for per-epoch validation mIoU, whose best epoch becomes best.pt "
        "(never 'test'), or 'none' (best.pt: the final epoch).",
    ),
]
AmpOpt = Annotated[bool, typer.Option("--amp", help="Mixed precision on CUDA (bf16 or fp16).")]
TrainWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help="DataLoader worker processes; 0 loads in the main process "
        "[default: min(8, CPU cores - 1)].",
        show_default=False,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads [default: all cores, split by ranks]."),
]
AugmentOpt = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Flips and 90° rotations (train only).")
]
JitterOpt = Annotated[
    float, typer.Option("--color-jitter", help="Brightness/contrast/saturation jitter, 0 = off.")
]
RestartOpt = Annotated[
    bool, typer.Option("--restart", help="Start this stage over (and drop the later stages).")
]
CacheOpt = Annotated[
    float,
    typer.Option(
        "--cache-gb", min=0, help="Disk budget of the frozen-output cache; over it, recompute."
    ),
]


def _config(cls, values: dict):
    """The stage config ``cls`` from a command's parameters (``locals()``)."""
    from dataclasses import fields

    from msn_cli.io.guard import refuse_overwrite

    parse_device(values["device"])
    values = dict(values)
    experts = [e.strip() for e in str(values.get("experts") or "").split(",") if e.strip()]
    refuse_overwrite(
        [("--checkpoints", values["checkpoints"])],
        folders=[values["store"], *experts, values.get("holdout_from")],
    )
    val = values.get("val_split")
    values["val_split"] = None if val is None or val.strip().lower() in ("none", "") else val
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


@reported
def train_meta(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    backbone: Annotated[
        str, typer.Option(help="bisenet, unet, pspnet or deeplabv3plus.")
    ] = "bisenet",
    width: Annotated[float, typer.Option(help="Channel width multiplier.")] = 1.0,
    input: Annotated[
        str, typer.Option("--input", help="x3 (MSN's meta-branch) or x1/x2 (a baseline).")
    ] = "x3",
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            metavar="imagenet|PATH",
            help="Start the backbone's ResNet from ImageNet weights: imagenet (torchvision's "
            "file in $TORCH_HOME/hub/checkpoints, never downloaded) or a .pth/.safetensors "
            "state dict in torchvision or timm names. Width 1.0; inputs are then "
            "ImageNet-normalised.",
            show_default=False,
        ),
    ] = None,
    epochs: EpochsOpt = 30,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-4,
    split: SplitOpt = "train",
    val_split: ValOpt = "sub-train",
    device: DeviceOpt = "auto",
    amp: AmpOpt = False,
    workers: TrainWorkersOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    augment: AugmentOpt = True,
    color_jitter: JitterOpt = 0.0,
    restart: RestartOpt = False,
) -> None:
    """Step 1: train the meta-branch on X3 (or a single-resolution baseline).

    Example: `msn train-meta --store store.zarr --checkpoints ckpt --epochs 30` ·
    `msn train-meta --store store.zarr --checkpoints ckpt --pretrained imagenet`
    """
    from msn_cli.report import print_training
    from msn_cli.stages.train_meta import train_meta as run
    from msn_cli.training.config import MetaConfig

    print_training(run(_config(MetaConfig, locals())))


@reported
def train_memrm(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    gap_layers: Annotated[
        str,
        typer.Option(
            "--gap-layers",
            help="default (the backbone's deep gap layers, e.g. BiSeNet layer3), auto (top-k "
            "of the Fig. 1 analysis: each layer's gap weighted by its context dependence), "
            "nongap (its bottom-k: Table 4's ablation) or NAME,NAME.",
        ),
    ] = "default",
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Gap layers chosen by auto.")] = 1,
    holdout: Annotated[
        float,
        typer.Option(
            help="Fraction of the split kept out of Mem-RM training, to fit train-fusion on "
            "(0: the paper's protocol, both on the same patches)."
        ),
    ] = 0.5,
    analysis_patches: Annotated[
        int, typer.Option(min=1, help="Patches of the gap-layer analysis.")
    ] = 64,
    crop: Annotated[
        str,
        typer.Option(
            "--crop",
            metavar="receptive-field|centre",
            help="Where Mem-RM samples X3's meta-features: at each gap-layer pixel's "
            "receptive-field centre, or 'centre' (msn 0.1.0: every pixel at its block's middle).",
        ),
    ] = "receptive-field",
    cache_gb: CacheOpt = 8.0,
    epochs: EpochsOpt = 10,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-4,
    split: SplitOpt = "sub-train",
    val_split: ValOpt = "none",
    device: DeviceOpt = "auto",
    amp: AmpOpt = False,
    workers: TrainWorkersOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    augment: AugmentOpt = True,
    color_jitter: JitterOpt = 0.0,
    restart: RestartOpt = False,
) -> None:
    """Step 2: find the gap layers and train the X1/X2 memory-recall modules.

    Example: `msn train-memrm --store store.zarr --checkpoints ckpt --epochs 10`
    """
    from msn_cli.report import print_training
    from msn_cli.stages.train_memrm import train_memrm as run
    from msn_cli.training.config import MemRMConfig

    print_training(run(_config(MemRMConfig, locals())))


@reported
def train_fusion(
    store: StoreOpt = DEFAULT_STORE,
    checkpoints: CheckpointsOpt = DEFAULT_CHECKPOINTS,
    method: Annotated[
        str, typer.Option(help="meta (Meta-FM), conv (w/o Meta) or awmf (AWMF-CNN fusion).")
    ] = "meta",
    holdout: Annotated[
        bool | None,
        typer.Option(
            "--holdout/--no-holdout",
            help="Fit on the patches train-memrm held out [default: yes if it held any].",
            show_default=False,
        ),
    ] = None,
    experts: Annotated[
        str | None,
        typer.Option(
            help="X1DIR,X2DIR,X3DIR: fuse three separately trained `train-meta` directories "
            "(Multi-branch, AWMF-CNN) into --checkpoints instead of an MSN.",
            show_default=False,
        ),
    ] = None,
    alternate: Annotated[
        bool,
        typer.Option(
            "--alternate",
            help="With --experts: train fusion and experts in turn, one epoch each "
            "(AWMF-CNN end to end).",
        ),
    ] = False,
    fusion_init: Annotated[
        str,
        typer.Option(
            "--fusion-init",
            metavar="average|he",
            help="How every fusion method starts: as the mean of its branches' probabilities, "
            "or He-initialised (from scratch).",
        ),
    ] = "average",
    sigma: Annotated[
        str,
        typer.Option(
            "--sigma",
            metavar="fixed|pseudo",
            help="Meta-FM's σ: 'fixed' generates one pair of kernels from σ* of the fit set "
            "(the paper); 'pseudo' gives every patch its own σ from its pseudo-labels "
            "(argmax S1), label-free, the same in training and at predict time.",
        ),
    ] = "fixed",
    holdout_from: Annotated[
        str | None,
        typer.Option(
            "--holdout-from",
            metavar="MSNDIR",
            help="With --experts: fit on the patches MSNDIR's train-memrm held out, the fit "
            "set of MSNDIR's own fusion.",
            show_default=False,
        ),
    ] = None,
    cache_gb: CacheOpt = 8.0,
    epochs: EpochsOpt = 10,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-4,
    split: SplitOpt = "sub-train",
    val_split: ValOpt = "none",
    device: DeviceOpt = "auto",
    amp: AmpOpt = False,
    workers: TrainWorkersOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    augment: AugmentOpt = True,
    restart: RestartOpt = False,
) -> None:
    """Step 3: train the meta fusion module (Meta-FM) or a comparison fusion.

    Example: `msn train-fusion --store store.zarr --checkpoints ckpt --epochs 10` ·
    `msn train-fusion --experts b_x1,b_x2,b_x3 --checkpoints awmf --method awmf --alternate`
    """
    from msn_cli.report import print_training
    from msn_cli.stages.train_fusion import train_fusion as run
    from msn_cli.training.config import FusionConfig

    print_training(run(_config(FusionConfig, locals())))
