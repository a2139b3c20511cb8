"""A run owns its output dir: an exclusive lock while it runs, and no reuse of another run's dir.

Two runs in one output dir would resume, test and export each other's checkpoints. The lock
(``flock`` on ``<output_dir>/.lock``, released by the kernel when the process dies, even on
SIGKILL) makes the second one fail at once with one line; a dir that already holds a run's
checkpoints or summary is refused unless ``resume`` says to continue that run.
"""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputDirError(ValueError):
    """The output dir belongs to another run (or cannot be written); the message says which."""


def check_writable(folder: Path, field: str = "output_dir") -> None:
    """One line when ``folder`` cannot be created or written (under a file, a read-only mount),
    found before any work; nothing is left behind."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"{field}: {folder} cannot be created: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OutputDirError(f"{field}: {folder} is not writable ({e.strerror or e})") from None


@contextmanager
def own_output_dir(out: Path, resume: bool = False) -> Iterator[Path]:
    out = Path(out)
    if str(out).strip() in ("", "."):
        raise OutputDirError("output_dir: must name a folder for this run, not the current directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise OutputDirError(f"output_dir: {out} is not writable ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(f"output_dir: {out} is in use by another run; use a new --output-dir") from None
        earlier = (out / "summary.json").exists() or any((out / "checkpoints").glob("*.ckpt"))
        if earlier and not resume:
            raise OutputDirError(f"output_dir: {out} holds an earlier run; use a new --output-dir, "
                                 "or --resume to continue it")
        yield out
    finally:
        lock.close()  # releases the lock
