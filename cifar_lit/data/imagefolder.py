"""Image-folder datasets: ``DIR/train/<class>/*`` and an optional ``DIR/test/<class>/*``.

Class names are the folder names under ``train/``, sorted. Every file is decoded once while
scanning; a file PIL cannot read is skipped with a warning (``bad_images="skip"``, the default:
one corrupt file should not cost a nightly retrain) or stops the scan with an error naming it
(``"error"``). Skipped files are counted in the run summary. Hidden files and folders are ignored.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)
SIZE = 32


class DataError(ValueError):
    """The dataset on disk cannot be used; the message names the file or folder."""


@dataclass
class Scan:
    classes: list[str]
    train: list[tuple[str, int]]  # (path relative to DIR, label)
    test: list[tuple[str, int]] | None  # None: no test/ folder
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def list_classes(root: Path) -> list[str]:
    train = root / "train"
    classes = _visible([e.name for e in os.scandir(train) if e.is_dir()]) if train.is_dir() else []
    if not classes:
        raise DataError(f"data_dir: {train} holds no class folders (expected {train}/<class>/<image>)")
    return classes


def stat_signature(root: Path) -> str:
    """Cheap hash of names, sizes and mtimes: changes whenever a file is added, removed or edited."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        for dirpath, dirnames, files in os.walk(root / split):
            dirnames[:] = _visible(dirnames)
            for name in _visible(files):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{os.path.relpath(dirpath, root)}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _readable(path: Path) -> bytes | None:
    data = path.read_bytes()
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return data


def _scan_split(root: Path, split: str, classes: list[str], bad: str, h, skipped: list[str]):
    samples = []
    for label, name in enumerate(classes):
        folder = root / split / name
        files = _visible([e.name for e in os.scandir(folder) if e.is_file()]) if folder.is_dir() else []
        if split == "train" and not files:
            raise DataError(f"data_dir: class folder {folder} is empty")
        for fname in files:
            rel = f"{split}/{name}/{fname}"
            data = _readable(root / rel)
            if data is None:
                if bad == "error":
                    raise DataError(f"{root / rel}: not a readable image")
                log.warning("skipping %s: not a readable image", root / rel)
                skipped.append(rel)
                continue
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            samples.append((rel, label))
    return samples


def scan_imagefolder(root: Path, bad_images: str = "skip") -> Scan:
    """Decode every image once; return the usable samples and a content fingerprint."""
    root = Path(root)
    classes = list_classes(root)
    if (root / "test").is_dir():
        extra = set(_visible([e.name for e in os.scandir(root / "test") if e.is_dir()])) - set(classes)
        if extra:
            raise DataError(f"data_dir: {root / 'test'} has classes missing from train/: {', '.join(sorted(extra))}")
    h, skipped = hashlib.sha256(), []
    train = _scan_split(root, "train", classes, bad_images, h, skipped)
    test = _scan_split(root, "test", classes, bad_images, h, skipped) if (root / "test").is_dir() else None
    if not train:
        raise DataError(f"data_dir: {root / 'train'} holds no readable images")
    if test is not None and not test:
        raise DataError(f"data_dir: {root / 'test'} holds no readable images")
    if skipped:
        log.warning("skipped %d unreadable file(s) under %s", len(skipped), root)
    return Scan(classes, train, test, skipped, h.hexdigest())


def load_rgb32(path: Path) -> Image.Image:
    """Any PIL-readable image as 32x32 RGB: greyscale, palette and RGBA become RGB, and other
    sizes are resized (bilinear, aspect ratio not kept) to the 32x32 the models expect."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.BILINEAR)
        return im
