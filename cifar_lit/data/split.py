"""Seeded train/val(/test) splits, saved as a JSON indices file that every later stage reuses.

Same data fingerprint + same sizes + same seed => the same file, byte for byte.

CIFAR: a seeded ``val_size`` of the training batches is held out for validation; the official
test batch is the test set. Image folders: see ``make_split`` (which folder is validated and
tested, and the stratified hold-outs from train/).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import torch

from cifar_lit.atomic import write_json_atomic
from cifar_lit.data.cifar import load_cifar
from cifar_lit.data.imagefolder import SCAN_FORMAT, DataError, median_side
from cifar_lit.data.prepare import DataRef, cache_dir

log = logging.getLogger(__name__)
CIFAR_SPLIT_VERSION = 1  # unchanged since version 1, so CIFAR fingerprints (and the registry's matches) hold
# 2: stratified hold-outs, val/ folders, nested images, min_per_class. Version 1 image-folder
# splits are refused by ``read_split`` and never reused: their fingerprint lacks the version.
# 3: "median_side", the median shorter side of the train images (the default image size's input).
# Version 2 files lack it and are refused too; the version is in the fingerprint, so in the name.
FOLDER_SPLIT_VERSION = 3


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


def _fingerprint(ref: DataRef, val_size: int | float, test_size: int | float, seed: int,
                 min_per_class: int | None = None) -> str:
    if ref.manifest is None:  # test_size only shapes image-folder splits (CIFAR has an official test set)
        return split_fingerprint(ref.fingerprint, val_size, None, seed)
    content = f"{ref.fingerprint}|split version {FOLDER_SPLIT_VERSION}|min_per_class {min_per_class}"
    return split_fingerprint(content, val_size, test_size, seed)


def split_file_path(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path,
                    min_per_class: int | None = None) -> Path:
    """Where ``make_split`` writes (or wrote) this split: named by its data fingerprint."""
    return cache_dir(data_dir) / f"split-{_fingerprint(ref, val_size, test_size, seed, min_per_class)}.json"


def make_split(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path,
               min_per_class: int | None = None) -> Path:
    """Write the split file for ``ref`` into the data cache and return its path.

    Image folders. Validation: the validation folder (``val/``, ``valid/``, ``validation/`` or
    ``--val-dir``) when there is one (``val_size`` is then unused), else a held-out ``val_size``
    of train/ (none when it is 0). Test: the test folder (``test/`` or ``--test-dir``) when
    there is one, else a held-out ``test_size`` of train/ -- also when there is a validation
    folder: the model is never tested on the images that chose its checkpoint. Hold-outs are
    seeded and stratified: each class gives the same fraction (shares rounded per class so they
    add up to the size asked for, test first, then val from the rest), at least one image to
    every held-out split, and keeps at least one for training. A class too small for that is a
    ``DataError``; ``min_per_class`` N first leaves out, with a warning, classes with fewer
    than N images in train/ (their val/test images go too, and the labels are renumbered).
    Logs one line saying what is validated and tested.
    """
    if ref.manifest is None:
        return _cifar_split(ref, val_size, seed, data_dir)
    return _folder_split(ref, val_size, test_size, seed, data_dir, min_per_class)


def _cifar_split(ref: DataRef, val_size: int | float, seed: int, data_dir: Path) -> Path:
    n = len(load_cifar(ref.folder, ref.dataset, train=True)[1])
    perm = seeded_permutation(n, seed)
    n_val = resolve_count(val_size, n, "val_size", allow_zero=True)
    doc = {
        "version": CIFAR_SPLIT_VERSION,
        "dataset": ref.dataset,
        "data_fingerprint": _fingerprint(ref, val_size, None, seed),
        "content_fingerprint": ref.fingerprint,
        "seed": seed,
        "val_size": val_size,
        "test_size": None,
        "classes": list(ref.classes),
        "skipped": list(ref.skipped),
        "train": sorted(perm[n_val:]),
        "val": sorted(perm[:n_val]),
        "test": None,  # the official test batch
        "samples": None,
    }
    if len(doc["train"]) == 0:
        raise DataError(f"val_size: {val_size} leaves no training images out of {n}")
    return write_json_atomic(split_file_path(ref, val_size, None, seed, data_dir), doc)


def _leave_out(classes: list[str], counts: Counter, min_per_class: int | None) -> dict[str, int]:
    left_out = {name: counts[c] for c, name in enumerate(classes) if min_per_class and counts[c] < min_per_class}
    if left_out:
        log.warning("min_per_class %d: leaving out %d class(es) with fewer images in train/: %s", min_per_class,
                    len(left_out), ", ".join(f"{name} ({n})" for name, n in left_out.items()))
        if len(classes) - len(left_out) < 2:
            raise DataError(f"min_per_class: {min_per_class} leaves {len(classes) - len(left_out)} class(es); "
                            "a classifier needs at least two")
    return left_out


def _check_sizes(classes: list[str], sizes: list[int], held_out: list[str]) -> None:
    need = 1 + len(held_out)
    small = [f"{name} ({n} image{'s' if n != 1 else ''})" for name, n in zip(classes, sizes) if n < need]
    if small:
        parts = " and ".join(["train", *held_out])
        raise DataError(f"data_dir: too few images in train/ for {parts} (each class needs {need}): {', '.join(small)}; "
                        f"add images or {'/'.join(held_out)} folders, or leave such classes out with "
                        f"--min-per-class {need}")


def _hold_out(members: list[list[int]], parts: list[tuple[str, int | float]]) -> dict[str, list[int]]:
    """Stratified hold-outs: each class's members (in seeded order) give their share to each
    part in turn; what is left trains."""
    remaining = [len(m) for m in members]
    taken = [0] * len(members)
    out = {}
    for i, (part, size) in enumerate(parts):
        later = len(parts) - 1 - i  # held-out parts still to come: one image per class each
        k = resolve_count(size, sum(remaining), f"{part}_size", allow_zero=True)
        shares = [min(max(s, 1), r - 1 - later) for s, r in zip(apportion(k, remaining), remaining)]
        out[part] = sorted(j for m, t, s in zip(members, taken, shares) for j in m[t : t + s])
        taken = [t + s for t, s in zip(taken, shares)]
        remaining = [r - s for r, s in zip(remaining, shares)]
    out["train"] = sorted(j for m, t in zip(members, taken) for j in m[t:])
    return out


def _amount(size: int | float) -> str:
    return f"{size * 100:g}%" if isinstance(size, float) else f"{size} image{'s' if size != 1 else ''}"


def _folder_split(ref: DataRef, val_size, test_size, seed: int, data_dir: Path, min_per_class: int | None) -> Path:
    manifest = json.loads(Path(ref.manifest).read_text())
    if manifest.get("format") != SCAN_FORMAT:  # an older scan's: no image sizes, other pixels
        raise DataError(f"{ref.manifest}: made by another cifar_lit version (scan format {manifest.get('format', 2)}, "
                        f"not {SCAN_FORMAT}); run again so that the data stage scans the folder again")
    classes = manifest["classes"]
    left_out = _leave_out(classes, Counter(label for _, label in manifest["train"]), min_per_class)
    relabel = {old: new for new, old in enumerate(c for c, name in enumerate(classes) if name not in left_out)}
    names = [name for name in classes if name not in left_out]

    def kept(samples):
        return None if samples is None else [[rel, relabel[label]] for rel, label in samples if label in relabel]

    pool, val_folder, test_folder = kept(manifest["train"]), kept(manifest.get("val")), kept(manifest.get("test"))
    pool_sizes = [size for (_, label), size in zip(manifest["train"], manifest["sizes"]["train"]) if label in relabel]
    for part, samples, folder in (("val", val_folder, manifest.get("val_folder")),
                                  ("test", test_folder, manifest.get("test_folder"))):
        if samples == []:
            raise DataError(f"min_per_class: {min_per_class} leaves no images in the {part} folder {folder}")
    held_out = [(part, size) for part, size, folder in (("test", test_size, test_folder), ("val", val_size, val_folder))
                if folder is None and size != 0]
    members: list[list[int]] = [[] for _ in names]
    for i in seeded_permutation(len(pool), seed):
        members[pool[i][1]].append(i)
    _check_sizes(names, [len(m) for m in members], [part for part, _ in held_out])
    parts = _hold_out(members, held_out)
    samples = pool + (val_folder or []) + (test_folder or [])
    after_pool = iter(range(len(pool), len(samples)))
    for part, folder_samples in (("val", val_folder), ("test", test_folder)):
        if folder_samples is not None:
            parts[part] = [next(after_pool) for _ in folder_samples]
    sources = {"val": manifest.get("val_folder") if val_folder is not None else None,
               "test": manifest.get("test_folder") if test_folder is not None else None}
    for part, size in held_out:
        sources[part] = f"{_amount(size)} of train held out, stratified"
    for part in ("val", "test"):
        parts.setdefault(part, [])
    content = ref.fingerprint
    if left_out:  # other samples and labels: the tensor cache, keyed by this, must not be shared
        content = hashlib.sha256(f"{content}|without {sorted(left_out)}".encode()).hexdigest()
    doc = {
        "version": FOLDER_SPLIT_VERSION,
        "dataset": ref.dataset,
        "data_fingerprint": _fingerprint(ref, val_size, test_size, seed, min_per_class),
        "content_fingerprint": content,
        "seed": seed,
        "val_size": val_size,
        "test_size": test_size,
        "min_per_class": min_per_class,
        "classes": names,
        "left_out": left_out,  # class -> its images in train/, left out by min_per_class
        "skipped": list(ref.skipped),
        "val_from": sources["val"],  # a folder, "<size> of train held out, stratified", or None
        "test_from": sources["test"],
        "train": parts["train"],
        "val": parts["val"],
        "test": parts["test"],  # indices into "samples", as train and val
        "samples": samples,
        # The median shorter side in pixels of the train images, as decoded: what
        # cifar_lit.data.imagefolder.default_image_size picks an image size from.
        "median_side": median_side([pool_sizes[i] for i in parts["train"]]),
    }
    log.info("%s", describe_split(doc))
    return write_json_atomic(split_file_path(ref, val_size, test_size, seed, data_dir, min_per_class), doc)


def describe_split(doc: dict) -> str:
    """One line: which images an image-folder split validates and tests on.

    >>> describe_split({"val_from": "/d/val", "test_from": "10% of train held out, stratified", "val": [0, 1],
    ...                 "test": [2]})
    'val: /d/val (2 images); test: 10% of train held out, stratified (1 images)'
    """
    return "; ".join(f"{part}: {doc[f'{part}_from']} ({len(doc[part])} images)" if doc.get(f"{part}_from")
                     else f"{part}: none ({part}_size 0)" for part in ("val", "test"))


def read_split(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable split file ({e})") from e
    if not isinstance(doc, dict) or not {"version", "train", "val", "test", "classes", "samples"} <= doc.keys():
        raise DataError(f"{path}: not a split file written by cifar_lit")
    folders = doc["samples"] is not None
    older = {1: "not stratified, val/ folders and images in sub-folders not used",
             2: "no median image size, images squashed to 32x32"}
    if folders and doc["version"] in older:
        raise DataError(f"{path}: an image-folder split made by an older cifar_lit (version {doc['version']}: "
                        f"{older[doc['version']]}); run again with a new --output-dir to make a new split")
    if doc["version"] != (FOLDER_SPLIT_VERSION if folders else CIFAR_SPLIT_VERSION):
        raise DataError(f"{path}: a split file of version {doc['version']}, which this cifar_lit cannot read")
    return doc


def data_counts(split: dict, classes: list[str], skipped=(), labels=None, test_labels=None) -> dict:
    """Image counts of a split (a ``read_split`` document) for the run summary:
    ``{"train", "val", "test", "per_class": {class: {"train", "val", "test"}}, "skipped",
    "skipped_files": [[path, reason], ...]}``. ``skipped``: (path, reason) pairs or bare paths.

    Image folders carry their labels in the split. CIFAR does not: pass ``labels`` (the training
    batches' labels) and ``test_labels`` (the test batch's) for per-class counts and the test
    count; without them "per_class" is empty and "test" is None.

    >>> s = {"samples": [["a", 0], ["b", 1], ["c", 1]], "train": [0, 1], "val": [], "test": [2]}
    >>> c = data_counts(s, ["x", "y"], [("bad.png", "not an image")])
    >>> c["train"], c["test"], c["per_class"]["y"], c["skipped_files"]
    (2, 1, {'train': 1, 'val': 0, 'test': 1}, [['bad.png', 'not an image']])
    """
    if split["samples"] is not None:
        labels = [label for _, label in split["samples"]]
    parts = {"train": split["train"], "val": split["val"], "test": split["test"]}
    counts: dict = {part: len(idx) if idx is not None else None for part, idx in parts.items()}
    if split["test"] is None and test_labels is not None:
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".split.json.tmp")
    shutil.copyfile(split_file, tmp)
    tmp.replace(dest)
    return dest
