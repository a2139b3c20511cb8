"""The data stage before splitting: make the dataset present, verified and fingerprinted.

CIFAR: download, checksum and extract (once). Image folders: decode every file once, drop or
reject unreadable ones, and write a manifest of the usable samples (train, and the validation
and test folders when there are any) and their sizes beside the data, so later stages never
decode the whole folder again. Each is its format's ``prepare`` (``cifar_lit.data.formats``).
"""

from __future__ import annotations

from pathlib import Path

from cifar_lit.data.common import derived_dir
from cifar_lit.data.formats import DataRef, Source, get_format

__all__ = ["DataRef", "cache_dir", "prepare_data"]


def cache_dir(data_dir: Path) -> Path:
    """Where derived files (manifests, split files, tensor caches) live: beside the data they
    derive from, or in the user's cache when the data is read-only (``derived_dir``)."""
    return derived_dir(Path(data_dir))


def prepare_data(
    dataset: str,
    data_dir: Path,
    download_url: str | None = None,
    download_md5: str | None = None,
    bad_images: str = "skip",
    exclude=(),
    val_dir: Path | None = None,
    test_dir: Path | None = None,
) -> DataRef:
    """``exclude``: paths the run writes to (its output dir). An image folder refuses one inside
    its train/, val/ or test/, where the run's files would be read as a class on the next scan.
    ``val_dir``/``test_dir`` (image folders): other validation/test folders than DIR/val and
    DIR/test, absolute or relative to ``data_dir`` (``cifar_lit.data.imagefolder.find_layout``)."""
    source = Source(Path(data_dir).resolve(), download_url, download_md5, bad_images, tuple(exclude), val_dir, test_dir)
    return get_format(dataset).prepare(source)
