"""How the CLI talks: the error convention, warnings, and the --debug state.

Shared by every command module; no torch, no stages.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback

import typer

from msn_cli.errors import MsnError

state = {"debug": False}
log = logging.getLogger("msn")


def reported(fn):
    """Turn expected failures into one line on stderr and an exit code (traceback: --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MsnError as exc:
            if state["debug"]:
                traceback.print_exc()
            error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:  # unwritable output, disk full, ...: the file and the reason
            if state["debug"]:
                traceback.print_exc()
            error(os_error_message(exc))
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: still one line unless --debug
            if state["debug"]:
                raise
            error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)")
            raise typer.Exit(1) from None

    return wrapper


def os_error_message(exc: OSError) -> str:
    """``<file>: <reason>`` of a failed read or write (e.g. ``m.tif: No space left on device``).

    Example:
        >>> os_error_message(OSError(27, "File too large", "ck/meta/last.pt"))
        'ck/meta/last.pt: File too large'
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def error(message: str) -> None:
    sys.stderr.write(f"msn: error: {message}\n")
    sys.stderr.flush()


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"msn: {record.levelname.lower()}: {record.getMessage()}"
        return record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it per invocation)."""

    _msn = True

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Formatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging() -> None:
    if not any(getattr(h, "_msn", False) for h in log.handlers):
        log.addHandler(_StderrHandler())
    # tifffile logs parser complaints about broken files; our error line already names them.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    log.setLevel(logging.INFO)
    log.propagate = False
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        log.warning("%s", message)

    warnings.showwarning = show
