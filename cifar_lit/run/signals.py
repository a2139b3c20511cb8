"""SIGTERM and Ctrl-C end a command-line run cleanly and within seconds.

By default SIGTERM kills Python without unwinding, so nothing registered with ``atexit`` runs:
Prefect's temporary API server (a child process) was left running as an orphan, and Ctrl-C
could wait on it for minutes. Here SIGTERM becomes ``SystemExit``: Prefect's engine, which
swaps in its own handler while a flow runs, first marks the run Crashed, then hands the signal
back to this handler; the interpreter then unwinds and stops the server. Ctrl-C takes the same
path. A finished epoch is never lost: ``last.ckpt`` is written after every epoch.
"""

from __future__ import annotations

import os
import signal


def _exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _as_sigterm(signum: int, frame) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def exit_cleanly_on_signals() -> None:
    """Install the handlers (main thread only; call it from a command's entry point)."""
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _as_sigterm)
