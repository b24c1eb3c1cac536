"""The checkpoint directory (docs/architecture.md, "The two contracts"): the only module that
knows its layout.

::

    checkpoints/
      model.json            architecture, classes, patch size, magnifications, trained input
      meta/   memrm/   fusion/          one folder per training stage, each with
        last.pt             everything a resume needs (weights, optimizer, epoch, RNG states)
        weights.pt          the stage's final weights (its part of the model only)
        best.pt             the weights of the epoch with the best validation mIoU (same form)
        best.json           which epoch best.pt is, its score, and why it was chosen
        config.json         the resolved configuration the stage ran with
        history.jsonl       one JSON object per epoch (loss, mIoU, seconds, ...)
        curves.png          the history drawn (loss and mIoU per epoch)
        cache/              frozen features or outputs, computed once (memrm, fusion)
      memrm/gap_layers.json the Fig. 1 activation statistics and the chosen gap layers
      memrm/gap_layers.png  the same, drawn

:class:`StageDir` names each of a stage folder's files (``stage.history``,
``stage.curves``, ...), and :func:`read_history` is the one reader of ``history.jsonl``.

A directory of independent experts (``msn train-fusion --experts X1DIR,X2DIR,X3DIR``: the
paper's "Multi-branch" and AWMF-CNN systems) holds ``experts/`` (the three imported
experts, ``config.json`` naming their sources) and ``fusion/`` instead.

Any later stage, ``predict`` included, rebuilds the model from the directory alone
(:meth:`CheckpointDir.load_model`). Every file is written atomically; every ``.pt`` file is
read with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.

Which weights (``best.pt`` or ``weights.pt``) are used, so that no two loaded parts were
never trained together:

* a stage *selects* ``best.pt`` (``weights.pt`` in a folder written before msn kept
  ``best.pt``, and in ``experts/``, which is imported, not trained): :attr:`StageDir.selected`;
* a later stage is trained on the earlier stages' selected weights, and records their SHA-256
  in its ``config.json`` (``base``, :meth:`CheckpointDir.base_of`);
* loading (``predict``, ``evaluate``: ``--weights best|last``) takes the *top* stage, the last
  one loaded, from ``best.pt`` (``best``) or ``weights.pt`` (``last``), and every stage under
  it from the file its ``base`` names: exactly the weights it was trained on. A stage whose
  recorded base matches no file any more is stale and refused (:meth:`check_base`).

Example:
    >>> ck = CheckpointDir("checkpoints")  # doctest: +SKIP
    >>> ck.require("meta", "memrm"); model, stages = ck.load_model("cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError
from msn_cli.io.atomic import atomic_write, atomic_write_json, atomic_write_text
from msn_cli.io.card import SCHEMA_VERSION, ModelCard, parse_card
from msn_cli.io.store import StoreSpec

__all__ = ["SCHEMA_VERSION", "CheckpointDir", "ModelCard", "StageDir"]
log = logging.getLogger("msn")
#: ``experts`` exists only in a directory of independent branches (``train-fusion --experts``):
#: the three imported single-resolution experts, in place of ``meta`` and ``memrm``. The module
#: each stage's weights belong to is ``MSN.stage_part(stage)``.
STAGES = ("meta", "memrm", "experts", "fusion")
MSN_STAGES = ("meta", "memrm", "fusion")
EXPERT_STAGES = ("experts", "fusion")
COMMANDS = {
    "meta": "msn train-meta",
    "memrm": "msn train-memrm",
    "experts": "msn train-fusion --experts",
    "fusion": "msn train-fusion",
}


#: The file names of the directory and of a stage folder (see the module docstring).
MODEL_JSON = "model.json"
LAST = "last.pt"
WEIGHTS = "weights.pt"
BEST = "best.pt"
BEST_JSON = "best.json"
CONFIG = "config.json"
HISTORY = "history.jsonl"
CURVES = "curves.png"
GAP_STATS = "gap_layers.json"
GAP_FIGURE = "gap_layers.png"
CACHE = "cache"
#: ``--weights`` of predict and evaluate: the top stage's ``best.pt`` or ``weights.pt``.
WEIGHT_CHOICES = ("best", "last")


class StageDir:
    """One stage's folder: typed paths and atomic reads/writes of its files."""

    def __init__(self, root: Path, name: str) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
        self.name = name
        self.dir = root / name

    # -- its files ------------------------------------------------------------------------
    @property
    def last(self) -> Path:
        """``last.pt``: everything a resume needs."""
        return self.dir / LAST

    @property
    def weights(self) -> Path:
        """``weights.pt``: the stage's final weights, written last."""
        return self.dir / WEIGHTS

    @property
    def best(self) -> Path:
        """``best.pt``: the weights of the epoch with the best validation mIoU (the final
        epoch's without validation), written just before ``weights.pt``."""
        return self.dir / BEST

    @property
    def best_json(self) -> Path:
        """``best.json``: the epoch ``best.pt`` holds, its score, the outputs and split scored,
        and why (see :meth:`read_best`)."""
        return self.dir / BEST_JSON

    @property
    def selected(self) -> Path:
        """The weights later stages build on: ``best.pt``, or ``weights.pt`` where there is
        none (a folder from before msn kept ``best.pt``; ``experts/``)."""
        return self.best if self.best.is_file() else self.weights

    def weights_file(self, which: str) -> Path:
        """``which`` (``best`` or ``last``, see :data:`WEIGHT_CHOICES`) of this stage: ``best``
        falls back to ``weights.pt`` where there is no ``best.pt``."""
        if which not in WEIGHT_CHOICES:
            raise ValueError(f"weights {which!r}: expected one of {WEIGHT_CHOICES}")
        return self.selected if which == "best" else self.weights

    @property
    def config(self) -> Path:
        """``config.json``: the resolved configuration the stage ran with."""
        return self.dir / CONFIG

    @property
    def history(self) -> Path:
        """``history.jsonl``: one JSON object per epoch."""
        return self.dir / HISTORY

    @property
    def curves(self) -> Path:
        """``curves.png``: the history drawn."""
        return self.dir / CURVES

    @property
    def gap_stats(self) -> Path:
        """``gap_layers.json`` (memrm): the Fig. 1 statistics and the chosen gap layers."""
        return self.dir / GAP_STATS

    @property
    def gap_figure(self) -> Path:
        """``gap_layers.png`` (memrm): the Fig. 1 statistics drawn."""
        return self.dir / GAP_FIGURE

    @property
    def cache(self) -> Path:
        """``cache/``: what the stage computes once from frozen parts (memrm, fusion)."""
        return self.dir / CACHE

    @property
    def complete(self) -> bool:
        """True once the stage's final weights exist (written last)."""
        return self.weights.is_file()

    def file(self, name: str) -> Path:
        """Any file of the folder by name (prefer the named properties above)."""
        return self.dir / name

    # -- torch files ----------------------------------------------------------------------
    def save(self, path: Path, obj: Any) -> None:
        import torch

        atomic_write(path, lambda fh: torch.save(obj, fh))

    def load(self, path: Path) -> Any:
        return load_checkpoint_file(path)

    def save_last(self, state: dict[str, Any]) -> None:
        self.save(self.last, state)

    def load_last(self) -> dict[str, Any] | None:
        return self.load(self.last) if self.last.is_file() else None

    def save_weights(self, state_dict: dict[str, Any]) -> None:
        self.save(self.weights, state_dict)

    def save_best(self, state_dict: dict[str, Any], info: dict[str, Any]) -> bool:
        """Write ``best.pt`` and then ``best.json`` (``info``: at least ``epoch`` and
        ``score``); False, and ``best.pt`` left as it is, when ``best.json`` already names the
        same epoch, score and outputs (a stage trained further without a better epoch: the
        later stages built on ``best.pt`` stay valid). ``best.json`` goes first, so a
        ``best.pt`` is never described by a stale record."""
        same = ("epoch", "score", "select")
        old = self.read_best() if self.best.is_file() else None
        if old is not None and all(old.get(k) == info.get(k) for k in same):
            if old != info:
                atomic_write_json(self.best_json, info)
            return False
        self.best_json.unlink(missing_ok=True)
        self.save(self.best, state_dict)
        atomic_write_json(self.best_json, info)
        return True

    def read_best(self) -> dict[str, Any] | None:
        """``best.json``: ``epoch`` (1-based), ``score`` (the mean validation mIoU of
        ``select``, null without one), ``select``, ``split`` and ``reason``; None if absent."""
        if not self.best_json.is_file():
            return None
        info = _read_json(self.best_json)
        if not isinstance(info, dict):
            raise MsnError(self.best_json, "not a JSON object")
        return info

    # -- JSON files -----------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config, config)

    def read_config(self) -> dict[str, Any] | None:
        return _read_json(self.config) if self.config.is_file() else None

    def write_history(self, records: list[dict[str, Any]]) -> None:
        """Rewrite the whole history (small), atomically."""
        atomic_write_text(self.history, "".join(json.dumps(r) + "\n" for r in records))

    def read_history(self) -> list[dict[str, Any]]:
        """The epochs recorded so far ([] before the first; see :func:`read_history`)."""
        return read_history(self.history) if self.history.is_file() else []

    def reset(self) -> None:
        """Remove the stage's files (``--restart``)."""
        for p in (self.last, self.weights, self.best, self.best_json, self.config, self.history):
            if p.exists():
                p.unlink()


