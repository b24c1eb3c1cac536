"""The one training loop of every stage: each stage declares what it trains, :class:`Trainer`
runs it.

A stage calls :meth:`Trainer.start` (``--restart``, the resume check, the seed), builds its
model, and hands :meth:`Trainer.fit` a :class:`Plan`: the card, the trained part, its
optimizer(s), the validation, and how to build the fit set and each epoch's :class:`Phase`
(optimizer and step) once ``config.json`` is written. The trainer does the rest: resume,
"already finished", ``config.json``, the epochs with validation, the history and
``curves.png``, ``last.pt`` after every epoch and the final weights.

After each epoch, rank 0 writes the stage's ``last.pt`` atomically: the trained part's
weights, optimizer(s), grad scaler, epoch, history, the resolved configuration, and the RNG
states and data order as tensors (``torch.load(weights_only=True)`` reads it). Rerunning the
same command loads it and continues with the next epoch; since data order and augmentation
derive from (seed, epoch) and every RNG is restored, the result equals an uninterrupted run
(on CPU, same threads). A ``last.pt`` made with other options is refused (``--restart``
starts over); ``--epochs`` may grow to train a finished stage further.

Model selection: each epoch's validation (``--val-split``, never ``test``) scores the
outputs :attr:`Validation.select` names (their mean mIoU: ``xK`` for ``train-meta``, the
mean of ``x1`` and ``x2`` for ``train-memrm``, ``fusion`` for ``train-fusion``, alternating
included). The epoch scoring highest (ties: the earlier) is the stage's best; its weights are
kept in ``last.pt`` (``best``), so a killed and rerun stage chooses exactly as an uninterrupted
one. At the end ``best.pt`` (its weights, like ``weights.pt``) and ``best.json`` (epoch,
score, outputs, split, reason) are written just before ``weights.pt``. Without validation
(``--val-split none``, or no epoch with a score) the best is the final epoch. Later stages
train on ``best.pt`` (:mod:`msn_cli.io.checkpoints`, "Which weights").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from msn_cli.errors import MsnError
from msn_cli.io.card import ModelCard
from msn_cli.io.checkpoints import STAGES, CheckpointDir
from msn_cli.plots import training_curves
from msn_cli.runtime import seed_everything
from msn_cli.training.common import StageResult, dataset
from msn_cli.training.config import TrainConfig
from msn_cli.training.context import Context
from msn_cli.training.data import FitView, default_workers, ordered_loader, train_loader
from msn_cli.training.loop import Step, fit_epoch, val_fields, val_score, validate
from msn_cli.training.rng import capture_rng, restore_rng

log = logging.getLogger("msn")

#: Options that may change between a run and its resumption.
RESUMABLE = frozenset(
    {"epochs", "workers", "device", "amp", "threads", "restart", "cache_gb", "store", "checkpoints"}
)


@dataclass
class Phase:
    """What one epoch trains: ``step`` (see :func:`~msn_cli.training.loop.fit_epoch`),
    minimised by ``optimizer``. A named phase (``train-fusion --alternate``) shows its name
    in the progress line and records it in the history (``trained``)."""

    optimizer: torch.optim.Optimizer
    step: Step
    name: str | None = None


@dataclass
class Epochs:
    """What the epochs run, built once ``config.json`` is written (caches included).

    ``phase(epoch)`` is called before each epoch (0-based): it sets the model's train/eval
    modes and returns what the epoch trains. ``after()``, if any, runs after each epoch's
    training, before validation and ``last.pt`` (Meta-FM stores σ* there).
    """

    train: FitView
    phase: Callable[[int], Phase]
    after: Callable[[], None] | None = None


@dataclass
class Validation:
    """``--val-split``: mIoU of ``outputs`` of ``model`` run with ``stages``; ``fields``: the
    store fields read (default: what the outputs need); ``select``: the outputs whose mean
    validation mIoU picks ``best.pt`` (default :meth:`selected`)."""

    model: nn.Module
    stages: tuple[str, ...]
    outputs: tuple[str, ...]
    fields: tuple[str, ...] | None = None
    select: tuple[str, ...] | None = None

    def selected(self) -> tuple[str, ...]:
        """``select``, else ``fusion`` when it is validated, else every output (``xK`` of
        train-meta, the mean of ``x1`` and ``x2`` of train-memrm).

        Example:
            >>> Validation(None, (), ("x1", "x2")).selected()
            ('x1', 'x2')
            >>> Validation(None, (), ("x1", "fusion")).selected()
            ('fusion',)
        """
        if self.select is not None:
            return tuple(self.select)
        return ("fusion",) if "fusion" in self.outputs else tuple(self.outputs)


@dataclass
class Plan:
    """What a stage trains, declared to :meth:`Trainer.fit`.

    ``trained`` is ``last.pt``'s ``model`` and the final weights; ``optimizers`` are saved
    under their keys; ``config`` is what ``config.json`` records besides the options;
    ``epochs()`` builds the fit set and phases (only when there are epochs to run).
    """

    card: ModelCard
    trained: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    epochs: Callable[[], Epochs]
    validation: Validation
    config: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One stage's run in a checkpoint directory: start, resume, the epochs, the weights."""

    def __init__(
        self, ck: CheckpointDir, name: str, ctx: Context, cfg: TrainConfig, config: dict[str, Any]
    ) -> None:
        # ``base``: the SHA-256 of every earlier stage's weights this stage is built on.
        self.ck, self.ctx, self.cfg = ck, ctx, cfg
        self.config = {**config, "base": ck.base_of(name)}
        self.stage = ck.stage(name)
        self.name = name
        self.workers = default_workers(ctx.world) if cfg.workers is None else cfg.workers
        self.history: list[dict[str, Any]] = []
        self.state: dict[str, Any] | None = None
        #: The best epoch so far (rank 0): ``epoch``, ``score`` and the trained part's
        #: ``weights`` (on the CPU); saved in ``last.pt`` and restored on resume.
        self.best: dict[str, Any] | None = None

    def start(self) -> dict[str, Any] | None:
        """Start over if ``--restart``, refuse a ``last.pt`` made with other options, seed
        every RNG; the saved state to resume from, or None."""
        if self.cfg.restart:
            self.restart()
        self.state = self.check_resumable()
        seed_everything(self.cfg.seed)
        return self.state

    def fit(self, plan: Plan) -> StageResult:
        """Resume ``plan`` from :meth:`start`'s state and train the remaining epochs."""
        cfg, ctx = self.cfg, self.ctx
        scaler = ctx.grad_scaler()
        parts = {"model": plan.trained, **plan.optimizers, "scaler": scaler}
        val, validation = None, plan.validation
        select = validation.selected()
        start = self.resume(parts, self.state, select)
        if start >= cfg.epochs and self.stage.complete:
            return self._result(0, "already finished")
        self.write_config(**plan.config)
        epochs = plan.epochs()
        if cfg.val_split:
            fields = validation.fields or val_fields(validation.outputs)
            vds = dataset(cfg.store, cfg.val_split, fields, "--val-split")
            val = ordered_loader(vds, cfg.batch_size, ctx, self.workers)
        loader = train_loader(epochs.train, cfg.batch_size, cfg.seed, ctx, self.workers)
        n, nc = len(epochs.train), len(plan.card.classes)
        for epoch in range(start, cfg.epochs):
            phase = epochs.phase(epoch)
            loader.sampler.set_epoch(epoch)
            desc = f"train-{self.name} {epoch + 1}/{cfg.epochs}"
            desc += f" ({phase.name})" if phase.name else ""
            record = fit_epoch(loader, phase.step, phase.optimizer, scaler, ctx, desc, n, nc)
            if phase.name:
                record["trained"] = phase.name
            if epochs.after is not None:
                epochs.after()
            if val is not None:
                model, stages, outputs = validation.model, validation.stages, validation.outputs
                miou = validate(model, stages, plan.card, val, outputs, ctx)
                record.update({f"val_miou_{k}": v for k, v in miou.items()})
            self.end_epoch(epoch, record, parts, select)
        self.finish(plan.trained.state_dict(), select)
        return self._result(cfg.epochs - start)

    def _result(self, epochs_run: int, note: str = "") -> StageResult:
        return StageResult(self.name, self.stage.dir, epochs_run, self.history, note, self.ctx.rank)

    # -- start ----------------------------------------------------------------------------
    def restart(self) -> None:
        """Forget this stage and the stages after it (they were built on it)."""
        if self.ctx.is_main:
            for later in STAGES[STAGES.index(self.name) :]:
                st = self.ck.stage(later)
                if later != self.name and st.dir.exists() and any(st.dir.iterdir()):
                    log.warning("%s: removed (it depended on the restarted stage)", st.dir)
                st.reset()
                for extra in st.dir.glob("*") if st.dir.is_dir() else ():
                    _remove(extra)
        self.ctx.barrier()

    def check_resumable(self) -> dict[str, Any] | None:
        """The saved ``last.pt`` (refused when made with other options), or None."""
        state = self.stage.load_last()
        if state is None:
            return None
        saved = dict(state.get("config", {}))
        if "base" in saved:  # (checkpoints of msn 0.1 record no base)
            self.ck.check_base(self.name, saved["base"], self.stage.last)
        diff = sorted(
            k
            for k in set(saved) | set(self.config)
            if k not in RESUMABLE | {"base"} and saved.get(k) != self.config.get(k)
        )
        if diff:
            k = diff[0]
            raise MsnError(
                self.stage.last,
                f"was made with {k}={saved.get(k)!r}, not {self.config.get(k)!r}; rerun with "
                f"the same options to resume, or add --restart to start over",
            )
        return state

    def resume(
        self, parts: dict[str, Any], state: dict[str, Any] | None, select: tuple[str, ...] = ()
    ) -> int:
        """Load ``state`` (from :meth:`check_resumable`) into ``parts``, and the best epoch
        so far (scored on ``select``); the next epoch."""
        if state is None:
            return 0
        for key, obj in parts.items():
            if obj is not None and key in state:
                obj.load_state_dict(state[key])
        restore_rng(state["rng"])
        self.history = list(state.get("history", []))
        done = int(state["epoch"])
        if self.ctx.is_main:
            self.best = state.get("best")
            score = val_score(self.history[-1], select) if self.history else None
            if "best" not in state and score is not None:
                # A last.pt of an older msn keeps no best epoch: the earlier epochs' weights
                # are gone, so the choice starts from the epoch it holds.
                log.info(
                    "%s: no best epoch recorded; choosing from epoch %d on", self.stage.dir, done
                )
                self.best = {"epoch": done, "score": score, "weights": _cpu_copy(parts["model"])}
            log.info("%s: resuming after epoch %d", self.stage.dir, done)
            if self.stage.weights.exists() and done < int(self.config["epochs"]):
                self.stage.weights.unlink()  # training further: not finished any more
        self.ctx.barrier()
        return done

    def write_config(self, **extra: Any) -> None:
        """``config.json``: the options, plus what the stage derived (``extra``)."""
        if self.ctx.is_main:
            self.stage.write_config({**self.config, **extra})

    # -- per epoch ------------------------------------------------------------------------
    def end_epoch(
        self,
        epoch: int,
        record: dict[str, Any],
        parts: dict[str, Any],
        select: tuple[str, ...] = (),
    ) -> None:
        """Record epoch ``epoch`` (0-based), keep its weights if it is the best so far (its
        :func:`val_score` on ``select`` beats the best's: ties keep the earlier), and write
        ``last.pt`` (rank 0), atomically."""
        self.history.append({"epoch": epoch + 1, **record})
        if self.ctx.is_main:
            score = val_score(record, select)
            if score is not None and (self.best is None or score > self.best["score"]):
                self.best = {
                    "epoch": epoch + 1,
                    "score": score,
                    "weights": _cpu_copy(parts["model"]),
                }
            state = {k: v.state_dict() for k, v in parts.items() if v is not None}
            if self.best is not None:
                state["best"] = self.best
            state.update(
                epoch=epoch + 1,
                config=self.config,
                history=self.history,
                rng=capture_rng(),
                data_order=torch.tensor([int(self.config.get("seed", 0)), epoch + 1]),
            )
            self.stage.save_last(state)
            self.stage.write_history(self.history)
            line = " ".join(f"{k}={_fmt(v)}" for k, v in record.items())
            log.info("%s epoch %d/%d: %s", self.name, epoch + 1, self.config["epochs"], line)
        self.ctx.barrier()

    def finish(self, weights: dict[str, Any], select: tuple[str, ...] = ()) -> None:
        """``curves.png``, ``best.pt`` and ``best.json``, then the final weights (rank 0)."""
        if self.ctx.is_main:
            training_curves(f"train-{self.name}", self.history, self.stage.curves)
            info, best = self.best_record(select)
            if best is None:
                best = weights
            if self.stage.save_best(best, info):
                score = "" if info["score"] is None else f", score {info['score']:.4g}"
                log.info("%s: best.pt is epoch %d%s", self.name, info["epoch"], score)
            self.stage.save_weights(weights)
        self.ctx.barrier()

    def best_record(self, select: tuple[str, ...]) -> tuple[dict[str, Any], Any]:
        """What ``best.json`` records, and the best weights (None: the final weights)."""
        final = int(self.history[-1]["epoch"]) if self.history else int(self.config["epochs"])
        split = self.cfg.val_split
        metric = " and ".join(f"val_miou_{o}" for o in select)
        info: dict[str, Any] = {
            "epoch": final,
            "score": None,
            "metric": f"mean of {metric}" if len(select) > 1 else metric,
            "select": list(select),
            "split": split,
            "epochs": final,
        }
        if self.best is not None:
            info.update(epoch=int(self.best["epoch"]), score=float(self.best["score"]))
            info["reason"] = f"the highest validation mIoU on {split} (ties: the earlier epoch)"
            return info, self.best["weights"]
        if split is None:
            info["reason"] = "no validation split (--val-split none): the final epoch"
        else:
            info["reason"] = f"no epoch has a validation score on {split}: the final epoch"
        return info, None


def _cpu_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict on the CPU (kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _remove(path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
