"""CIFAR-10/100: download (``cifar_lit.data.download``), verify, extract safely, load the pickles.

Every download failure is one line: the URL tried, what went wrong, and the ways out (another
mirror, the archive placed in the data dir, or an image folder).

A folder that is already extracted is used without a network request when it carries our marker
(written after we extract), or, for the official archive, when every file in it matches the md5
published for it (torchvision's own download, an older run of ours): then the marker is written.

One download at a time per data root: a lock file there (``cifar_lit.files.locks``) serialises
concurrent first runs (the second waits, then finds the data ready; a holder that hangs ends the
wait after ``CIFAR_LIT_LOCK_TIMEOUT`` seconds with one line naming it). The archive is fetched to
a temporary file of its own and renamed only once its md5 matches. Every member is checked
before anything is extracted: only regular files and folders with relative paths inside the
archive (no absolute paths, no ``..``, no links of any kind, no devices or fifos); then it is
extracted with tarfile's ``data`` filter into a fresh temporary folder and moved into place. A
bad archive therefore never touches data that was already extracted, and an archive that fails
to extract is deleted, so the next run fetches it again instead of failing on it forever.
"""

from __future__ import annotations

import glob
import gzip
import logging
import lzma
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import calculate_md5

from cifar_lit.data.common import DataError, one_line
from cifar_lit.data.download import (  # noqa: F401 - part of this module's interface
    ChecksumError,
    DownloadError,
    HTTPDownloadError,
    TransientDownloadError,
    download_timeout,
    fetch,
)
from cifar_lit.files.atomic import save_atomic
from cifar_lit.files.locks import exclusive
from cifar_lit.run.redact import public_url  # noqa: F401 - part of this module's interface

log = logging.getLogger(__name__)

MARKER = ".verified-md5"
LOCK_FILE = ".cifar_lit-download.lock"  # in the data root; left in place (an empty file)


@dataclass(frozen=True)
class CifarSource:
    url: str
    filename: str
    md5: str
    base_folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # key of the labels inside each batch
    names_key: str  # key of the class names inside the meta file
    # (file name, md5) of every file that the archive with md5 ``md5`` extracts to, as published
    # with it: what lets a folder extracted by something else (torchvision) be verified. Empty:
    # only our marker says a folder is good.
    file_md5: tuple[tuple[str, str], ...] = ()


def _source(cls: type[CIFAR10]) -> CifarSource:
    fine = cls is CIFAR100
    return CifarSource(
        url=cls.url,
        filename=cls.filename,
        md5=cls.tgz_md5,
        base_folder=cls.base_folder,
        train_files=tuple(name for name, _ in cls.train_list),
        test_files=tuple(name for name, _ in cls.test_list),
        meta_file=cls.meta["filename"],
        label_key="fine_labels" if fine else "labels",
        names_key=cls.meta["key"],
        file_md5=tuple((name, md5) for name, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]),
    )


SOURCES: dict[str, CifarSource] = {"cifar10": _source(CIFAR10), "cifar100": _source(CIFAR100)}


class ArchiveError(DownloadError, tarfile.TarError):
    """The archive matched its md5 but cannot be used (unreadable, or a member refused); it was
    deleted and nothing was extracted. A ``tarfile.TarError`` too, for callers that catch those."""


