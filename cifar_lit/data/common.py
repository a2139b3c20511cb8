"""What every part of the data package shares: the image side, where derived files live, what a
run's output dir holds, the data's one-line error, and paths shown safely in messages."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cifar_lit.errors import UserError

SIZE = 32  # CIFAR's side, and the side of image-folder images while no image_size is set
CACHE_DIR = ".cifar_lit"  # derived files beside the data (cifar_lit.data.prepare.cache_dir)
CACHE_ENV = "CIFAR_LIT_CACHE"  # the user's cache (also the machine probe's): derived files of read-only data


def derived_dir(root: Path) -> Path:
    """Where the files derived from the data under ``root`` live (manifests, split files, tensor
    caches, the cache id): ``root/.cifar_lit``, beside the data; where ``root`` cannot be written
    (a read-only mount or share), a folder of its own in the user's cache (``CIFAR_LIT_CACHE``,
    else ``~/.cache/cifar_lit``), named by ``root``'s resolved path, so read-only data still
    trains. A ``root`` that does not exist yet (CIFAR before its download) is created beside."""
    root = Path(root)
    beside = root / CACHE_DIR
    if not root.is_dir() or os.access(beside if beside.is_dir() else root, os.W_OK):
        return beside
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar_lit"
    return Path(base) / "data" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


# What a run's output dir holds (cifar_lit.run.rundir takes .lock before anything else is written).
RUN_FILES = frozenset({".lock", "summary.json", "split.json", "checkpoints"})


class DataError(UserError, ValueError):
    """The dataset on disk cannot be used; the message names the file or folder."""


def shown(path) -> str:
    """A path as text that is always valid UTF-8 (for messages, JSON and W&B): the bytes of a
    name that is not UTF-8 appear as \\xNN escapes instead of lone surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