class CheckpointDir:
    """A checkpoint directory; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.model_json = self.path / MODEL_JSON
        #: The file each stage was loaded from by the last :meth:`load_model`.
        self.loaded: dict[str, Path] = {}

    def stage(self, name: str) -> StageDir:
        return StageDir(self.path, name)

    def exists(self) -> bool:
        return self.model_json.is_file()

    def read_card(self) -> ModelCard:
        if not self.exists():
            raise MsnError(self.path, "no model.json here; run `msn train-meta` first")
        raw = _read_json(self.model_json)
        try:
            card = parse_card(raw)
            card.config()  # the model's own rules: known backbone, gap layers, size multiple
        except ValueError as exc:
            raise MsnError(self.model_json, f"not a valid msn model.json: {exc}") from exc
        return card

    def write_card(self, card: ModelCard) -> None:
        atomic_write_json(self.model_json, asdict(card))

    def check_store(self, spec: StoreSpec, store_url: str = "the store") -> None:
        """Refuse a store whose classes, patch size or magnifications differ from model.json."""
        why = self.read_card().store_spec().mismatch(spec)
        if why:
            raise MsnError(
                self.path,
                f"checkpoints do not match {store_url}: {why.replace('store has', 'model has')}",
            )

    def require(self, *stages: str) -> None:
        """Refuse, naming the command to run, when an earlier stage has not finished."""
        self.read_card()
        for name in stages:
            if not self.stage(name).complete:
                raise MsnError(
                    self.path / name, f"stage '{name}' has not finished; run `{COMMANDS[name]}`"
                )

    def completed(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if self.stage(s).complete)

    def base_of(self, name: str) -> dict[str, str]:
        """SHA-256 of the weights of every finished stage before ``name``: what it builds on
        (:meth:`built_on`)."""
        return {s: weights_sha256(f) for s, f in self.built_on(name).items()}

    def built_on(self, name: str) -> dict[str, Path]:
        """The weights file of every finished stage before ``name`` that ``name`` trains on:
        the earlier stages loaded as ``--weights best`` loads them (never refused here)."""
        earlier = tuple(s for s in STAGES[: STAGES.index(name)] if self.stage(s).complete)
        return self._resolve(earlier, "best") if earlier else {}

    def check_base(self, name: str, base: dict[str, str], where: Path | None = None) -> None:
        """Refuse stage ``name`` when an earlier stage's weights changed since it was built
        (``base``: what it recorded): it is stale, and only retraining mends it."""
        self._check(name, base, self.built_on(name), where)

    def _check(
        self, name: str, base: dict[str, str], files: dict[str, Path], where: Path | None = None
    ) -> None:
        for earlier, digest in base.items():
            path = files.get(earlier) or self._matching(earlier, digest)
            if not path.is_file() or weights_sha256(path) != digest:
                raise MsnError(
                    where or self.stage(name).dir,
                    f"stage '{name}' is stale: it was trained on other '{earlier}' weights "
                    f"({earlier}/{path.name} has changed since); retrain it with "
                    f"`{COMMANDS[name]} --restart`",
                )

    def _matching(self, name: str, digest: str | None) -> Path:
        """Stage ``name``'s file whose SHA-256 is ``digest`` (best.pt, then weights.pt), else
        its selected file."""
        st = self.stage(name)
        if digest is not None:
            for path in (st.best, st.weights):
                if path.is_file() and weights_sha256(path) == digest:
                    return path
        return st.selected

    def _resolve(self, stages: tuple[str, ...], weights: str) -> dict[str, Path]:
        """The file of each of ``stages`` (finished): the top one's ``weights`` choice, those
        under it the files the top one recorded as its base (see the module docstring)."""
        order = sorted(stages, key=STAGES.index)
        top = order[-1]
        files = {top: self.stage(top).weights_file(weights)}
        base = self._recorded_base(top) or {}
        for name in order[:-1]:
            files[name] = self._matching(name, base.get(name))
        return {s: files[s] for s in order}

    def _recorded_base(self, name: str) -> dict[str, str] | None:
        base = (self.stage(name).read_config() or {}).get("base")
        return base if isinstance(base, dict) else None

    def weight_files(
        self, stages: tuple[str, ...] | None = None, weights: str = "best"
    ) -> dict[str, Path]:
        """The weights file of every finished stage (or of ``stages``), in stage order, as
        :meth:`load_model` loads them (``weights``: ``best`` or ``last``, see the module
        docstring); refuses an unfinished or a stale stage."""
        if weights not in WEIGHT_CHOICES:
            raise MsnError(
                None, f"--weights {weights!r}: expected one of {', '.join(WEIGHT_CHOICES)}"
            )
        wanted = self.completed() if stages is None else tuple(stages)
        for name in wanted:
            st = self.stage(name)
            if not st.complete:
                raise MsnError(st.dir, f"stage '{name}' has not finished; run `{COMMANDS[name]}`")
        if not wanted:
            return {}
        files = self._resolve(wanted, weights)
        for name in files:
            recorded = self._recorded_base(name)
            if recorded:
                self._check(name, recorded, files)
        return files

    def load_model(
        self, device: Any = "cpu", stages: tuple[str, ...] | None = None, weights: str = "best"
    ):
        """Rebuild the model and load every finished stage's weights (or ``stages``).

        ``weights`` (``best`` or ``last``) picks the top stage's file; the stages under it get
        the weights it was trained on (:meth:`weight_files`). Returns ``(model,
        loaded_stages)``; the model is in eval mode on ``device``; ``self.loaded`` names the
        file each stage was loaded from.
        """
        from msn_cli.models.msn import MSN

        card = self.read_card()
        try:
            model = MSN(card.config())
        except ValueError as exc:
            raise MsnError(self.model_json, f"cannot build the model: {exc}") from exc
        files = self.weight_files(stages, weights)
        top = next(reversed(files), None)
        if weights == "best" and top not in (None, "experts") and files[top].name != BEST:
            log.info(
                "%s: no %s (written before msn kept the best epoch): using %s",
                self.stage(top).dir,
                BEST,
                WEIGHTS,
            )
        for name, path in files.items():
            part = model.stage_part(name)
            state = self.stage(name).load(path)
            try:
                part.load_state_dict(state)
            except (RuntimeError, KeyError, TypeError) as exc:
                first = " ".join(str(exc).split())[:300]  # torch's message spans many lines
                raise MsnError(path, f"weights do not fit model.json: {first}") from exc
        self.loaded = files
        return model.to(device).eval(), tuple(files)


_digests: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file (remembered per path, size and modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def load_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` on CPU, with a one-line error for a bad file."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise MsnError(path, "no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles; our error says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MsnError(path, f"not a loadable msn checkpoint (refused: {first[:200]})") from exc


def read_history(file: Path) -> list[dict[str, Any]]:
    """The records of a ``history.jsonl``: one JSON object per line (blank lines skipped),
    ``epoch`` counted from 1 (the line's rank where a record lacks it). A bad line is a
    one-line error naming the file and the line."""
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MsnError(file, f"unreadable history: {exc}") from None
    records: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MsnError(file, f"line {n}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise MsnError(file, f"line {n}: not a JSON object")
        epoch = record.get("epoch", len(records) + 1)
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise MsnError(file, f"line {n}: epoch {epoch!r} is not a whole number")
        records.append({**record, "epoch": epoch})
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MsnError(path, f"unreadable JSON: {exc}") from exc
