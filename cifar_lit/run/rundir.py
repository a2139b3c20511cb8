"""A run owns its output dir: an exclusive lock while it runs, and no reuse of another run's dir.

Two runs in one output dir would resume, test and export each other's checkpoints. The lock
(``<output_dir>/.lock``, ``cifar_lit.files.locks``: released by the kernel when the process dies, even
on SIGKILL) makes the second one fail at once with one line naming the holder; a dir that
already holds a run's checkpoints or summary is refused unless ``resume`` says to continue that
run. A run that fails before writing anything leaves neither the lock nor the folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cifar_lit.errors import UserError
from cifar_lit.files.locks import LockTimeoutError, exclusive, holder

LOCK = ".lock"


class OutputDirError(UserError, ValueError):
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


def check_places(config) -> None:
    """Where a training run writes can be written: its output dir (or the runs dir it goes
    under) and the registry; else one line naming the field."""
    check_writable(config.output_dir or config.runs_dir, "output_dir" if config.output_dir else "runs_dir")
    check_writable(config.registry, "registry_dir")


def check_output(out: Path) -> None:
    """One line when a CSV cannot be written at ``out``: found before the work, not after."""
    if out.is_dir():
        raise OutputDirError(f"output: {out} is a folder; name the CSV file to write, e.g. {out / 'predictions.csv'}")
    check_writable(out.parent, "output")


@contextmanager
def own_output_dir(out: Path, resume: bool = False) -> Iterator[Path]:
    out = Path(out)
    if str(out).strip() in ("", "."):
        raise OutputDirError("output_dir: must name a folder for this run, not the current directory")
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"output_dir: {out} is not writable ({e.strerror or e})") from None
    try:
        with ExitStack() as held:
            try:
                held.enter_context(exclusive(out / LOCK, "output_dir", timeout=0))
            except LockTimeoutError:
                raise OutputDirError(f"output_dir: {out} is in use by another run ({holder(out / LOCK)}); "
                                     "use a new --output-dir") from None
            except PermissionError as e:
                raise OutputDirError(f"output_dir: {out} is not writable ({e.strerror or e})") from None
            earlier = (out / "summary.json").exists() or any((out / "checkpoints").glob("*.ckpt"))
            if earlier and not resume:
                raise OutputDirError(f"output_dir: {out} holds an earlier run; use a new --output-dir, "
                                     "or --resume to continue it")
            yield out
    finally:
        _remove_if_unused(out, created)


def _remove_if_unused(out: Path, created: list[Path]) -> None:
    """A run that failed before writing anything (a bad URL, a machine check) leaves no lock file
    and no empty folders behind: while the output dir holds nothing but the lock, the lock goes,
    and so do the folders this run created. (Another run's files or lock note keep them.)"""
    try:
        if {p.name for p in out.iterdir()} - {LOCK}:
            return
        (out / LOCK).unlink(missing_ok=True)
        for folder in created:
            folder.rmdir()  # deepest first; stops at the first that is not empty
    except OSError:
        pass
