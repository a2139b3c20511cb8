"""The data layer's pieces on their own: the registry of dataset formats (a format added in one
file is used by every stage), the typed ``Split`` (files of the code before it read and written
byte for byte), and ``ImageDataModule`` built from its typed arguments in a plain Trainer."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import fakes
import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from cifar_lit.cli import build_parser, parse_config
from cifar_lit.data import formats
from cifar_lit.data.cifar import cifar_classes
from cifar_lit.data.common import DataError
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.formats import DataFormat, DataRef, get_format, on_disk, register
from cifar_lit.data.pools import ArrayPool
from cifar_lit.data.prepare import prepare_data
from cifar_lit.data.split import Split, data_counts, make_split, seeded_permutation
from tasks import download as download_task
from tasks.split import _cache_key as split_cache_key

OLD = Path(__file__).parents[1] / "fixtures" / "old_splits"  # written by the code before Split (see its README)


# ---- the registry ------------------------------------------------------------------------------


class Npz(DataFormat):
    """A format made up for this test: ``DIR/images.npz`` with "images" (N x 32 x 32 x 3 uint8)
    and "labels"; the first two images of a seeded order validate, the next two test."""

    fixed_side = 32
    split_keys = ("version", "dataset", "data_fingerprint", "content_fingerprint", "seed", "val_size", "test_size",
                  "classes", "skipped", "train", "val", "test", "samples")

    def _arrays(self, root: Path):
        with np.load(Path(root) / "images.npz") as f:
            return f["images"], f["labels"]

    def prepare(self, source):
        digest = hashlib.sha256((source.root / "images.npz").read_bytes()).hexdigest()
        return DataRef(self.name, source.root, digest, ("even", "odd"))

    def on_disk(self, source):
        path = source.root / "images.npz"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    def input_key(self, source):
        return self.on_disk(source) or "absent"

    def split_content(self, ref, val_size, test_size, seed, min_per_class):
        return ref.fingerprint, test_size

    def make_split(self, ref, val_size, test_size, seed, min_per_class, data_fingerprint):
        perm = seeded_permutation(len(self._arrays(ref.folder)[1]), seed)
        return Split(version=1, dataset=ref.dataset, data_fingerprint=data_fingerprint,
                     content_fingerprint=ref.fingerprint, seed=seed, val_size=val_size, test_size=test_size,
                     classes=ref.classes, skipped=(), train=tuple(sorted(perm[4:])), val=tuple(sorted(perm[:2])),
                     test=tuple(sorted(perm[2:4])), samples=None)

    def sample_labels(self, split):
        return None

    def pools(self, split, root, parts):
        images, labels = self._arrays(root)
        return {part: ArrayPool(images, labels, getattr(split, part)) for part in parts}

    def cache_images(self, split):
        return len(split.train) + len(split.val) + len(split.test)

    def decode_cache(self, split, root, size):
        images, labels = self._arrays(root)
        x, y = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
        return {"train": x, "train_labels": y, "test": x[:0].clone(), "test_labels": y[:0].clone()}


@pytest.fixture
def npz_format(monkeypatch, tmp_path):
    """The Npz format registered for one test (the real registry is left as it was), and its data."""
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))
    register("npz")(Npz)
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 2
    images = fakes.class_images(labels, 2, rng)
    root = tmp_path / "npz"
    root.mkdir()
    np.savez(root / "images.npz", images=images, labels=labels.astype(np.int64))
    return root


def test_an_unknown_format_is_one_line_naming_the_choices(monkeypatch):
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))
    with pytest.raises(ValueError) as caught:
        get_format("mnist")
    assert str(caught.value) == "dataset: unknown dataset format 'mnist'; known: cifar10, cifar100, imagefolder"
    with pytest.raises(ValueError, match="unknown dataset format 'mnist'"):
        prepare_data("mnist", Path("."))
    for taken in ("cifar10", "imagefolder"):  # whether its module was imported yet or not
        with pytest.raises(ValueError, match="registered twice"):
            register(taken)(Npz)


def test_a_format_registered_in_one_place_is_used_by_every_stage(npz_format, tmp_path):
    root = npz_format
    assert on_disk("npz", root) == hashlib.sha256((root / "images.npz").read_bytes()).hexdigest()
    assert on_disk("npz", tmp_path / "elsewhere") is None
    assert "npz" in formats.known_formats()
    # The config and the command line take it from the registry: no list of names to extend.
    assert parse_config(["--dataset", "npz", "--data-dir", str(root)]).dataset == "npz"
    assert "{cifar10,cifar100,imagefolder,npz}" in build_parser().format_help()
    ref = prepare_data("npz", root)
    params = dict(dataset="npz", data_dir=root, download_url=None, download_md5=None, bad_images="skip")
    assert download_task._cache_key(None, params).startswith("download-")
    path = make_split(ref, 2, 2, 5, root)
    assert split_cache_key(None, {"ref": ref, "val_size": 2, "test_size": 2, "seed": 5, "data_dir": root})
    split = Split.read(path)
    assert (len(split.train), len(split.val), len(split.test)) == (16, 2, 2) and split.dataset == "npz"
    assert list(json.loads(path.read_text())) == list(Npz.split_keys)
    assert data_counts(split, ["even", "odd"])["test"] == 2
    for data_path in ("pil", "tensor"):
        dm = ImageDataModule(data_dir=root, split_file=path, batch_size=4, data_path=data_path)
        dm.setup()
        x, y = next(iter(dm.train_dataloader()))
        assert x.shape == (4, 3, 32, 32) and dm.classes == ["even", "odd"]
        assert dm.labels_of("test") == [int(v) for v in np.load(root / "images.npz")["labels"][list(split.test)]]
    with pytest.raises(DataError, match="images are 32x32"):
        ImageDataModule(data_dir=root, split_file=path, image_size=48).setup()


# ---- the typed Split ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagefolder-split.json", "cifar10-split.json"])
def test_a_split_file_of_the_old_code_reads_and_writes_byte_for_byte(name, tmp_path):
    split = Split.read(OLD / name)
    assert split.write(tmp_path / name).read_bytes() == (OLD / name).read_bytes()
    assert Split.from_dict(json.loads((OLD / name).read_text())) == split


def test_make_split_writes_what_the_old_code_wrote(tmp_path):
    """The same data gives the same split file, manifest and names as before the redesign: data
    fingerprints, tensor caches and the registry's matches hold."""
    root = shutil.copytree(OLD / "photos", tmp_path / "photos")
    ref = prepare_data("imagefolder", root)
    assert Path(ref.manifest).read_bytes() == (OLD / "imagefolder-manifest.json").read_bytes()
    path = make_split(ref, 0.25, 2, 0, root)
    assert path.read_bytes() == (OLD / "imagefolder-split.json").read_bytes()
    assert path.name == f"split-{Split.read(path).data_fingerprint}.json"
    # CIFAR: a split depends on the number of training images and the class names only.
    with tarfile.open(fileobj=io.BytesIO(fakes.cifar_archive("cifar10", n_train=50, n_test=10))) as t:
        t.extractall(tmp_path / "c", filter="data")
    folder = tmp_path / "c" / "cifar-10-batches-py"
    ref = DataRef("cifar10", folder, "0123456789abcdef" * 4, tuple(cifar_classes(folder, "cifar10")))
    assert make_split(ref, 10, 0.1, 3, tmp_path / "c").read_bytes() == (OLD / "cifar10-split.json").read_bytes()


