"""CIFAR-10/100: download, verify, extract safely, load the pickles.

The download is a small HTTP client of its own (urllib) rather than torchvision's
``download_url``, because a production download has to do what that one does not: give up on a
mirror that stalls (a read timeout, ``CIFAR_LIT_DOWNLOAD_TIMEOUT`` seconds, 30 by default), tell
a connection that closed early (retried) from a wrong archive (not retried), wait as long as a
``Retry-After`` asks, and never print a URL's credentials or query string. ``file://`` URLs work
too (a mirror on a local or mounted disk). Every failure is one line: the URL tried, what went
wrong, and the ways out (another mirror, the archive placed in the data dir, or an image folder).

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

import base64
import email.utils
import glob
import gzip
import http.client
import logging
import lzma
import os
import pickle
import shutil
import socket
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import calculate_md5

from cifar_lit.data.common import DataError
from cifar_lit.errors import UserError
from cifar_lit.files.atomic import save_atomic
from cifar_lit.files.locks import env_seconds, exclusive
from cifar_lit.run.redact import public_url  # noqa: F401 - part of this module's interface

log = logging.getLogger(__name__)

MARKER = ".verified-md5"
LOCK_FILE = ".cifar_lit-download.lock"  # in the data root; left in place (an empty file)
DEFAULT_TIMEOUT = 30.0  # seconds without a byte (or to connect) before a mirror counts as stalled
TIMEOUT_ENV = "CIFAR_LIT_DOWNLOAD_TIMEOUT"
RETRY_AFTER_MAX = 60.0  # longest wait a Retry-After gets us to do inside one attempt
RETRY_AFTER_WAITS = 3  # Retry-After waits per attempt; then the error goes to the caller (the task)
USER_AGENT = "cifar-lit"
CHUNK = 1 << 20


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


class DownloadError(UserError, RuntimeError):
    """The archive could not be fetched or used. The message is one line: what failed, the URL
    without credentials, and what to do. ``transient``: the same request may succeed later, so
    the download task retries it."""

    transient = False


class TransientDownloadError(DownloadError):
    """A stalled mirror, a dropped or refused connection, a body cut short: worth a retry."""

    transient = True


class ChecksumError(DownloadError):
    """The downloaded archive is not the one expected; nothing was extracted."""


class ArchiveError(DownloadError, tarfile.TarError):
    """The archive matched its md5 but cannot be used (unreadable, or a member refused); it was
    deleted and nothing was extracted. A ``tarfile.TarError`` too, for callers that catch those."""


class HTTPDownloadError(UserError, urllib.error.HTTPError):
    """An HTTP error status, with a one-line message and the URL without credentials. Still an
    ``HTTPError`` (with its ``code``) for callers and retry rules that look at the status, but
    picklable, as Prefect persists a failed task's exception. ``str()`` is the message alone,
    worded like every other download error (it names the status)."""

    def __init__(self, url: str, code: int, msg: str):
        super().__init__(url, code, msg, None, None)

    def __str__(self) -> str:
        return self.msg

    def __reduce__(self):
        return type(self), (self.url, self.code, self.msg)


def download_timeout() -> float:
    """Seconds to wait for a connection or for the next byte: ``CIFAR_LIT_DOWNLOAD_TIMEOUT``, else 30."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)


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
            _fetch(url, root, src.filename, md5, download_timeout() if timeout is None else timeout)
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
        log.warning("%s: every file checked, but the marker cannot be written (%s)", folder, _one_line(e))
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
            return f"{name} unreadable ({_one_line(e)})"
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


def _failed(where: str, error: str, advice: str) -> str:
    """The one line every download error says: the URL tried, what went wrong, the ways out."""
    return f"cannot download {where}: {error}; {advice}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _scrub(text: object, url: str) -> str:
    """``text`` (an error from urllib or the network) on one line, without ``url``'s password,
    query string or fragment, which urllib messages can quote."""
    text = _one_line(text)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # cannot tell its secrets apart: say nothing that may quote it
        return "not a valid URL"
    for secret in (parts.password, parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "***")
    return text


def _fetch(url: str, root: Path, filename: str, md5: str, timeout: float) -> None:
    """Download to a temporary file of this call's own, rename it to ``root/filename`` once its
    md5 matches. The name is unique, so nothing else (another process, a crashed earlier run)
    can write into it or delete it."""
    where, advice = public_url(url), _advice(filename, root)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f"{filename}.", suffix=".part")
    part = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            _get(url, out, timeout, advice)
        got = calculate_md5(part)
        if got != md5:
            raise ChecksumError(f"cannot use {where}: checksum mismatch (expected md5 {md5}, got {got}); {advice}")
        os.replace(part, root / filename)
    finally:
        part.unlink(missing_ok=True)


