"""Image folders (``DIR/train/<class>/...``, optional val/ and test/ folders): scanned by
``cifar_lit.data.imagefolder`` into a manifest beside the data; split by their val/ and test/
folders or stratified hold-outs from train/ (``folder_split``); served from the files, at any
image size.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cifar_lit.data.common import DataError
from cifar_lit.data.formats import DataFormat, DataRef, Source, register
from cifar_lit.data.imagefolder import SCAN_FORMAT, scan_imagefolder
from cifar_lit.data.images import load_rgb, median_side
from cifar_lit.data.pools import FilePool, Pool
from cifar_lit.data.prepare import cache_dir
from cifar_lit.data.signature import stat_signature
from cifar_lit.data.split import Split, apportion, resolve_count, seeded_permutation
from cifar_lit.files.atomic import write_json_atomic

log = logging.getLogger(__name__)
# 2: stratified hold-outs, val/ folders, nested images, min_per_class. Version 1 image-folder
# splits are refused by ``Split.read`` and never reused: their fingerprint lacks the version.
# 3: "median_side", the median shorter side of the train images (the default image size's input).
# Version 2 files lack it and are refused too; the version is in the fingerprint, so in the name.
SPLIT_VERSION = 3
SPLIT_KEYS = ("version", "dataset", "data_fingerprint", "content_fingerprint", "seed", "val_size", "test_size",
              "min_per_class", "classes", "left_out", "skipped", "val_from", "test_from", "train", "val", "test",
              "samples", "median_side")
_RUN_AGAIN = "run again with a new --output-dir to make a new split"


@register("imagefolder")
class ImageFolder(DataFormat):
    split_keys = SPLIT_KEYS
    split_version = SPLIT_VERSION
    older_splits = {
        1: f"an image-folder split made by an older cifar_lit (version 1: not stratified, val/ folders and images "
           f"in sub-folders not used); {_RUN_AGAIN}",
        2: f"an image-folder split made by an older cifar_lit (version 2: no median image size, images squashed to "
           f"32x32); {_RUN_AGAIN}",
    }

    def prepare(self, source: Source) -> DataRef:
        """Decode every image once, drop or reject unreadable ones, and write the manifest of the
        usable samples and their sizes beside the data (later stages never decode it all again)."""
        root = source.root
        scan = scan_imagefolder(root, source.bad_images, source.exclude, source.val_dir, source.test_dir)
        # Written on every scan, so a deleted manifest is back as soon as the stage runs again. Its
        # name is the fingerprint, which covers which folder plays which part.
        manifest = cache_dir(root) / f"manifest-{scan.fingerprint[:16]}.json"
        # "sizes": part -> [width, height] of each sample of that part, in order (the split's median_side).
        write_json_atomic(manifest, {"format": SCAN_FORMAT, "classes": scan.classes, "train": scan.train,
                                     "val": scan.val, "test": scan.test, "val_folder": scan.val_folder,
                                     "test_folder": scan.test_folder, "skipped": scan.skipped_reasons,
                                     "sizes": scan.sizes})
        return DataRef(self.name, root, scan.fingerprint, tuple(scan.classes), tuple(scan.skipped), manifest,
                       tuple(tuple(pair) for pair in scan.skipped_reasons))

    def on_disk(self, source: Source) -> str | None:
        """Names, sizes and mtimes of every file the scan reads (``stat_signature``), once a scan's
        manifest is there: a cached result pointing at a deleted one is stale."""
        root = source.root
        if not any(cache_dir(root).glob("manifest-*.json")):
            return None
        return stat_signature(root, (source.val_dir, source.test_dir))

    def input_key(self, source: Source) -> str:
        folders = (source.val_dir, source.test_dir)
        return stat_signature(source.root, folders) + f"|val_dir {folders[0]}|test_dir {folders[1]}"

    def split_content(self, ref, val_size, test_size, seed, min_per_class):
        return f"{ref.fingerprint}|split version {SPLIT_VERSION}|min_per_class {min_per_class}", test_size

    def make_split(self, ref: DataRef, val_size, test_size, seed: int, min_per_class, data_fingerprint: str) -> Split:
        return folder_split(ref, val_size, test_size, seed, min_per_class, data_fingerprint)

    def describe(self, split: Split) -> str:
        return describe(split)

    def sample_labels(self, split: Split) -> list[int]:
        return [label for _, label in split.samples]

    def pools(self, split: Split, root: Path, parts: tuple[str, ...]) -> dict[str, Pool]:
        return {part: FilePool(root, split.samples, getattr(split, part)) for part in parts}

    def cache_images(self, split: Split) -> int:
        return len(split.samples)

    def decode_cache(self, split: Split, root: Path, size: int) -> dict[str, torch.Tensor]:
        """Every sample (train, val and test) at ``size`` (``imagefolder.square``) in "train"; "test" empty."""
        samples = split.samples
        # Filled in place, one image at a time: the cache's bytes once in memory, not twice.
        images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
        for i, (rel, _) in enumerate(samples):
            images[i] = torch.from_numpy(_decode(root, rel, size)).permute(2, 0, 1)
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return {"train": images, "train_labels": labels, "test": images[:0].clone(), "test_labels": labels[:0].clone()}

    def cache_mismatch(self, cached, split: Split) -> str | None:
        # Exactly the split's samples, in order.
        if len(cached["test"]) or cached["train_labels"].tolist() != self.sample_labels(split):
            return "does not hold this split's images"
        return None


def _decode(root: Path, rel: str, size: int) -> np.ndarray:
    try:
        return np.array(load_rgb(root / rel, size))  # a writable copy: torch.from_numpy warns on a read-only one
    except Exception as e:  # noqa: BLE001 - any PIL or OS error: say which file, in one line
        raise DataError(f"{root / rel}: was readable when the data was scanned, not now ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); run again to scan the changed data") from None


# ---- the split ---------------------------------------------------------------------------------


def describe(split) -> str:
    """One line: which images an image-folder split validates and tests on.

    >>> from types import SimpleNamespace
    >>> describe(SimpleNamespace(val_from="/d/val", test_from="10% of train held out, stratified", val=[0, 1],
    ...                          test=[2]))
    'val: /d/val (2 images); test: 10% of train held out, stratified (1 images)'
    """
    return "; ".join(f"{part}: {getattr(split, f'{part}_from')} ({len(getattr(split, part))} images)"
                     if getattr(split, f"{part}_from") else f"{part}: none ({part}_size 0)" for part in ("val", "test"))


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


def folder_split(ref: DataRef, val_size, test_size, seed: int, min_per_class: int | None,
                 data_fingerprint: str) -> Split:
    """The split of a scanned image folder (``ImageFolder.make_split``)."""
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
    split = Split(
        version=SPLIT_VERSION,
        dataset=ref.dataset,
        data_fingerprint=data_fingerprint,
        content_fingerprint=content,
        seed=seed,
        val_size=val_size,
        test_size=test_size,
        min_per_class=min_per_class,
        classes=tuple(names),
        left_out=left_out,
        skipped=tuple(ref.skipped),
        val_from=sources["val"],
        test_from=sources["test"],
        train=tuple(parts["train"]),
        val=tuple(parts["val"]),
        test=tuple(parts["test"]),  # indices into samples, as train and val
        samples=tuple((rel, label) for rel, label in samples),
        median_side=median_side([pool_sizes[i] for i in parts["train"]]),
    )
    log.info("%s", describe(split))
    return split