def test_foreign_split_files_are_refused_in_one_line(tmp_path):
    doc = json.loads((OLD / "cifar10-split.json").read_text())
    cases = {
        "not json": ("{", "not a readable split file"),
        "no indices": (json.dumps({"version": 1}), "not a split file written by cifar_lit"),
        "unknown format": (json.dumps({**doc, "dataset": "mnist"}), "unknown dataset format 'mnist'"),
        "a newer version": (json.dumps({**doc, "version": 9}), "a split file of version 9, which this cifar_lit"),
        "a missing field": (json.dumps({k: v for k, v in doc.items() if k != "seed"}), "not a split file written"),
    }
    for name, (text, words) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(DataError) as caught:
            Split.read(path)
        assert words in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value), name


# ---- the data module, dropped into a plain Trainer -----------------------------------------------


class Tiny(L.LightningModule):
    """Knows nothing of this project: a linear classifier of 32x32 RGB batches."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
        self.tested = 0

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def test_step(self, batch, _):
        self.tested += len(batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("data_path", ["pil", "tensor"])
def test_the_datamodule_from_typed_arguments_fits_in_a_plain_trainer(tmp_path, data_path):
    root = fakes.image_folder(tmp_path / "photos", per_class=8)
    split_file = make_split(prepare_data("imagefolder", root), 0.25, 0.25, 0, root)
    dm = ImageDataModule(data_dir=root, split_file=split_file, batch_size=4, data_path=data_path)
    assert dm.classes == ["cat", "dog", "frog"] and dm.image_size == 32 and dm.has_val
    model = Tiny(dm.num_classes)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished and trainer.current_epoch == 2 and "val_loss" in trainer.callback_metrics
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.tested == dm.num_images("test") == 6
