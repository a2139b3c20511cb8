"""Seeded train/val(/test) splits, saved as a JSON indices file that every later stage reuses.

Same data fingerprint + same sizes + same seed => the same file, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from cifar_lit.data.cifar import load_cifar
from cifar_lit.data.imagefolder import DataError
from cifar_lit.data.prepare import DataRef, cache_dir, write_json_atomic


def resolve_count(size: int | float, n: int, name: str, allow_zero: bool = False) -> int:
    """A count, or a fraction of ``n``, checked to leave images on both sides (or, with
    ``allow_zero``, to take none: a run without a validation split).

    >>> resolve_count(0.1, 50, "val_size"), resolve_count(5, 50, "val_size"), resolve_count(0, 50, "val_size", True)
    (5, 5, 0)
    """
    k = round(size * n) if isinstance(size, float) else int(size)
    if k == 0 and allow_zero:
        return 0
    if not 0 < k < n:
        raise DataError(f"{name}: {size} leaves no images on one side of a split of {n} images")
    return k


def seeded_permutation(n: int, seed: int) -> list[int]:
    """``torch.randperm`` with its own generator, as Lightning's examples seed ``random_split``.

    >>> seeded_permutation(5, seed=0) == seeded_permutation(5, seed=0)
    True
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def split_fingerprint(content: str, val_size: int | float, test_size: int | float | None, seed: int) -> str:
    """The data fingerprint of a run: the dataset's content plus the split parameters.

    >>> len(split_fingerprint("abc", 5000, None, 42))
    16
    """
    return hashlib.sha256(f"{content}|{val_size}|{test_size}|{seed}".encode()).hexdigest()[:16]


def _fingerprint(ref: DataRef, val_size: int | float, test_size: int | float, seed: int) -> str:
    # test_size only shapes image-folder splits (CIFAR has an official test set).
    return split_fingerprint(ref.fingerprint, val_size, test_size if ref.manifest else None, seed)


def split_file_path(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path) -> Path:
    """Where ``make_split`` writes (or wrote) this split: named by its data fingerprint."""
    return cache_dir(data_dir) / f"split-{_fingerprint(ref, val_size, test_size, seed)}.json"


def make_split(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path) -> Path:
    """Write the split file for ``ref`` into the data cache and return its path."""
    if ref.manifest is not None:
        manifest = json.loads(Path(ref.manifest).read_text())
        pool = manifest["train"]
        samples = pool + (manifest["test"] or [])
        held_out = manifest["test"] is None
    else:
        pool = load_cifar(ref.folder, ref.dataset, train=True)[1]
        samples, held_out = None, False
    n = len(pool)
    perm = seeded_permutation(n, seed)
    n_test = resolve_count(test_size, n, "test_size") if held_out else 0
    n_val = resolve_count(val_size, n - n_test, "val_size", allow_zero=True)
    test = sorted(perm[:n_test]) if held_out else (list(range(n, len(samples))) if samples is not None else None)
    fp = _fingerprint(ref, val_size, test_size, seed)
    doc = {
        "version": 1,
        "dataset": ref.dataset,
        "data_fingerprint": fp,
        "content_fingerprint": ref.fingerprint,
        "seed": seed,
        "val_size": val_size,
        "test_size": test_size if ref.manifest else None,
        "classes": list(ref.classes),
        "skipped": list(ref.skipped),
        "train": sorted(perm[n_test + n_val :]),
        "val": sorted(perm[n_test : n_test + n_val]),
        # CIFAR: None = the official test batch. Image folders: indices into "samples".
        "test": test,
        "samples": samples,
    }
    if len(doc["train"]) == 0:
        raise DataError(f"val_size: {val_size} leaves no training images out of {n}")
    return write_json_atomic(split_file_path(ref, val_size, test_size, seed, data_dir), doc)


def read_split(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable split file ({e})") from e
    if doc.get("version") != 1 or not {"train", "val", "test", "classes"} <= doc.keys():
        raise DataError(f"{path}: not a split file written by cifar_lit")
    return doc


def stage_split(split_file: Path, output_dir: Path) -> Path:
    """Copy the split into the run's output dir (``split.json``), the file fit and test read.

    A retried run finds the identical file already there; a different one is never overwritten.
    """
    dest = Path(output_dir) / "split.json"
    if dest.exists():
        if dest.read_bytes() != Path(split_file).read_bytes():
            raise DataError(f"{dest}: holds a different split; use a new --output-dir")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".split.json.tmp")
    shutil.copyfile(split_file, tmp)
    tmp.replace(dest)
    return dest