def _get(url: str, out: BinaryIO, timeout: float, advice: str) -> None:
    """GET ``url`` into ``out``, waiting out up to ``RETRY_AFTER_WAITS`` 503/429 answers that say
    how long to wait (``Retry-After``).

    Those waits happen here, not in the Prefect task: task retries wait a fixed schedule chosen
    in advance (2, 4, 8 s), but the server just told us when to come back. Every other transient
    error (a 503 without Retry-After, a timeout, a dropped connection) goes to the caller, whose
    retries (the task's) handle it.
    """
    where = public_url(url)
    for waits in range(RETRY_AFTER_WAITS + 1):
        try:
            return _stream(url, out, timeout, advice)
        except urllib.error.HTTPError as e:
            delay = _retry_after(e)
            if delay is None or waits == RETRY_AFTER_WAITS:
                tries = f" ({waits + 1} tries, waiting as its Retry-After asked)" if waits else ""
                error = f"HTTP {e.code} {_scrub(e.reason, url)}{tries}"
                raise HTTPDownloadError(where, e.code, _failed(where, error, advice)) from None
            log.warning("%s answered %s; retrying in %.0f s as its Retry-After asks", where, e.code, delay)
            time.sleep(delay)
            out.seek(0)
            out.truncate()


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """Seconds a 503 or 429 asks us to wait (``Retry-After``: seconds or an HTTP date), capped at
    ``RETRY_AFTER_MAX``; None when it does not say."""
    value = err.headers.get("Retry-After") if err.code in (429, 503) and err.headers else None
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _request(url: str) -> urllib.request.Request:
    """A request for ``url``; ``user:password@`` in it becomes Basic authentication (urllib would
    otherwise take it for part of the host name)."""
    parts = urllib.parse.urlsplit(url)
    req = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), headers={"User-Agent": USER_AGENT}
    )
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        secret = base64.b64encode(f"{user}:{urllib.parse.unquote(parts.password or '')}".encode()).decode()
        # Unredirected: a redirect to another host must not carry the credentials along.
        req.add_unredirected_header("Authorization", f"Basic {secret}")
    return req


def _file_url_problem(url: str) -> str | None:
    """Why urllib would misread ``url``, a ``file:`` URL, or None. It reads a host part as a path
    (``file://data/x.tar.gz`` opens ``/x.tar.gz``), and a relative path turns absolute on the
    way to the request (``file:x.tar.gz`` opens ``/x.tar.gz``)."""
    parts = urllib.parse.urlsplit(url)
    example = "a file URL takes an absolute path, like file:///mnt/mirror/archive.tar.gz"
    if parts.netloc not in ("", "localhost"):
        return f"{parts.netloc!r} is read as a host, not a folder ({example})"
    if not parts.path.startswith("/"):
        return f"{parts.path!r} is a relative path ({example})"
    return None


def _transient(reason: object, scheme: str) -> bool:
    """Whether a failure to open a URL (the ``reason`` of urllib's ``URLError``) may clear up:
    a network error may, a bad URL (a string reason), a certificate, a host name that does not
    exist (only a lookup that could not be made is retried) or a local file (``file://``) will not."""
    if not isinstance(reason, OSError) or isinstance(reason, ssl.SSLCertVerificationError):
        return False
    if isinstance(reason, socket.gaierror):
        return reason.errno == socket.EAI_AGAIN
    return scheme != "file"


def _cannot_open(reason: object, url: str, scheme: str, advice: str) -> DownloadError:
    """The error for a URL that could not be opened (``reason``: urllib's ``URLError.reason``)."""
    if isinstance(reason, socket.gaierror):
        detail = f"host name lookup failed ({_scrub(reason, url)})"
    elif scheme == "file" and isinstance(reason, OSError) and reason.strerror:
        detail = reason.strerror  # "No such file or directory": the URL already names the path
    else:
        detail = _scrub(reason, url)
    error = TransientDownloadError if _transient(reason, scheme) else DownloadError
    return error(_failed(public_url(url), detail, advice))


def _stream(url: str, out: BinaryIO, timeout: float, advice: str) -> None:
    """One GET of ``url`` into ``out``. ``timeout`` bounds connecting and every single read, so a
    mirror that accepts the connection and then goes silent fails after ``timeout`` seconds
    instead of hanging forever. HTTP error statuses propagate as ``HTTPError``."""
    where = public_url(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file" and (problem := _file_url_problem(url)):
        raise DownloadError(_failed(where, problem, advice))
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            got = 0
            while chunk := response.read(CHUNK):
                try:
                    out.write(chunk)
                except OSError as e:  # the data dir's disk, not the download: not retried, no advice
                    raise DownloadError(f"cannot save {where} in the data dir: {_one_line(e)}") from None
                got += len(chunk)
    except urllib.error.HTTPError:
        raise
    except TimeoutError:  # socket.timeout: a read (or the status line) took longer than timeout
        raise TransientDownloadError(_failed(where, f"stalled, no data for {timeout:g} s", advice)) from None
    except urllib.error.URLError as e:  # could not open (refused, unknown host, connect timeout, no such file)
        if isinstance(e.reason, TimeoutError):
            raise TransientDownloadError(_failed(where, f"no answer within {timeout:g} s", advice)) from None
        raise _cannot_open(e.reason, url, scheme, advice) from None
    except http.client.InvalidURL as e:  # e.g. a port that is not a number: the same every time
        raise DownloadError(_failed(where, _scrub(e, url), advice)) from None
    except (http.client.HTTPException, OSError) as e:  # the connection (or the file) broke mid-answer
        lost = "reading the file failed" if scheme == "file" else "connection lost"
        detail = f"{type(e).__name__}: {_scrub(e, url)}"
        raise TransientDownloadError(_failed(where, f"{lost} ({detail})", advice)) from None
    except ValueError as e:  # not a URL urllib can fetch
        raise DownloadError(_failed(where, _scrub(e, url), advice)) from None
    # http.client does not complain when the server closes before Content-Length: that is a
    # dropped connection (retry), not a wrong archive (a checksum mismatch, no retry).
    if expected is not None and got < expected:
        raise TransientDownloadError(_failed(where, f"ended early, {got} of {expected} bytes", advice))


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
        detail = _one_line(e)[:120]  # tarfile's own message can list every compression it tried
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
