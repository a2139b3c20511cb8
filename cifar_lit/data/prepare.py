"""The data stage before splitting: make the dataset present, verified and fingerprinted.

CIFAR: download, checksum and extract (once). Image folders: decode every file once, drop or
reject unreadable ones, and write a manifest of the usable samples (train, and the validation
and test folders when there are any) and their sizes beside the data, so later stages never
decode the whole folder again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cifar_lit.atomic import write_json_atomic
from cifar_lit.data.cifar import SOURCES, cifar_classes, download_cifar
from cifar_lit.data.imagefolder import CACHE_DIR, SCAN_FORMAT, scan_imagefolder


@dataclass(frozen=True)
class DataRef:
    """A prepared dataset: small, picklable, safe to pass between Prefect tasks."""

    dataset: str
    folder: Path  # the extracted CIFAR folder, or the image folder root
    fingerprint: str  # content hash: the verified archive md5, or a hash of every image's bytes
    classes: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # unusable image files left out (image folders)
    manifest: Path | None = None  # image folders: the usable samples
    # (path, why) for each of ``skipped``: why a file was left out (a broken link, a
    # decompression bomb, ...). A field of its own so that ``skipped`` stays a tuple of paths.
    skipped_reasons: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def cache_dir(data_dir: Path) -> Path:
    """Where derived files (manifests, split files) live: beside the data they derive from."""
    return Path(data_dir) / CACHE_DIR


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
    data_dir = Path(data_dir).resolve()
    if dataset in SOURCES:
        md5 = (download_md5 or SOURCES[dataset].md5).lower()
        folder = download_cifar(dataset, data_dir, download_url, md5)
        fingerprint = hashlib.sha256(f"{dataset}:{md5}".encode()).hexdigest()
        return DataRef(dataset, folder, fingerprint, tuple(cifar_classes(folder, dataset)))
    scan = scan_imagefolder(data_dir, bad_images, exclude, val_dir, test_dir)
    # Written on every scan, so a deleted manifest is back as soon as the stage runs again. Its
    # name is the fingerprint, which covers which folder plays which part.
    manifest = cache_dir(data_dir) / f"manifest-{scan.fingerprint[:16]}.json"
    # "sizes": part -> [width, height] of each sample of that part, in order (the split's median_side).
    write_json_atomic(manifest, {"format": SCAN_FORMAT, "classes": scan.classes, "train": scan.train,
                                 "val": scan.val, "test": scan.test, "val_folder": scan.val_folder,
                                 "test_folder": scan.test_folder, "skipped": scan.skipped_reasons,
                                 "sizes": scan.sizes})
    return DataRef(dataset, data_dir, scan.fingerprint, tuple(scan.classes), tuple(scan.skipped), manifest,
                   tuple(tuple(pair) for pair in scan.skipped_reasons))
