"""Write a file whole or not at all: through a temporary file beside it (named with the pid, so two
processes never share one), flushed to disk, then renamed over the target, so a crash never
leaves half a file for the next reader. The one way this project writes a file another reader may
open: split files, manifests, summaries, configs, registry cards, tensor caches, checkpoints,
model files, download markers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_atomic(path: Path, save: Callable[[Path], Any], before_replace: Callable[[], Any] | None = None) -> Path:
    """``save(tmp)`` writes the file at a temporary path beside ``path`` (``torch.save``, ...);
    it is flushed to disk, ``before_replace()`` runs (e.g. keeping the old file under another
    name), and it is renamed to ``path``. On any failure the temporary file goes and ``path`` is
    as it was. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename makes it the file (a power cut)
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, obj: Any, **dumps: Any) -> Path:
    """``obj`` as JSON at ``path`` (``dumps``: ``json.dumps`` options, e.g. ``indent=2``)."""
    text = json.dumps(obj, **dumps)  # before the temporary file: an unserialisable object leaves nothing
    return save_atomic(path, lambda tmp: tmp.write_text(text))
