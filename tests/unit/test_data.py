"""Data stages on tiny data in the real formats: download/checksum/extract over HTTP, image
folders (broken, greyscale, RGBA, odd sizes, empty), seeded split files, the DataModule."""

from __future__ import annotations

import io
import json
import tarfile

import fakes
import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lit.data.cifar import ChecksumError, HTTPDownloadError, download_cifar, load_cifar
from cifar_lit.data.common import DataError
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.imagefolder import scan_imagefolder
from cifar_lit.data.images import load_rgb32
from cifar_lit.data.prepare import prepare_data
from cifar_lit.data.split import Split, make_split, resolve_count, split_file_path, stage_split


def test_download_verifies_extracts_and_is_idempotent(tmp_path, server, archives):
    url, md5 = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"])
    folder = download_cifar("cifar10", tmp_path, url, md5)
    images, labels = load_cifar(folder, "cifar10", train=True)
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (200,)
    assert load_cifar(folder, "cifar10", train=False)[0].shape == (60, 32, 32, 3)
    assert [m for m, _, s in server.requests if s == 200]  # it did fetch
    before = len(server.requests)
    assert download_cifar("cifar10", tmp_path, url, md5) == folder
    assert len(server.requests) == before  # second call: no network
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".extract-*"))


def test_cifar100_uses_fine_labels_and_names(tmp_path, server, archives):
    ref = prepare_data("cifar100", tmp_path, server.url("/cifar100.tar.gz"), fakes.md5(archives["cifar100"]))
    assert ref.num_classes == 100 and ref.classes[0] == "class_000"
    _, labels = load_cifar(ref.folder, "cifar100", train=True)
    assert labels.max() == 99


def test_wrong_checksum_is_a_clear_error_and_keeps_good_data(tmp_path, server, archives):
    good_md5 = fakes.md5(archives["cifar10"])
    folder = download_cifar("cifar10", tmp_path, server.url("/cifar10.tar.gz"), good_md5)
    before = {p: p.read_bytes() for p in folder.iterdir()}
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    server.files["/cifar10.tar.gz"] = b"corrupted bytes"
    with pytest.raises(ChecksumError, match=f"checksum mismatch \\(expected md5 {'0' * 32}"):
        download_cifar("cifar10", tmp_path, server.url("/cifar10.tar.gz"), "0" * 32)
    assert {p: p.read_bytes() for p in folder.iterdir()} == before  # nothing extracted over it
    assert not (tmp_path / "cifar-10-python.tar.gz").exists() and not list(tmp_path.glob("*.part"))


