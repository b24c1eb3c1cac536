"""Command-line options shared by several commands: one definition each.

Each is an ``Annotated`` type, so a command declares ``store: StoreOpt = DEFAULT_STORE``.
Parsing helpers here turn raw option text into checked values (never inside stages).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from msn_cli.errors import MsnUsageError

DEFAULT_STORE = "msn-store.zarr"
DEFAULT_CHECKPOINTS = "checkpoints"
DEFAULT_CLASSES = "normal,benign,in situ,invasive"

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="MSN_STORE",
        help="Patch store: a folder path or any fsspec URL zarr accepts (s3://, gs://, ...).",
        show_envvar=True,
    ),
]
CheckpointsOpt = Annotated[
    str,
    typer.Option(
        "--checkpoints",
        envvar="MSN_CHECKPOINTS",
        help="Checkpoint directory shared by the training stages and predict.",
        show_envvar=True,
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
]
WorkersOpt = Annotated[
    int,
    typer.Option("--workers", min=0, help="Worker threads/processes; 0 = one per CPU core."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="best|last",
        show_default=False,
        help="best: the last trained stage's best.pt (its epoch of best validation mIoU; "
        "weights.pt where it has none); last: its final weights.pt. Earlier stages always "
        "load the weights it was trained on. [default: best]",
    ),
]
#: What the checkpoint files of a directory are called (refused as outputs).
STAGE_FOLDERS = ("meta", "memrm", "experts", "fusion")
WEIGHT_FILES = ("weights.pt", "best.pt")
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="I/N: process every N-th slide starting at I (0-based). Defaults to "
        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set.",
        metavar="I/N",
    ),
]
ClassesOpt = Annotated[
    str,
    typer.Option("--classes", help="Comma-separated class names; index 0 is the first."),
]


def parse_device(text: str) -> str:
    """Validate a --device value (the torch device is resolved later, inside the stage)."""
    t = text.strip().lower()
    if t in ("auto", "cpu", "cuda", "mps") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise MsnUsageError("--device", f"{text!r} is not auto, cpu, cuda, cuda:N or mps")


def parse_weights(text: str | None) -> str:
    """Validate a --weights value: ``best`` (the default, None) or ``last``."""
    t = "best" if text is None else text.strip().lower()
    if t in ("best", "last"):
        return t
    raise MsnUsageError("--weights", f"{text!r} is not best or last")


def checkpoint_files(checkpoints: str | os.PathLike[str]) -> list:
    """A checkpoint directory, its model.json and every stage's weights files (never an
    output)."""
    from pathlib import Path

    ck = Path(checkpoints)
    return [ck, ck / "model.json", *(ck / s / f for s in STAGE_FOLDERS for f in WEIGHT_FILES)]


def parse_classes(text: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    if len(names) < 2:
        raise MsnUsageError("--classes", "give at least two comma-separated class names")
    if len({n.lower() for n in names}) != len(names):
        raise MsnUsageError("--classes", "class names must be distinct (case-insensitive)")
    return names


def parse_shard(text: str | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(index, count) from ``--shard I/N`` or the SLURM array variables; (0, 1) otherwise.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
        >>> parse_shard(None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
        ...                    "SLURM_ARRAY_TASK_COUNT": "3"})
        (2, 3)
    """
    env = os.environ if environ is None else environ
    if text is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            # --array=MIN-MAX[:STEP]; comma lists (1,5,9) have no such arithmetic: use --shard.
            try:
                offset = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
                step = int(env.get("SLURM_ARRAY_TASK_STEP", "1")) or 1
                if offset % step:
                    raise MsnUsageError(
                        "SLURM_ARRAY_TASK_ID", "not on the array's MIN-MAX:STEP grid; use --shard"
                    )
                return _check_shard(
                    offset // step, int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM_ARRAY_*"
                )
            except ValueError as exc:
                raise MsnUsageError("SLURM_ARRAY_TASK_ID", f"not a number: {exc}") from exc
        return 0, 1
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise MsnUsageError("--shard", f"{text!r} is not I/N, e.g. 0/4")
    return _check_shard(int(parts[0]), int(parts[1]), "--shard")


def _check_shard(i: int, n: int, what: str) -> tuple[int, int]:
    if n < 1 or not 0 <= i < n:
        raise MsnUsageError(what, f"shard {i}/{n}: need 0 <= I < N")
    return i, n
