"""Progress for long work: a rich bar on a terminal, plain lines in cluster logs.

Stages call :func:`progress` and never care where the output goes.

Example:
    >>> with progress("slide.svs", total=100, unit="patches") as bar:  # doctest: +SKIP
    ...     bar.advance(10)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Set by ``msn --quiet``.
QUIET = False
#: Seconds between plain progress lines when stdout is not a terminal.
PLAIN_INTERVAL = 30.0


class _Plain:
    def __init__(self, description: str, total: int, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.start = self.last = time.perf_counter()

    def advance(self, n: int = 1, **fields: object) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= PLAIN_INTERVAL:
            self.last = now
            self._line(now, fields)

    def close(self, **fields: object) -> None:
        self._line(time.perf_counter(), fields)

    def _line(self, now: float, fields: dict) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        print(
            f"{self.description}: {self.done}/{self.total} {self.unit} "
            f"({rate:.1f} {self.unit}/s, {now - self.start:.1f} s){extra}",
            flush=True,
        )


class _Rich:
    def __init__(self, description: str, total: int, unit: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.unit = unit
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="", extra="")
        self._start = time.perf_counter()
        self._done = 0

    def advance(self, n: int = 1, **fields: object) -> None:
        self._done += n
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, rate=f"{rate:.1f} {self.unit}/s", extra=extra)

    def close(self, **fields: object) -> None:
        if fields:
            self.advance(0, **fields)
        self._progress.stop()


class _Silent:
    def advance(self, n: int = 1, **fields: object) -> None:
        pass

    def close(self, **fields: object) -> None:
        pass


@contextmanager
def progress(description: str, total: int, unit: str = "items") -> Iterator[_Plain | _Rich]:
    """A progress reporter with ``advance(n, **fields)``; closed (final line) on exit."""
    if QUIET:
        bar: _Plain | _Rich | _Silent = _Silent()
    elif sys.stdout.isatty():
        bar = _Rich(description, total, unit)
    else:
        bar = _Plain(description, total, unit)
    try:
        yield bar  # type: ignore[misc]
    finally:
        bar.close()