def is_ready(folder: Path, md5: str) -> bool:
    """True when ``folder`` was extracted from the archive with this md5."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == md5


def download_cifar(
    dataset: str, root: Path, url: str | None = None, md5: str | None = None, timeout: float | None = None
) -> Path:
    """Fetch, verify and extract ``dataset`` under ``root``; return the extracted folder.

    Does nothing when the folder is already there and was extracted from an archive with the
    expected checksum, so a second call makes no network request. A folder without that marker
    (extracted by torchvision, or by an older run) is checked file by file when the expected
    checksum is the official one, and used if every file matches; otherwise it is replaced. An
    archive already in ``root`` with the expected md5 is used instead of downloading.
    ``timeout``: seconds without progress before giving up (default: ``download_timeout()``).
    """
    src = SOURCES[dataset]
    url, md5 = url or src.url, (md5 or src.md5).lower()
    root = Path(root)
    folder = root / src.base_folder
    if is_ready(folder, md5):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):  # a read-only copy: used if it checks out, never written to
        if _adopt(folder, src, md5):
            return folder
        raise DownloadError(f"data_dir: {root} is read-only and holds no {dataset} extracted from the archive with "
                            f"md5 {md5}; give a writable --data-dir, or extract the official archive there")
    with _locked(root):
        if is_ready(folder, md5):  # another process made it ready while this one waited
            return folder
        _clear_leftovers(root, src.filename, folder)
        if _adopt(folder, src, md5):
            return folder
        archive = root / src.filename
        if not (archive.is_file() and calculate_md5(archive) == md5):
            fetch(url, root, src.filename, md5, download_timeout() if timeout is None else timeout,
                  _advice(src.filename, root))
        _extract(archive, root, src.base_folder, md5)
    return folder


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root``'s lock file: two processes downloading into one data
    root (two first runs, DDP ranks, parallel flows) take turns instead of writing over each
    other's files. The kernel drops the lock when the process dies, so a crash never leaves it
    held. (Local filesystems; on NFS, flock works where the client maps it to NFS locks.)"""
    with exclusive(root / LOCK_FILE, f"data_dir: {root}",
                   waiting=f"{root}: waiting for another download into this folder to finish"):
        yield


