"""CIFAR-10/100: download with torchvision's downloader, verify, extract safely, load the pickles.

The archive is fetched to ``<file>.part`` and renamed only once its md5 matches, then extracted
into a fresh temporary folder with tarfile's ``data`` filter (no member can land outside the data
root: absolute paths, ``..`` and links out are refused) and moved into place. A corrupt download
therefore never touches data that was already extracted.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import calculate_md5, download_url

MARKER = ".verified-md5"


@dataclass(frozen=True)
class CifarSource:
    url: str
    filename: str
    md5: str
    base_folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # key of the labels inside each batch
    names_key: str  # key of the class names inside the meta file


def _source(cls: type[CIFAR10]) -> CifarSource:
    fine = cls is CIFAR100
    return CifarSource(
        url=cls.url,
        filename=cls.filename,
        md5=cls.tgz_md5,
        base_folder=cls.base_folder,
        train_files=tuple(name for name, _ in cls.train_list),
        test_files=tuple(name for name, _ in cls.test_list),
        meta_file=cls.meta["filename"],
        label_key="fine_labels" if fine else "labels",
        names_key=cls.meta["key"],
    )


SOURCES: dict[str, CifarSource] = {"cifar10": _source(CIFAR10), "cifar100": _source(CIFAR100)}


def is_ready(folder: Path, md5: str) -> bool:
    """True when ``folder`` was extracted from the archive with this md5."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == md5


def download_cifar(dataset: str, root: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch, verify and extract ``dataset`` under ``root``; return the extracted folder.

    Does nothing when the folder is already there and was extracted from an archive with the
    expected checksum, so a second call makes no network request.
    """
    src = SOURCES[dataset]
    url, md5 = url or src.url, (md5 or src.md5).lower()
    root = Path(root)
    folder = root / src.base_folder
    if is_ready(folder, md5):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / src.filename
    if not (archive.is_file() and calculate_md5(archive) == md5):
        _fetch(url, root, src.filename, md5)
    _extract(archive, root, src.base_folder, md5)
    return folder


def _fetch(url: str, root: Path, filename: str, md5: str) -> None:
    part = root / f"{filename}.part"
    part.unlink(missing_ok=True)
    try:
        download_url(url, str(root), filename=part.name, md5=None)
    except Exception:
        part.unlink(missing_ok=True)
        raise
    got = calculate_md5(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{filename}: checksum mismatch (expected md5 {md5}, got {got}) downloading {url}")
    os.replace(part, root / filename)


class ChecksumError(RuntimeError):
    """The downloaded archive is not the one expected; nothing was extracted."""


def _extract(archive: Path, root: Path, base_folder: str, md5: str) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        new = Path(tmp) / base_folder
        if not new.is_dir():
            raise ChecksumError(f"{archive.name}: archive holds no {base_folder}/ folder")
        (new / MARKER).write_text(md5 + "\n")
        dest = root / base_folder
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(new, dest)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar(folder: Path, dataset: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 ``(N, 32, 32, 3)`` and labels as int64 ``(N,)``, in the archive's order."""
    src = SOURCES[dataset]
    images, labels = [], []
    for name in src.train_files if train else src.test_files:
        batch = _unpickle(Path(folder) / name)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[src.label_key])
    return np.concatenate(images).transpose(0, 2, 3, 1).copy(), np.asarray(labels, dtype=np.int64)


def cifar_classes(folder: Path, dataset: str) -> list[str]:
    src = SOURCES[dataset]
    return list(_unpickle(Path(folder) / src.meta_file)[src.names_key])
