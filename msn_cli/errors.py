"""The one error convention of msn.

An expected failure (bad input, a missing file, an incompatible store) is raised as
:class:`MsnError`. The CLI prints it as one line ``msn: error: <file>: <problem>`` on stderr
and exits 1; a traceback is shown only with ``--debug``. Bad command-line usage is a
:class:`MsnUsageError` and exits 2.
"""

from __future__ import annotations

import os


class MsnError(Exception):
    """An expected failure that names the file (or object) at fault and the problem.

    Example:
        >>> str(MsnError("slide.svs", "not a slide OpenSlide can open"))
        'slide.svs: not a slide OpenSlide can open'
    """

    exit_code = 1

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.problem if self.path is None else f"{self.path}: {self.problem}"


class MsnUsageError(MsnError):
    """A bad command-line value (exit code 2, like Click's usage errors)."""

    exit_code = 2
