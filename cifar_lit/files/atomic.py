"""Write a file whole or not at all: through a temporary file beside it and a rename, so a crash
never leaves half a file for the next reader (split files, manifests, summaries, registry cards,
tensor caches)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_atomic(path: Path, save: Callable[[Path], Any]) -> Path:
    """``save(tmp)`` writes the file at a temporary path beside ``path`` (``torch.save``, ...);
    then it is renamed to ``path``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, obj: Any, **dumps: Any) -> Path:
    """``obj`` as JSON at ``path`` (``dumps``: ``json.dumps`` options, e.g. ``indent=2``)."""
    text = json.dumps(obj, **dumps)  # before the temporary file: an unserialisable object leaves nothing
    return save_atomic(path, lambda tmp: tmp.write_text(text))
