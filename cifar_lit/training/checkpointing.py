"""Checkpoints that survive crashes: atomic writes, a last-good copy, and resuming only a run's own.

Lightning writes a checkpoint by opening the target and writing into it, so a crash or a full
disk mid-write leaves a truncated ``last.ckpt`` where the previous good one was.
``AtomicCheckpointIO`` writes to a temporary file in the same folder, flushes it to disk, keeps
the previous ``last.ckpt`` as ``last.prev.ckpt`` (a hard link: no copy) and renames the new file
into place, so ``last.ckpt`` is always a whole checkpoint, the new one or the old one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from cifar_lit.files.atomic import save_atomic
from cifar_lit.lifecycle.model_file import ModelFileError, safe_load

PREVIOUS_SUFFIX = ".prev.ckpt"


def previous(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".ckpt") + PREVIOUS_SUFFIX)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)

        def keep_previous() -> None:  # the last good last.ckpt stays as last.prev.ckpt (a hard link)
            if path.name.startswith("last") and path.is_file():
                prev = previous(path)
                prev.unlink(missing_ok=True)
                os.link(path, prev)

        # A failed save (disk full) leaves the old files as they were.
        save_atomic(path, lambda tmp: torch.save(checkpoint, tmp), before_replace=keep_previous)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        previous(Path(path)).unlink(missing_ok=True)


def readable_checkpoint(path: Path) -> tuple[Path, dict] | None:
    """``path``, or its last-good copy when ``path`` is unreadable, with its contents; None when
    neither exists. Both unreadable: one ModelFileError line naming the file."""
    path = Path(path)
    candidates = [p for p in (path, previous(path)) if p.is_file()]
    if not candidates:
        return None
    errors = []
    for candidate in candidates:
        try:
            return candidate, safe_load(candidate, "checkpoint")
        except ModelFileError as e:
            errors.append(str(e))
    raise ModelFileError(errors[0] + (" (and its last-good copy)" if len(errors) > 1 else ""))
