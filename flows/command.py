"""What the flows' command lines share: Prefect settings chosen before Prefect is imported, the
temporary API server waited for (``flows.temporary_api``), failures the user can act on shown as
one line without tracebacks.

Imports nothing heavy: the flows import it first, so ``--help`` and flag errors answer before
Prefect, torch or W&B are loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import NoReturn, TypeVar

from flows.temporary_api import EPHEMERAL_TIMEOUT, STARTUP_TIMEOUT, prefect_defaults, started

T = TypeVar("T")

# Set by the ``cifar-lit`` command (flows.main) to the name the user typed, e.g. "cifar-lit train".
PROGRAM: str | None = None


def program(script: str) -> str:
    """The command's name in its help and errors: ``cifar-lit <command>``, or the script's."""
    return PROGRAM or script

__all__ = ["prefect_defaults", "program", "check_prefect", "check_install", "run_or_exit"]


def check_prefect(prog: str) -> None:
    """Before a run starts: the Prefect API it will use can be used, else one line, exit 1.

    ``PREFECT_API_URL`` set: it must answer ``/health`` as a Prefect server does (a dead port or
    another kind of server was 60 to 110 lines of traceback). Unset (Prefect's temporary server,
    whose database lives under ``PREFECT_HOME``): that folder must be writable (it ended with a
    false "did not answer within 120 s")."""
    import urllib.error
    import urllib.request

    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if not url:
        home = os.environ.get("PREFECT_HOME") or os.path.join(os.path.expanduser("~"), ".prefect")
        from cifar_lit.run.rundir import OutputDirError, check_writable

        try:
            check_writable(home, "PREFECT_HOME")
        except OutputDirError as e:
            _exit(prog, RuntimeError(f"{e}; Prefect's temporary API server keeps its database there: set PREFECT_HOME "
                                     "to a writable folder, or PREFECT_API_URL to a running server"))
        return
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            body = response.read(100).strip()
        if body != b"true":
            raise ValueError(f"it answered /health with {body[:40]!r}, not as a Prefect server")
    except urllib.error.HTTPError as e:
        problem = f"it answered /health with HTTP {e.code}, not as a Prefect server"
    except (urllib.error.URLError, OSError) as e:
        problem = f"nothing answers there ({getattr(e, 'reason', e)})"
    except ValueError as e:
        problem = str(e)
    else:
        return
    _exit(prog, RuntimeError(f"PREFECT_API_URL: {url}: {problem}; start the server (prefect server start), "
                             "correct the URL (it ends in /api), or unset it to use a temporary server"))


def refuse_early(prog: str, check: Callable[[], None]) -> None:
    """``check()``, a cheap check of the flags (a place that cannot be written), before the
    temporary API server starts or torch loads: its ``UserError`` is the command's one line,
    ``prog: error: --field: ...``, exit 2, as a bad flag's."""
    from cifar_lit.cli import fail, flag
    from cifar_lit.errors import UserError

    try:
        check()
    except UserError as e:
        field, _, message = str(e).partition(": ")
        fail(prog, f"{flag(field)}: {message}")


def check_install(prog: str) -> None:
    """torch and torchvision load together, else one line that says how to reinstall them, exit 1.

    torch and torchvision installed from different indexes (a CUDA torch beside a CPU
    torchvision, or versions that were not built together) fail on import with
    ``operator torchvision::nms does not exist`` or an undefined symbol, which every command
    would otherwise end with as a 48-line traceback."""
    try:
        import torch
        import torchvision  # noqa: F401 - its import registers the operators that fail
    except (ImportError, RuntimeError, OSError, AttributeError) as e:
        versions = _installed("torch", "torchvision")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        _exit(prog, RuntimeError(
            f"torch and torchvision cannot be loaded together ({versions}: {first}); reinstall both from one index, "
            "e.g. pip install --force-reinstall torch torchvision (add the same --index-url to both for CUDA builds)"))
    del torch


def _installed(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def one(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} not installed"

    return ", ".join(one(n) for n in names)


def one_line_errors() -> tuple[type[BaseException], ...]:
    """Failures whose message already says what went wrong and what to do (``UserError``): a
    traceback adds nothing for the user (the Prefect UI still gets it)."""
    from cifar_lit.errors import UserError

    return (UserError,)


def one_copy_of_lightning_lines() -> None:
    """Lightning prints its INFO lines through a handler of its own, and they reach Prefect's
    console (and the Prefect UI) as well: every line twice. Prefect's copy is kept."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's own, added when it was imported
                logger.removeHandler(handler)
    # The fit's INFO lines (the network and precision, one line per epoch off a terminal) reach
    # Prefect's console too, whose root logger shows warnings only. (The data's and the
    # recipe's the flow logs itself.)
    logging.getLogger("cifar_lit.training").setLevel(logging.INFO)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, leaving out the traceback of a one-line error. The
    record itself is restored, so other handlers (Prefect's API log) still get the traceback."""

    def __init__(self, inner: logging.Formatter | None, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.errors = errors

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, self.errors):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def quiet_console_tracebacks(errors: tuple[type[BaseException], ...]) -> None:
    """Prefect's console handlers print one-line errors without their traceback (call after
    Prefect is imported: importing it configures logging)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        if not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter, errors))


def run_or_exit(prog: str, run: Callable[[], T]) -> T:
    """``run()``; a one-line error ends the command with ``prog: error: <message>`` and exit 1."""
    errors = one_line_errors()
    quiet_console_tracebacks(errors)
    one_copy_of_lightning_lines()
    api = started()
    try:
        with api.serving() if api is not None else nullcontext():
            return run()
    except errors as e:
        _exit(prog, e)
    except RuntimeError as e:
        if not str(e).startswith(EPHEMERAL_TIMEOUT):
            raise
        if "exited with code" in str(e):  # it died: no timeout would have helped
            home = os.environ.get("PREFECT_HOME") or "~/.prefect"
            detail = str(e).removeprefix(EPHEMERAL_TIMEOUT).strip(" .").replace("Ephemeral server process ", "")
            _exit(prog, RuntimeError(
                f"Prefect's temporary API server {detail} before it answered; it keeps its database under "
                f"PREFECT_HOME ({home}): check that the folder is writable, its disk has room and no file-size limit "
                "(ulimit -f) stops it, or set PREFECT_API_URL to a running server"))
        _exit(prog, RuntimeError(
            "Prefect's temporary API server did not answer within "
            f"{os.environ.get(STARTUP_TIMEOUT, '?')} s ({STARTUP_TIMEOUT}); set a larger value, or start a server "
            "(prefect server start) and point PREFECT_API_URL at it"))


def _exit(prog: str, error: BaseException) -> NoReturn:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)
