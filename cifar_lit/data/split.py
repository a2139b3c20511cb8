"""Seeded train/val(/test) splits, saved as a JSON indices file that every later stage reuses.

Same data fingerprint + same sizes + same seed => the same file, byte for byte. Each dataset
format makes its own split (``cifar_lit.data.formats``): CIFAR holds out a seeded ``val_size`` of
the training batches and tests on its official test batch; image folders validate and test on
their val/ and test/ folders, or on stratified hold-outs from train/
(``cifar_lit.data.formats.imagefolder``). A ``Split`` is the file, read and typed.
"""

from __future__ import annotations

import hashlib
import shutil
from fractions import Fraction
from pathlib import Path

import torch

from cifar_lit.data.common import DataError
from cifar_lit.data.formats import DataRef, Split, get_format  # Split: defined beside the registry it asks
from cifar_lit.data.prepare import cache_dir
from cifar_lit.files.atomic import save_atomic


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


def apportion(total: int, sizes: list[int]) -> list[int]:
    """``total`` shared out in proportion to ``sizes``, each share rounded so that they add up
    to ``total`` (largest remainders first; a tie goes to the earlier class).

    >>> apportion(6, [10, 10, 10]), apportion(5, [10, 10, 10]), apportion(3, [20, 5, 5])
    ([2, 2, 2], [2, 2, 1], [2, 1, 0])
    """
    n = sum(sizes)
    exact = [Fraction(total * s, n) for s in sizes]
    shares = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def split_fingerprint(content: str, val_size: int | float, test_size: int | float | None, seed: int) -> str:
    """The data fingerprint of a run: the dataset's content plus the split parameters.

    >>> len(split_fingerprint("abc", 5000, None, 42))
    16
    """
    return hashlib.sha256(f"{content}|{val_size}|{test_size}|{seed}".encode()).hexdigest()[:16]


def data_fingerprint(ref: DataRef, val_size: int | float, test_size: int | float, seed: int,
                     min_per_class: int | None = None) -> str:
    """The split's data fingerprint (its file's name): the data's content, as its format sees
    it, plus the split parameters."""
    content, test_size = get_format(ref.dataset).split_content(ref, val_size, test_size, seed, min_per_class)
    return split_fingerprint(content, val_size, test_size, seed)


def split_file_path(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path,
                    min_per_class: int | None = None) -> Path:
    """Where ``make_split`` writes (or wrote) this split: named by its data fingerprint."""
    return cache_dir(data_dir) / f"split-{data_fingerprint(ref, val_size, test_size, seed, min_per_class)}.json"


def make_split(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path,
               min_per_class: int | None = None) -> Path:
    """Write the split file for ``ref`` into the data cache and return its path. How the images
    are split is the format's (``DataFormat.make_split``); ``test_size`` and ``min_per_class``
    shape image-folder splits only (CIFAR has an official test set)."""
    fingerprint = data_fingerprint(ref, val_size, test_size, seed, min_per_class)
    split = get_format(ref.dataset).make_split(ref, val_size, test_size, seed, min_per_class, fingerprint)
    return split.write(split_file_path(ref, val_size, test_size, seed, data_dir, min_per_class))


def describe_split(split: Split) -> str | None:
    """One line: which images the split validates and tests on, where its format says so (image
    folders: e.g. "val: DIR/val (120 images); test: 10% of train held out, stratified (96 images)")."""
    return get_format(split.dataset).describe(split)


def data_counts(split: Split, classes: list[str], skipped=(), labels=None, test_labels=None) -> dict:
    """Image counts of a split for the run summary: ``{"train", "val", "test", "per_class":
    {class: {"train", "val", "test"}}, "skipped", "skipped_files": [[path, reason], ...]}``.
    ``skipped``: (path, reason) pairs or bare paths.

    Splits that list their images (image folders) carry their labels. Others (CIFAR) do not:
    pass ``labels`` (the training batches' labels) and ``test_labels`` (the test batch's) for
    per-class counts and the test count; without them "per_class" is empty and "test" is None.
    """
    own = get_format(split.dataset).sample_labels(split)
    labels = own if own is not None else labels
    parts = {"train": split.train, "val": split.val, "test": split.test}
    counts: dict = {part: len(idx) if idx is not None else None for part, idx in parts.items()}
    if split.test is None and test_labels is not None:
        counts["test"] = len(test_labels)
    per_class = {}
    if labels is not None:
        per_class = {name: {"train": 0, "val": 0, "test": 0} for name in classes}
        for part, idx in parts.items():
            chosen = (labels[i] for i in idx) if idx is not None else (test_labels if test_labels is not None else ())
            for label in chosen:
                per_class[classes[int(label)]][part] += 1
    pairs = [[str(s), ""] if isinstance(s, str) else [str(s[0]), str(s[1])] for s in skipped]
    return {**counts, "per_class": per_class, "skipped": len(pairs), "skipped_files": pairs}


def stage_split(split_file: Path, output_dir: Path) -> Path:
    """Copy the split into the run's output dir (``split.json``), the file fit and test read.

    A retried run finds the identical file already there; a different one is never overwritten.
    """
    dest = Path(output_dir) / "split.json"
    if dest.exists():
        if dest.read_bytes() != Path(split_file).read_bytes():
            raise DataError(f"{dest}: holds a different split; use a new --output-dir")
        return dest
    return save_atomic(dest, lambda tmp: shutil.copyfile(split_file, tmp))
