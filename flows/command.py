"""What the flows' command lines share: Prefect settings chosen before Prefect is imported, and
failures the user can act on shown as one line, without tracebacks.

Imports nothing heavy: the flows import it first, so ``--help`` and flag errors answer before
Prefect, torch or W&B are loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# How Prefect's RuntimeError starts when its temporary server does not answer in time.
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def prefect_defaults() -> None:
    """Defaults for settings the user has not set (call before importing Prefect)."""
    # Without PREFECT_API_URL, Prefect starts a temporary API server; on a busy 2-core machine it
    # can take longer than Prefect's default 20 s to answer, which would crash the run before it
    # starts.
    os.environ.setdefault(STARTUP_TIMEOUT, "120")
    # The temporary server's usage telemetry fails with an ERROR line on every run without
    # internet (GPU pools, air-gapped clusters) and tells the user nothing about their run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class TemporaryAPI:
    """Prefect's temporary API server, started in a background thread as early as possible.

    Without ``PREFECT_API_URL``, the first flow call starts a local API server (a second process)
    and waits for it: about 8 s on a 2-core machine, after this process's own imports of torch
    and Lightning (about 7 s). Started here, right after the flags are parsed, the server boots
    on the other core while this process imports; the flow then finds it running (Prefect keeps
    one server per process). ``wait()`` before the first flow call; it re-raises a failed start.
    """

    def __init__(self) -> None:
        import threading

        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return  # a configured server (or none allowed): nothing to start
        # Imported here, in this thread: importing it concurrently with torch could deadlock
        # on a circular import between the two threads.
        from prefect.server.api.server import SubprocessASGIServer

        self.thread = threading.Thread(target=self._start, args=(SubprocessASGIServer(),), daemon=True,
                                       name="prefect-temporary-api")
        self.thread.start()

    def _start(self, server) -> None:
        try:
            server.start()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by wait()
            self.error = e

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def one_line_errors() -> tuple[type[BaseException], ...]:
    """Failures whose message already says what went wrong and what to do: a traceback adds
    nothing for the user (the Prefect UI still gets it)."""
    from cifar_lit.callbacks import NonFiniteLossError
    from cifar_lit.data.cifar import DownloadError, HTTPDownloadError
    from cifar_lit.data.imagefolder import DataError
    from cifar_lit.machine import MachineError
    from cifar_lit.model_file import ModelFileError
    from cifar_lit.registry import RegistryError
    from cifar_lit.rundir import OutputDirError

    return (DownloadError, HTTPDownloadError, DataError, MachineError, ModelFileError, RegistryError,
            OutputDirError, NonFiniteLossError)


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
    try:
        return run()
    except errors as e:
        _exit(prog, e)
    except RuntimeError as e:
        if not str(e).startswith(EPHEMERAL_TIMEOUT):
            raise
        _exit(prog, RuntimeError(
            "Prefect's temporary API server did not answer within "
            f"{os.environ.get(STARTUP_TIMEOUT, '?')} s ({STARTUP_TIMEOUT}); set a larger value, or start a server "
            "(prefect server start) and point PREFECT_API_URL at it"))


def _exit(prog: str, error: BaseException) -> NoReturn:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)
