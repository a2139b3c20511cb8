"""Dataset formats: each kind of data on disk knows how to prepare, identify, split and serve itself.

A format is a ``DataFormat`` subclass in a module of its own, registered with
``@register("name")``, plus one line in ``CATALOGUE`` (name -> module). The data stages
(``cifar_lit.data.prepare``, ``cifar_lit.data.split``, ``cifar_lit.data.tensors``), the download
task's cache and the data module then use it through ``get_format(name)``: nothing else changes.
Like ``cifar_lit.models``, the catalogue knows the names without importing the formats (torchvision,
PIL); a format's module is imported the first time it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from cifar_lit.data.pools import Pool
    from cifar_lit.data.split import Split

CATALOGUE: dict[str, str] = {
    "cifar10": "cifar_lit.data.formats.cifar",
    "cifar100": "cifar_lit.data.formats.cifar",
    "imagefolder": "cifar_lit.data.formats.imagefolder",
}


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


@dataclass(frozen=True)
class Source:
    """Where a dataset lives and how to get it: the data stage's flags. ``exclude``: paths the
    run writes to, which must never be read as data; ``val_dir``/``test_dir``: an image
    folder's validation and test folders when not DIR/val and DIR/test."""

    data_dir: Path
    download_url: str | None = None
    download_md5: str | None = None
    bad_images: str = "skip"
    exclude: tuple[Path, ...] = ()
    val_dir: Path | None = None
    test_dir: Path | None = None

    @property
    def root(self) -> Path:
        return Path(self.data_dir).resolve()


class DataFormat:
    """One kind of dataset on disk. ``name`` is the ``--dataset`` value it was registered as."""

    name: str = ""
    # The side of every image when the format has only one (CIFAR's 32); None: any size.
    fixed_side: int | None = None
    # Its split files (``cifar_lit.data.split.Split``): the keys in the order they are written,
    # the version this code writes, and older versions it refuses, each with why (one line).
    split_keys: tuple[str, ...] = ()
    split_version: int = 1
    older_splits: dict[int, str] = {}
    # Whether a tensor cache too big for memory may stream from disk instead (CIFAR's arrays are
    # read whole from its pickles on either path, so it always counts as fitting).
    streams: bool = True

    # ---- the data stage: prepare, and what is on disk -----------------------------------------

    def prepare(self, source: Source) -> DataRef:
        """Make the dataset present and verified (download, scan) and fingerprint it."""
        raise NotImplementedError

    def on_disk(self, source: Source) -> str | None:
        """What identifies the prepared data on disk, cheaply; None when it is not there (yet)."""
        raise NotImplementedError

    def input_key(self, source: Source) -> str:
        """What identifies the stage's input (for the download task's cache key): it changes
        when ``prepare`` would give another result."""
        raise NotImplementedError

    # ---- the split ----------------------------------------------------------------------------

    def split_content(self, ref: DataRef, val_size: int | float, test_size: int | float, seed: int,
                      min_per_class: int | None) -> tuple[str, int | float | None]:
        """What the split's data fingerprint hashes besides ``val_size`` and ``seed``: the
        content, and the test size when it shapes the split (None when the format has its own
        test set)."""
        raise NotImplementedError

    def make_split(self, ref: DataRef, val_size: int | float, test_size: int | float, seed: int,
                   min_per_class: int | None, data_fingerprint: str) -> Split:
        """The seeded split of ``ref`` (not yet written)."""
        raise NotImplementedError

    def split_version_problem(self, version: int) -> str | None:
        """Why a split file of ``version`` cannot be read, or None."""
        if version in self.older_splits:
            return self.older_splits[version]
        if version != self.split_version:
            return f"a split file of version {version}, which this cifar_lit cannot read"
        return None

    def describe(self, split: Split) -> str | None:
        """One line saying which images ``split`` validates and tests on, when that needs saying."""
        return None

    def sample_labels(self, split: Split) -> list[int] | None:
        """The label of every image the split's indices point to, when the split holds them."""
        raise NotImplementedError

    # ---- serving ------------------------------------------------------------------------------

    def pools(self, split: Split, root: Path, parts: tuple[str, ...]) -> dict[str, Pool]:
        """``part -> Pool``: the images of each of ``parts`` for the per-sample path."""
        raise NotImplementedError

    def cache_images(self, split: Split) -> int:
        """How many images the tensor cache of ``split`` holds."""
        raise NotImplementedError

    def decode_cache(self, split: Split, root: Path, size: int) -> dict[str, torch.Tensor]:
        """The tensor cache's contents, decoded: ``{"train", "train_labels", "test",
        "test_labels"}``; "test" holds the format's own test set (empty when the split's test
        indices point into "train")."""
        raise NotImplementedError

    def cache_mismatch(self, cached: dict[str, Any], split: Split) -> str | None:
        """Why a well-formed cache does not hold ``split``'s images, or None."""
        return None


FORMATS: dict[str, DataFormat] = {}


def register(name: str):
    """Class decorator: ``@register("name")`` makes ``--dataset name`` use this format."""

    def add(cls: type[DataFormat]) -> type[DataFormat]:
        # A catalogue name belongs to its module, imported or not yet.
        if name in FORMATS or CATALOGUE.get(name, cls.__module__) != cls.__module__:
            raise ValueError(f"dataset format {name!r} is registered twice")
        fmt = cls()
        fmt.name = name
        FORMATS[name] = fmt
        return cls

    return add


def known_formats() -> list[str]:
    """Every usable name: the catalogue's and any registered at run time."""
    return sorted(set(CATALOGUE) | set(FORMATS))


def get_format(name: str) -> DataFormat:
    """The format registered as ``name``; an unknown name is one line naming the choices."""
    if name not in FORMATS and name in CATALOGUE:
        importlib.import_module(CATALOGUE[name])
    if name not in FORMATS:
        raise ValueError(f"dataset: unknown dataset format {name!r}; known: {', '.join(known_formats())}")
    return FORMATS[name]


def on_disk(dataset: str, data_dir: Path, download_md5: str | None = None, val_dir: Path | None = None,
            test_dir: Path | None = None) -> str | None:
    """What identifies the prepared ``dataset`` in ``data_dir``; None when it is not there (yet).

    CIFAR: the expected archive checksum, once an archive with it was extracted. Image folders:
    names, sizes and mtimes of every file (train, val and test folders, at any depth), once the
    folder was scanned, so any edit shows. The flow runs the (cached) download stage again when
    this is None, so deleted data is fetched or scanned again.
    """
    return get_format(dataset).on_disk(Source(data_dir, download_md5=download_md5, val_dir=val_dir, test_dir=test_dir))
