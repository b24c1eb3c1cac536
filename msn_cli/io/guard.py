"""No output of a command may be one of its inputs: refused in one line, before any work.

``msn predict slide.tif --out slide.tif`` would replace the slide with its mask, ``--geojson``
onto the ``<stem>.geojson`` beside a slide would make the next ``tile`` train on predictions,
``evaluate --json`` onto ``--truth`` would lose the annotations. Every command names its
outputs and inputs here once; a clash is a usage error.

Example:
    >>> refuse_overwrite([("--out", Path("a.tif"))], files=[Path("b.tif")])  # no clash
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from msn_cli.errors import MsnUsageError

Output = tuple[str, "str | os.PathLike[str] | None"]


def refuse_overwrite(
    outputs: Iterable[Output],
    files: Iterable[str | os.PathLike[str] | None] = (),
    folders: Iterable[str | os.PathLike[str] | None] = (),
) -> None:
    """Refuse (:class:`MsnUsageError`, named after the output's option) an output that is one
    of the input ``files``, or one of the input ``folders`` (a patch store, experts'
    checkpoint directories, an MRXS data folder) or inside one."""
    ins = [_local(f) for f in files if f is not None and not _remote(f)]
    dirs = [_local(f) for f in folders if f is not None and not _remote(f)]
    for option, out in outputs:
        if out is None or _remote(out):
            continue
        out = _local(out)
        for f in ins:
            if same_path(out, f):
                raise MsnUsageError(
                    option, f"{out} is an input of this command; refusing to overwrite it"
                )
        for d in dirs:
            if same_path(out, d) or _inside(out, d):
                raise MsnUsageError(
                    option, f"{out} would write into the input {d}; choose another path"
                )


def same_path(a: Path, b: Path) -> bool:
    """The same file: by inode when both exist (hard links, case-folding file systems), else
    by resolved path (symbolic links, ``..``)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(a: Path, b: Path) -> bool:
    ra, rb = a.resolve(), b.resolve()
    return ra != rb and rb in ra.parents


def _local(p) -> Path:
    text = str(p)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def _remote(p) -> bool:
    return "://" in str(p) and not str(p).startswith("file://")
