"""CIFAR-10 and CIFAR-100: the official archive, fetched, verified and extracted by
``cifar_lit.data.cifar``; a seeded ``val_size`` of the training batches held out for validation;
the official test batch as the test set. Every image is 32x32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cifar_lit.data.cifar import SOURCES, cifar_classes, download_cifar, is_ready, load_cifar
from cifar_lit.data.common import SIZE, DataError
from cifar_lit.data.formats import DataFormat, DataRef, Source, register
from cifar_lit.data.pools import ArrayPool, Pool
from cifar_lit.data.split import Split, resolve_count, seeded_permutation

# Unchanged since version 1, so CIFAR fingerprints (and the registry's matches) hold.
SPLIT_VERSION = 1
SPLIT_KEYS = ("version", "dataset", "data_fingerprint", "content_fingerprint", "seed", "val_size", "test_size",
              "classes", "skipped", "train", "val", "test", "samples")
TEST_IMAGES = 10_000  # the official test batch


class Cifar(DataFormat):
    fixed_side = SIZE
    split_keys = SPLIT_KEYS
    split_version = SPLIT_VERSION
    streams = False  # its 184 MB are read whole from the pickles on either path

    def _md5(self, source: Source) -> str:
        return (source.download_md5 or SOURCES[self.name].md5).lower()

    def _folder(self, root: Path) -> Path:
        return Path(root) / SOURCES[self.name].base_folder

    def prepare(self, source: Source) -> DataRef:
        md5 = self._md5(source)
        folder = download_cifar(self.name, source.root, source.download_url, md5)
        fingerprint = hashlib.sha256(f"{self.name}:{md5}".encode()).hexdigest()
        return DataRef(self.name, folder, fingerprint, tuple(cifar_classes(folder, self.name)))

    def on_disk(self, source: Source) -> str | None:
        """The expected archive checksum, once an archive with it was extracted."""
        md5 = self._md5(source)
        return md5 if is_ready(self._folder(source.root), md5) else None

    def input_key(self, source: Source) -> str:
        return self._md5(source)

    def split_content(self, ref, val_size, test_size, seed, min_per_class):
        return ref.fingerprint, None  # test_size plays no part: the official test batch is the test set

    def make_split(self, ref: DataRef, val_size, test_size, seed: int, min_per_class, data_fingerprint: str) -> Split:
        n = len(load_cifar(ref.folder, ref.dataset, train=True)[1])
        perm = seeded_permutation(n, seed)
        n_val = resolve_count(val_size, n, "val_size", allow_zero=True)
        train = sorted(perm[n_val:])
        if not train:
            raise DataError(f"val_size: {val_size} leaves no training images out of {n}")
        return Split(version=SPLIT_VERSION, dataset=ref.dataset, data_fingerprint=data_fingerprint,
                     content_fingerprint=ref.fingerprint, seed=seed, val_size=val_size, test_size=None,
                     classes=tuple(ref.classes), skipped=tuple(ref.skipped), train=tuple(train),
                     val=tuple(sorted(perm[:n_val])), test=None, samples=None)

    def sample_labels(self, split: Split) -> list[int] | None:
        return None  # the labels live in the batches, not in the split

    def pools(self, split: Split, root: Path, parts: tuple[str, ...]) -> dict[str, Pool]:
        """Arrays from the extracted pickles: the training batches for train and val (read only
        when one of them is asked for), the test batch for test."""
        out: dict[str, Pool] = {}
        if {"train", "val"} & set(parts):
            images, labels = load_cifar(self._folder(root), self.name, train=True)
            out.update({part: ArrayPool(images, labels, getattr(split, part)) for part in ("train", "val") if part in parts})
        if "test" in parts:
            images, labels = load_cifar(self._folder(root), self.name, train=False)
            out["test"] = ArrayPool(images, labels, range(len(labels)))
        return out

    def cache_images(self, split: Split) -> int:
        return len(split.train) + len(split.val) + TEST_IMAGES

    def decode_cache(self, split: Split, root: Path, size: int) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, train in (("train", True), ("test", False)):  # the pickles are already arrays
            images, labels = load_cifar(self._folder(root), self.name, train=train)
            tensors[name] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            tensors[f"{name}_labels"] = torch.from_numpy(labels)
        return tensors


register("cifar10")(Cifar)
register("cifar100")(Cifar)