def test_http_errors_propagate_for_the_task_to_retry(tmp_path, server, archives):
    server.fail_next = 1
    with pytest.raises(HTTPDownloadError, match="503") as caught:
        download_cifar("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    assert caught.value.code == 503 and caught.value.transient


def test_archive_members_cannot_escape_the_data_root(tmp_path, server):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    server.files["/evil.tar.gz"] = buf.getvalue()
    root = tmp_path / "root"
    with pytest.raises(tarfile.TarError):
        download_cifar("cifar10", root, server.url("/evil.tar.gz"), fakes.md5(buf.getvalue()))
    assert not (tmp_path / "escaped.txt").exists()


# ---- image folders -------------------------------------------------------------------------


def _odd_images(root):
    """A greyscale, an RGBA and a 64x48 image, plus a broken file."""
    cat = root / "train" / "cat"
    Image.new("L", (32, 32), 128).save(cat / "grey.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 128)).save(cat / "rgba.png")
    Image.new("RGB", (64, 48), (200, 0, 0)).save(cat / "big.jpg")
    (cat / "broken.jpg").write_bytes(b"this is not a jpeg")


def test_scan_converts_odd_images_and_skips_broken_ones(tmp_path, caplog):
    root = fakes.image_folder(tmp_path / "ds", per_class=5)
    _odd_images(root)
    scan = scan_imagefolder(root, "skip")
    assert scan.classes == ["cat", "dog", "frog"]
    assert scan.skipped == ["train/cat/broken.jpg"]
    assert "broken.jpg" in caplog.text
    names = {rel for rel, _ in scan.train}
    assert {"train/cat/grey.png", "train/cat/rgba.png", "train/cat/big.jpg"} <= names
    for rel in ("train/cat/grey.png", "train/cat/rgba.png", "train/cat/big.jpg"):
        im = load_rgb32(root / rel)
        assert im.mode == "RGB" and im.size == (32, 32)


def test_scan_can_reject_broken_files_by_name(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=3)
    (root / "train" / "dog" / "bad.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match=r"train/dog/bad.png: not a readable image"):
        scan_imagefolder(root, "error")


def test_empty_class_folder_and_empty_dataset_are_errors(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=3)
    (root / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match="class folder .*zebra is empty"):
        scan_imagefolder(root)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no class folders"):
        scan_imagefolder(empty)
    only_broken = tmp_path / "broken"
    (only_broken / "train" / "a").mkdir(parents=True)
    (only_broken / "train" / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="holds no readable images"):
        scan_imagefolder(only_broken)


def test_fingerprint_follows_content(tmp_path):
    a = scan_imagefolder(fakes.image_folder(tmp_path / "a", seed=1)).fingerprint
    b = scan_imagefolder(fakes.image_folder(tmp_path / "b", seed=1)).fingerprint
    c = scan_imagefolder(fakes.image_folder(tmp_path / "c", seed=2)).fingerprint
    assert a == b != c


# ---- splits ----------------------------------------------------------------------------------


def test_resolve_count():
    assert resolve_count(0.1, 100, "val_size") == 10
    with pytest.raises(DataError, match="val_size"):
        resolve_count(100, 100, "val_size")


def test_split_is_seeded_disjoint_and_saved(tmp_path, server, archives):
    ref = prepare_data("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    path = make_split(ref, 40, 0.1, 7, tmp_path)
    assert path == split_file_path(ref, 40, 0.1, 7, tmp_path)
    doc = Split.read(path)
    assert len(doc.val) == 40 and len(doc.train) == 160 and doc.test is None
    assert not set(doc.train) & set(doc.val)
    same = path.read_bytes()
    assert make_split(ref, 40, 0.1, 7, tmp_path).read_bytes() == same  # same inputs, same file
    other = make_split(ref, 40, 0.1, 8, tmp_path)
    assert other != path and Split.read(other).val != doc.val
    with pytest.raises(DataError, match="val_size: 200"):
        make_split(ref, 200, 0.1, 7, tmp_path)


def test_image_folder_split_holds_out_a_seeded_test_set(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=10)
    ref = prepare_data("imagefolder", root)
    doc = Split.read(make_split(ref, 3, 6, 0, root))
    assert (len(doc.test), len(doc.val), len(doc.train)) == (6, 3, 21)
    assert not (set(doc.test) | set(doc.val)) & set(doc.train)
    with_test = fakes.image_folder(tmp_path / "ds2", per_class=10, test_per_class=2)
    doc2 = Split.read(make_split(prepare_data("imagefolder", with_test), 0.2, 6, 0, with_test))
    assert len(doc2.test) == 6 and all(doc2.samples[i][0].startswith("test/") for i in doc2.test)


def test_stage_split_never_overwrites_a_different_split(tmp_path, server, archives):
    ref = prepare_data("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    out = tmp_path / "run"
    staged = stage_split(make_split(ref, 40, 0.1, 1, tmp_path), out)
    assert stage_split(make_split(ref, 40, 0.1, 1, tmp_path), out) == staged  # a retry: fine
    with pytest.raises(DataError, match="holds a different split"):
        stage_split(make_split(ref, 40, 0.1, 2, tmp_path), out)
    assert Split.read(staged).seed == 1


# ---- DataModule --------------------------------------------------------------------------------


def test_datamodule_serves_normalised_batches_from_the_split(make_config):
    cfg = make_config()
    dm = ImageDataModule.from_config(cfg)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.min() < 0  # the tutorial's (0.5, 0.5) normalisation
    split = json.loads((cfg.out / "split.json").read_text())
    assert len(dm.serving.train_set) == len(split["train"]) == 160 and len(dm.serving.val_set) == 40
    dm.setup("test")
    assert len(dm.serving.test_set) == 60
    # The same seed replays the same shuffled batches.
    again = ImageDataModule.from_config(cfg, cfg.out / "split.json")
    again.setup("fit")
    assert torch.equal(next(iter(again.train_dataloader()))[1], y)


def test_datamodule_image_folder(tmp_path, make_config):
    root = fakes.image_folder(tmp_path / "ds", per_class=10)
    _odd_images(root)
    cfg = make_config(dataset="imagefolder", data_dir=root, val_size=0.2, test_size=0.2)
    dm = ImageDataModule.from_config(cfg)
    dm.prepare_data()
    dm.setup()
    assert dm.classes == ["cat", "dog", "frog"]
    total = len(dm.serving.train_set) + len(dm.serving.val_set) + len(dm.serving.test_set)
    assert total == 33  # 30 + grey + rgba + big; the broken file is skipped
    xs = torch.stack([dm.serving.train_set[i][0] for i in range(len(dm.serving.train_set))])
    assert xs.shape[1:] == (3, 32, 32)


def test_a_last_training_batch_of_one_image_is_dropped_and_only_that(tmp_path):
    """BatchNorm networks (resnet18, mobilenet_v3_small, airnet) cannot train on a batch of one
    image; the tutorial's per-sample loader keeps every other partial batch."""
    from cifar_lit.config import TrainConfig

    root = fakes.image_folder(tmp_path / "ds", per_class=12)
    base = TrainConfig(recipe="seed", dataset="imagefolder", data_dir=root, num_workers=0, val_size=0.2, seed=1,
                       output_dir=tmp_path / "out", wandb_mode="disabled")
    dm = ImageDataModule.from_config(base)
    dm.setup("fit")
    n = len(dm.serving.train_set)
    for batch, sizes in ((n - 1, [n - 1]), (n - 2, [n - 2, 2])):
        dm.batch_size = batch
        assert [len(y) for _, y in dm.train_dataloader()] == sizes
    assert sum(len(y) for _, y in dm.val_dataloader()) == len(dm.serving.val_set)  # never for evaluation
