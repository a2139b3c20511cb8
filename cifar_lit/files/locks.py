"""Locks between processes, with a time limit and the holder's name.

``filelock.FileLock`` takes an ``flock`` on the lock file, which the kernel releases when the
holding process exits, however it exits (SIGKILL included): a dead local holder never leaves a
lock held, so there is no stale lock to break. What remains is a holder that is alive but stuck
(a hung NFS client, a paused process): waiting for it forever would block every later run
without a word, so a wait ends after ``CIFAR_LIT_LOCK_TIMEOUT`` seconds (300 by default) with one
line that names the holder. The holder writes who it is (pid, host, since when) beside the lock,
in ``<lock>.holder``, while it holds it; a note left by a holder that died is overwritten by the
next one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from cifar_lit.errors import UserError
from cifar_lit.files.atomic import write_json_atomic

log = logging.getLogger(__name__)

TIMEOUT_ENV = "CIFAR_LIT_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


class LockTimeoutError(UserError, TimeoutError):
    """Another process held a lock for longer than the time limit; the message names it."""


class SettingError(UserError, ValueError):
    """An environment variable of this project holds a value it cannot use; the message names it."""


def env_seconds(name: str, default: float, zero_ok: bool = False) -> float:
    """Seconds from the environment variable ``name``, else ``default``; anything but a finite
    number (above 0, or from 0 with ``zero_ok``) is a one-line ``SettingError`` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 <= value if zero_ok else 0 < value) or value == math.inf:
        least = "0 or more" if zero_ok else "more than 0"
        raise SettingError(f"{name}: {raw!r} is not a number of seconds ({least})")
    return value


def lock_timeout() -> float:
    """Seconds a lock is waited for: ``CIFAR_LIT_LOCK_TIMEOUT``, else 300."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT, zero_ok=True)


def holder_note(path: Path) -> Path:
    return Path(f"{path}.holder")


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its note says."""
    try:
        note = json.loads(holder_note(path).read_text())
        return f"pid {int(note['pid'])} on {note['host']} since {note['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no note"


@contextmanager
def exclusive(path: Path, what: str, timeout: float | None = None, waiting: str = "") -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block. ``timeout``: seconds to wait for
    another holder (None: ``lock_timeout()``; 0: fail at once); then ``LockTimeoutError``, whose
    message starts with ``what``. ``waiting`` is logged when the lock is taken by another."""
    path = Path(path)
    limit = lock_timeout() if timeout is None else timeout
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if limit == 0:
            raise LockTimeoutError(f"{what}: locked by {holder(path)} ({path})") from None
        log.info("%s (held by %s)", waiting or f"{what}: waiting for the lock {path}", holder(path))
        try:
            lock.acquire(timeout=limit)
        except Timeout:
            raise LockTimeoutError(
                f"{what}: still locked by {holder(path)} after {limit:g} s ({path}); if that process hangs, "
                f"stop it (its lock is released when it exits), or wait longer with {TIMEOUT_ENV}") from None
    note = holder_note(path)
    try:
        try:
            write_json_atomic(note, {"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": datetime.now(UTC).isoformat(timespec="seconds")})
        except OSError:  # a read-only note is only a less helpful message for the next waiter
            pass
        yield
    finally:
        with suppress(OSError):
            note.unlink(missing_ok=True)
        lock.release()
