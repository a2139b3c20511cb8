"""Download fault matrix, the archive rows: an archive that matches its md5 but does not
extract (deleted, so the next run fetches again), and archive members that are not plain files
or folders inside the archive (absolute paths, ``..``, symlinks, hard links, devices: refused
before anything is extracted). Real tar.gz archives served from 127.0.0.1.

Only names that existed before these faults were handled are imported at module level, so that
against the old code each test fails on its assertions, not on an import.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import fakes
import pytest

from cifar_lit.data import cifar
from cifar_lit.data.cifar import download_cifar

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"


# ---- 4. an archive that matches its md5 but does not extract ----------------------------------------


@pytest.mark.parametrize("corrupt", ["garbage", "truncated"])
def test_archive_that_fails_to_extract_is_deleted_and_fetched_again(tmp_path, server, archives, corrupt):
    good = archives["cifar10"]
    bad = b"this is not a tar.gz at all" * 100 if corrupt == "garbage" else good[: len(good) // 2]
    server.files["/bad.tar.gz"] = bad
    url = server.url("/bad.tar.gz")
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path, url, fakes.md5(bad))  # the user's --download-md5 matches the bad bytes
    assert ARCHIVE in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / ARCHIVE).exists(), "the archive that failed to extract was kept for the next run"
    assert not (tmp_path / FOLDER).exists() and not fakes.leftovers(tmp_path)
    before = len(server.gets())
    with pytest.raises(tarfile.TarError):
        download_cifar("cifar10", tmp_path, url, fakes.md5(bad))
    assert len(server.gets()) == before + 1  # the next run downloads again instead of reusing it


def test_error_from_a_placed_archive_names_the_data_dir(tmp_path, server):
    """Placing the archive in --data-dir is the advice: a corrupt placed archive says where it was."""
    (tmp_path / ARCHIVE).write_bytes(b"not an archive")
    with pytest.raises(tarfile.TarError) as caught:
        download_cifar("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(b"not an archive"))
    assert str(tmp_path / ARCHIVE) in str(caught.value) and "\n" not in str(caught.value)
    assert server.gets() == []  # the placed archive was used, not downloaded over
    assert not (tmp_path / ARCHIVE).exists()


# ---- 6. archive members that are not plain files or folders inside the archive ----------------------


def _hostile_member(kind: str, tmp_path: Path) -> tuple[tarfile.TarInfo, bytes | None, str]:
    """(member, content, a word the error must use for it)."""
    if kind == "absolute":
        return tarfile.TarInfo(str(tmp_path / "outside" / "abs.txt")), b"evil", "absolute"
    if kind == "dotdot":
        return tarfile.TarInfo("../../escaped.txt"), b"evil", ".."
    info = tarfile.TarInfo(f"{FOLDER}/extra")
    if kind == "symlink":  # points inside the archive's own folder: tarfile's data filter allows it
        info.type, info.linkname = tarfile.SYMTYPE, "data_batch_1"
        return info, None, "symbolic link"
    if kind == "hardlink":  # same: a link to a member of the archive itself
        info.type, info.linkname = tarfile.LNKTYPE, f"{FOLDER}/data_batch_1"
        return info, None, "hard link"
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
    return info, None, "device"


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "hardlink", "device"])
def test_unsafe_member_is_refused_and_nothing_is_extracted(tmp_path, server, archives, kind):
    root = tmp_path / "data"
    good = download_cifar("cifar10", root, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    before = {k: v for k, v in fakes.snapshot(tmp_path).items() if not k.endswith(ARCHIVE)}
    info, content, word = _hostile_member(kind, tmp_path)
    # Otherwise a valid CIFAR archive (other images), with the hostile member last.
    hostile = fakes.with_members(fakes.cifar_archive("cifar10", n_train=50, n_test=10, seed=1), [(info, content)])
    server.files["/hostile.tar.gz"] = hostile
    with pytest.raises(tarfile.TarError) as caught:
        download_cifar("cifar10", root, server.url("/hostile.tar.gz"), fakes.md5(hostile))
    message = str(caught.value)
    assert repr(info.name) in message and word in message and "\n" not in message, message
    after = fakes.snapshot(tmp_path)
    assert not (root / ARCHIVE).exists()  # refused: not kept for the next run to reuse
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "outside").exists()
    assert {k: v for k, v in after.items() if not k.endswith(ARCHIVE)} == before  # nothing written anywhere
    assert cifar.is_ready(good, fakes.md5(archives["cifar10"]))  # the data extracted before is intact
