"""The checkpoint directory (docs/architecture.md, "The two contracts"): the only module that
knows its layout.

::

    checkpoints/
      model.json            architecture, classes, patch size, magnifications, trained input
      meta/   memrm/   fusion/          one folder per training stage, each with
        last.pt             everything a resume needs (weights, optimizer, epoch, RNG states)
        weights.pt          the stage's final weights (its part of the model only)
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

Example:
    >>> ck = CheckpointDir("checkpoints")  # doctest: +SKIP
    >>> ck.require("meta", "memrm"); model, stages = ck.load_model("cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from msn_cli.errors import MsnError
from msn_cli.io.atomic import atomic_write, atomic_write_json, atomic_write_text
from msn_cli.io.card import SCHEMA_VERSION, ModelCard, parse_card
from msn_cli.io.store import StoreSpec

__all__ = ["SCHEMA_VERSION", "CheckpointDir", "ModelCard", "StageDir"]
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
CONFIG = "config.json"
HISTORY = "history.jsonl"
CURVES = "curves.png"
GAP_STATS = "gap_layers.json"
GAP_FIGURE = "gap_layers.png"
CACHE = "cache"


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
        for p in (self.last, self.weights, self.config, self.history):
            if p.exists():
                p.unlink()


class CheckpointDir:
    """A checkpoint directory; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.model_json = self.path / MODEL_JSON

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
        """SHA-256 of the weights of every finished stage before ``name``: what it builds on."""
        earlier = STAGES[: STAGES.index(name)]
        return {s: weights_sha256(self.stage(s).weights) for s in earlier if self.stage(s).complete}

    def check_base(self, name: str, base: dict[str, str], where: Path | None = None) -> None:
        """Refuse stage ``name`` when an earlier stage's weights changed since it was built
        (``base``: what it recorded): it is stale, and only retraining mends it."""
        for earlier, digest in base.items():
            weights = self.stage(earlier).weights
            if not weights.is_file() or weights_sha256(weights) != digest:
                raise MsnError(
                    where or self.stage(name).dir,
                    f"stage '{name}' is stale: it was trained on other '{earlier}' weights "
                    f"({earlier}/weights.pt has changed since); retrain it with "
                    f"`{COMMANDS[name]} --restart`",
                )

    def load_model(self, device: Any = "cpu", stages: tuple[str, ...] | None = None):
        """Rebuild the model and load every finished stage's weights (or ``stages``).

        Returns ``(model, loaded_stages)``; the model is in eval mode on ``device``.
        """
        from msn_cli.models.msn import MSN

        card = self.read_card()
        try:
            model = MSN(card.config())
        except ValueError as exc:
            raise MsnError(self.model_json, f"cannot build the model: {exc}") from exc
        wanted = self.completed() if stages is None else stages
        for name in wanted:
            st = self.stage(name)
            if not st.complete:
                raise MsnError(st.dir, f"stage '{name}' has not finished; run `{COMMANDS[name]}`")
            recorded = (st.read_config() or {}).get("base")
            if isinstance(recorded, dict):
                self.check_base(name, recorded)
            part = model.stage_part(name)
            state = st.load(st.weights)
            try:
                part.load_state_dict(state)
            except (RuntimeError, KeyError, TypeError) as exc:
                first = " ".join(str(exc).split())[:300]  # torch's message spans many lines
                raise MsnError(st.weights, f"weights do not fit model.json: {first}") from exc
        return model.to(device).eval(), tuple(wanted)


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