def _clear_leftovers(root: Path, filename: str, folder: Path) -> None:
    """Delete temporary files that a killed run left in ``root`` (and a half-written marker in
    ``folder``). Only the holder of the lock writes them, so while this process holds it, any
    that exist are stale."""
    for stale in root.glob(f"{glob.escape(filename)}.*.part"):
        stale.unlink(missing_ok=True)
    for stale in root.glob(".extract-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if folder.is_dir():
        for stale in folder.glob(f".{glob.escape(MARKER)}.*.tmp"):
            stale.unlink(missing_ok=True)


def _adopt(folder: Path, src: CifarSource, md5: str) -> bool:
    """True when ``folder``, extracted without our marker (by torchvision, or by an older run),
    holds exactly the official files: each one's md5 is the one published for it. Then the
    marker is written, so this check (about half a second of hashing) runs once, not on every
    run. Only the official archive has per-file md5s; for a mirror's md5 the folder cannot be
    checked and is replaced, as before. False also when there is no folder. Call under the lock."""
    if not os.path.lexists(folder):
        return False
    if md5 != src.md5 or not src.file_md5:
        log.warning(
            "%s was not extracted from the archive with md5 %s (no marker for it), and only a copy of the "
            "official archive can be checked file by file: replacing it with that archive's contents",
            folder,
            md5,
        )
        return False
    why = _not_official(folder, src.file_md5)
    if why:
        log.warning("%s: %s; replacing the folder with the archive's contents", folder, why)
        return False
    try:
        _write_marker(folder, md5)
    except OSError as e:  # a read-only copy: still good data, checked again next time
        log.warning("%s: every file checked, but the marker cannot be written (%s)", folder, one_line(e))
    log.info("%s: every file matches its official md5: using it without downloading", folder)
    return True


def _not_official(folder: Path, file_md5: tuple[tuple[str, str], ...]) -> str | None:
    """Why ``folder`` is not the official set of files (the first one that is missing or differs), or None."""
    if not folder.is_dir():
        return "not a folder"
    missing = [name for name, _ in file_md5 if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    for name, want in file_md5:  # all present: hash them, stopping at the first mismatch
        try:
            got = calculate_md5(folder / name)
        except OSError as e:
            return f"{name} unreadable ({one_line(e)})"
        if got != want:
            return f"{name} has md5 {got}, not the official {want}"
    return None


def _write_marker(folder: Path, md5: str) -> None:
    """Write ``folder``'s marker through a temporary file and a rename: a crash never leaves a
    marker that says less than the whole md5. (A name of its own rather than mkstemp, so that the
    marker gets the umask's permissions, readable by whoever shares the data dir.)"""
    save_atomic(folder / MARKER, lambda tmp: tmp.write_text(md5 + "\n"))


def _advice(filename: str, root: Path) -> str:
    """What the user can do about a download that failed: every download error ends with it."""
    return (
        f"ways out: --download-url with an http(s):// or file:// mirror plus --download-md5, "
        f"or put {filename} in --data-dir {root}, or --dataset imagefolder for your own images"
    )


# What a corrupt archive raises while being read; anything else (a full disk) is not the
# archive's fault, so the archive is kept.
_BAD_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _extract(archive: Path, root: Path, base_folder: str, md5: str) -> None:
    """Extract ``base_folder`` from ``archive`` into ``root``, replacing it whole, or not at all.
    A refused or unreadable archive is deleted (it matched the md5 the user gave, so every later
    run would reuse it and fail the same way)."""
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
            new = _unpack(archive, Path(tmp), base_folder)
            (new / MARKER).write_text(md5 + "\n")
            dest = root / base_folder
            if os.path.lexists(dest):
                # Into the temporary folder, deleted with it: a folder with everything in it, but
                # a link (a folder kept elsewhere) only as a link, never what it points to.
                os.replace(dest, Path(tmp) / "replaced")
            os.replace(new, dest)
    except ArchiveError:
        archive.unlink(missing_ok=True)
        raise


def _unpack(archive: Path, dest: Path, base_folder: str) -> Path:
    gone = "nothing was extracted; deleted it, so the next run downloads it again"
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:  # all of them before extracting any
                why = _refused(member)
                if why:
                    raise ArchiveError(f"{archive}: refused member {member.name!r}: {why}; {gone}")
            # The data filter again, in case a member gets past the check above.
            tar.extractall(dest, members=members, filter="data")
    except ArchiveError:
        raise
    except _BAD_ARCHIVE as e:
        detail = one_line(e)[:120]  # tarfile's own message can list every compression it tried
        raise ArchiveError(f"{archive}: not a readable archive ({type(e).__name__}: {detail}); {gone}") from e
    new = dest / base_folder
    if not new.is_dir():
        raise ArchiveError(f"{archive}: archive holds no {base_folder}/ folder; {gone}")
    return new


def _refused(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or None. The data filter alone would allow links
    that stay inside the destination; a CIFAR archive has no business holding any link, device
    or fifo, so every one of them is refused."""
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a fifo"
    if not (member.isfile() or member.isdir()):
        return f"an unsupported member type {member.type!r}"
    if member.name.startswith("/"):
        return "an absolute path"
    if ".." in PurePosixPath(member.name).parts:
        return "a path with '..'"
    return None


# Everything a real CIFAR batch or meta file pickles beyond plain containers and strings: numpy
# arrays (``_reconstruct`` moved to ``numpy._core`` in numpy 2; the official files use the old
# name). Any other global is how a crafted pickle runs code (``os.system`` pickles as
# ``posix.system``), and an md5 only proves the file is the one the mirror served. Python 3
# writes bytes into a protocol-2 pickle as ``_codecs.encode(text, "latin1")`` (a re-pickled or
# converted batch); torch's weights-only unpickler allows it too: it converts text, runs nothing.
_CIFAR_GLOBALS = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle, read by an unpickler that builds only arrays, lists, dicts and strings."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: refused to load: not a CIFAR batch ({e}); a CIFAR file holds only arrays and "
                        "lists, so this one is corrupt or crafted: delete the folder and download from a trusted "
                        "mirror") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR batch (a pickled {type(obj).__name__}, not a dict)")
    return obj


def load_cifar(folder: Path, dataset: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 ``(N, 32, 32, 3)`` and labels as int64 ``(N,)``, in the archive's order."""
    src = SOURCES[dataset]
    images, labels = [], []
    for name in src.train_files if train else src.test_files:
        batch = _unpickle(Path(folder) / name)
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[src.label_key])
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{Path(folder) / name}: not a CIFAR batch ({type(e).__name__}: {e})") from None
    return np.concatenate(images).transpose(0, 2, 3, 1).copy(), np.asarray(labels, dtype=np.int64)


def cifar_classes(folder: Path, dataset: str) -> list[str]:
    src = SOURCES[dataset]
    return list(_unpickle(Path(folder) / src.meta_file)[src.names_key])
