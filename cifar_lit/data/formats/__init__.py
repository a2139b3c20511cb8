"""Dataset formats: each kind of data on disk knows how to prepare, identify, split and serve itself.

A format is a ``DataFormat`` subclass in a module of its own, registered with
``@register("name")``, plus one line in ``CATALOGUE`` (name -> module). The data stages
(``cifar_lit.data.prepare``, ``cifar_lit.data.split``, ``cifar_lit.data.tensors``), the download
task's cache and the data module then use it through ``get_format(name)``: nothing else changes.
Like ``cifar_lit.models``, the catalogue knows the names without importing the formats (torchvision,
PIL); a format's module is imported the first time it is used.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifar_lit.data.common import DataError
from cifar_lit.files.atomic import write_json_atomic

if TYPE_CHECKING:
    import torch

    from cifar_lit.data.pools import Pool

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


# ---- split files ---------------------------------------------------------------------------------
# Here, beside the registry: which fields a split file holds is its format's (``split_keys``).

REQUIRED = frozenset({"version", "dataset", "train", "val", "test", "classes", "samples"})


@dataclass(frozen=True)
class Split:
    """A split file: which images of the dataset train, validate and test (indices), what data
    it was made from (fingerprints) and how (sizes, seed).

    ``samples`` is (path, label) of every image the indices point into, for formats that list
    their images (image folders); None where the format's own pool is the training set and its
    own test set (CIFAR's batches) is the test set (``test`` is then None). The fields after
    ``samples`` are those of image-folder splits. Which fields a file holds, in which order, is
    its format's ``split_keys``: ``write`` gives the same bytes as the file it was read from.
    """

    version: int
    dataset: str
    data_fingerprint: str
    content_fingerprint: str
    seed: int
    val_size: int | float
    test_size: int | float | None
    classes: tuple[str, ...]
    skipped: tuple[str, ...]
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...] | None
    samples: tuple[tuple[str, int], ...] | None
    min_per_class: int | None = None
    left_out: Mapping[str, int] | None = None  # class -> its images in train/, left out by min_per_class
    val_from: str | None = None  # a folder, "<size> of train held out, stratified", or None
    test_from: str | None = None
    # The median shorter side in pixels of the train images, as decoded: what
    # cifar_lit.data.imagefolder.default_image_size picks an image size from.
    median_side: int | None = None

    @classmethod
    def read(cls, path: Path) -> Split:
        """The split file at ``path``; a file that is not one, or that an older cifar_lit made
        for data this code would split otherwise, is a one-line ``DataError``."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable split file ({e})") from e
        if not isinstance(doc, dict) or not REQUIRED <= doc.keys():
            raise DataError(f"{path}: not a split file written by cifar_lit")
        try:
            fmt = get_format(doc["dataset"])
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: {e}") from None
        problem = fmt.split_version_problem(doc["version"])
        if problem:
            raise DataError(f"{path}: {problem}")
        if not set(fmt.split_keys) <= doc.keys():
            raise DataError(f"{path}: not a split file written by cifar_lit")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping) -> Split:
        """A split from the fields of its file (lists become tuples)."""
        def frozen(v):
            return tuple(frozen(x) for x in v) if isinstance(v, list) else v

        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: frozen(v) for k, v in doc.items() if k in names})

    def to_dict(self) -> dict:
        """The file's fields, in its format's order (tuples stay tuples: JSON writes them as lists)."""
        return {k: getattr(self, k) for k in get_format(self.dataset).split_keys}

    def write(self, path: Path) -> Path:
        """Write the file whole or not at all (``cifar_lit.files.atomic``); returns ``path``."""
        return write_json_atomic(path, self.to_dict())
