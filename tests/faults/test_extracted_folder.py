"""Download fault matrix, the already-extracted row: a CIFAR folder that is there without our
marker (torchvision's own download, an older run of ours). For the official archive it is
checked file by file against the md5 published for each file, and used without a network
request when every file matches; a folder with a missing or changed file is named in a warning
and replaced by a fresh download. For a mirror's md5 nothing can be checked file by file: the
folder needs the marker, as before.

The tests cannot use the real CIFAR files, so the official per-file table (``CifarSource``'s
``file_md5``, torchvision's md5s by default) is replaced by one computed from the tiny archive,
which stands in for the official one.

Only names that existed before these faults were handled are imported at module level, so that
against the old code each test fails on its assertions, not on an import.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tarfile
from pathlib import Path

import fakes
import pytest

from cifar_lit.data import cifar
from cifar_lit.data.cifar import download_cifar, load_cifar
from cifar_lit.data.formats import on_disk
from cifar_lit.data.prepare import prepare_data

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def _members(archive: bytes) -> dict[str, bytes]:
    """``{file name: bytes}`` of the files in a CIFAR archive's folder."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _extract_without_marker(archive: bytes, root: Path) -> Path:
    """What torchvision's download (or an older run of ours) leaves: the extracted folder, no marker."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(root, filter="data")
    folder = next(p for p in root.iterdir() if p.is_dir())
    assert not (folder / cifar.MARKER).exists()
    return folder


def _as_official(monkeypatch, dataset: str, archive: bytes, url: str) -> str:
    """Make the tiny ``archive`` (served at ``url``) the official one for ``dataset``, with the
    md5 of each of its files as the published per-file md5s. Returns its md5."""
    src = cifar.SOURCES[dataset]
    changes = {"url": url, "md5": fakes.md5(archive)}
    if "file_md5" in {f.name for f in dataclasses.fields(src)}:  # absent in the old code: fail on the asserts
        changes["file_md5"] = tuple((name, fakes.md5(data)) for name, data in _members(archive).items())
    monkeypatch.setitem(cifar.SOURCES, dataset, dataclasses.replace(src, **changes))
    return changes["md5"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != cifar.MARKER}


# ---- a. a correct folder without the marker: used as it is, no network ------------------------------


@pytest.mark.parametrize("archive_kept", [False, True], ids=["folder-only", "archive-kept-beside-it"])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_unmarked_official_folder_is_verified_and_used_without_downloading(
    tmp_path, server, archives, monkeypatch, dataset, archive_kept
):
    root = tmp_path / "data"
    md5 = _as_official(monkeypatch, dataset, archives[dataset], server.url(f"/{dataset}.tar.gz"))
    folder = _extract_without_marker(archives[dataset], root)
    if archive_kept:  # torchvision keeps its download: still no reason to extract it again
        (root / ARCHIVES[dataset]).write_bytes(archives[dataset])
    before = fakes.snapshot(folder)
    inodes = {p.name: p.stat().st_ino for p in folder.iterdir()}
    assert on_disk(dataset, root, None) is None  # the flow sees no prepared data yet

    ref = prepare_data(dataset, root)  # the official URL and md5: no --download-url

    assert server.requests == []  # not a single request
    assert ref.folder == folder and (folder / cifar.MARKER).read_text() == md5 + "\n"
    assert {k: v for k, v in fakes.snapshot(folder).items() if k != cifar.MARKER} == before
    assert {p.name: p.stat().st_ino for p in folder.iterdir() if p.name != cifar.MARKER} == inodes  # not re-extracted
    assert not fakes.leftovers(root) and not list(folder.glob(f"*{cifar.MARKER}.*"))
    assert on_disk(dataset, root, None) == md5  # and from now on the flow's cache holds
    # The fingerprint is the one a downloaded copy of the same archive gets: the same data.
    downloaded = prepare_data(dataset, tmp_path / "downloaded", server.url(f"/{dataset}.tar.gz"), md5)
    assert ref.fingerprint == downloaded.fingerprint and ref.classes == downloaded.classes
    assert len(server.gets()) == 1  # that copy's download, and only that

    hashed = []
    real_md5 = cifar.calculate_md5
    monkeypatch.setattr(cifar, "calculate_md5", lambda path, *a, **k: hashed.append(path) or real_md5(path, *a, **k))
    assert download_cifar(dataset, root) == folder
    assert hashed == []  # marked now: the files are not hashed again on every run


# ---- b. a folder with a missing or changed file: named, then replaced by a fresh download -----------


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_unmarked_folder_with_a_bad_file_is_named_and_replaced(tmp_path, server, archives, monkeypatch, caplog, damage):
    root = tmp_path / "data"
    md5 = _as_official(monkeypatch, "cifar10", archives["cifar10"], server.url("/cifar10.tar.gz"))
    folder = _extract_without_marker(archives["cifar10"], root)
    bad = folder / "data_batch_3"
    if damage == "changed":
        bad.write_bytes(bad.read_bytes()[:-1] + b"\0")  # one byte: a corrupt copy
    else:
        bad.unlink()  # an interrupted copy
    caplog.set_level(logging.WARNING, logger="cifar_lit.data.cifar")

    assert download_cifar("cifar10", root) == folder

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "data_batch_3" in warnings[0] and "\n" not in warnings[0], warnings
    assert server.gets() == [("/cifar10.tar.gz", 200)]  # one fresh download
    assert _files(folder) == _members(archives["cifar10"])  # the archive's files, all of them
    assert (folder / cifar.MARKER).read_text() == md5 + "\n"
    assert not fakes.leftovers(root)
    assert load_cifar(folder, "cifar10", train=True)[0].shape == (200, 32, 32, 3)


def test_linked_folder_that_fails_is_unlinked_never_deleted(tmp_path, server, archives, monkeypatch, caplog):
    """A folder kept elsewhere and linked into the data dir: if it does not verify, the link is
    replaced by a fresh copy; nothing outside the data dir is deleted or written."""
    root = tmp_path / "data"
    _as_official(monkeypatch, "cifar10", archives["cifar10"], server.url("/cifar10.tar.gz"))
    elsewhere = _extract_without_marker(archives["cifar10"], tmp_path / "shared")
    (elsewhere / "test_batch").write_bytes(b"not the test batch")
    kept = fakes.snapshot(tmp_path / "shared")
    root.mkdir()
    (root / FOLDERS["cifar10"]).symlink_to(elsewhere, target_is_directory=True)
    caplog.set_level(logging.WARNING, logger="cifar_lit.data.cifar")

    folder = download_cifar("cifar10", root)

    assert "test_batch" in caplog.text
    assert not folder.is_symlink() and _files(folder) == _members(archives["cifar10"])
    assert fakes.snapshot(tmp_path / "shared") == kept  # untouched: not deleted, no marker written there
    assert server.gets() == [("/cifar10.tar.gz", 200)]


# ---- c. a mirror's md5: no per-file md5s to check against, so the marker is still needed ------------


def test_unmarked_folder_with_a_mirror_md5_is_downloaded_as_before(tmp_path, server, archives, monkeypatch, caplog):
    root = tmp_path / "data"
    _as_official(monkeypatch, "cifar10", archives["cifar10"], server.url("/cifar10.tar.gz"))
    folder = _extract_without_marker(archives["cifar10"], root)  # the official files, every one right
    mirror = fakes.cifar_archive("cifar10", n_train=50, n_test=10, seed=1)  # another archive: its own md5
    server.files["/mirror.tar.gz"] = mirror
    caplog.set_level(logging.WARNING, logger="cifar_lit.data.cifar")

    assert download_cifar("cifar10", root, server.url("/mirror.tar.gz"), fakes.md5(mirror)) == folder

    assert server.gets() == [("/mirror.tar.gz", 200)]  # downloaded, as before
    assert _files(folder) == _members(mirror)  # the mirror's archive, not the folder that was there
    assert (folder / cifar.MARKER).read_text() == fakes.md5(mirror) + "\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(folder) in warnings[0] and fakes.md5(mirror) in warnings[0], warnings
