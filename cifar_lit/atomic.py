"""Write a file whole or not at all: through a temporary file beside it and a rename, so a crash
never leaves half a file for the next reader (split files, manifests, summaries, registry cards)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj: Any, **dumps: Any) -> Path:
    """``obj`` as JSON at ``path`` (``dumps``: ``json.dumps`` options, e.g. ``indent=2``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, **dumps))
    os.replace(tmp, path)
    return path
