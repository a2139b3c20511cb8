"""Downloading one archive with requests, urllib3's ``Retry`` waiting out what the server asks.

What a production download needs beyond torchvision's ``download_url``: give up on a mirror that
stalls (a read timeout, ``CIFAR_LIT_DOWNLOAD_TIMEOUT`` seconds, 30 by default); pick up a transfer
that was cut off where it stopped (a ``Range`` request, when the mirror takes them); tell a
connection that closed early (retried) from a wrong archive (not retried); wait as long as a
``Retry-After`` asks; never print a URL's credentials or query string. ``file://`` URLs work too
(a mirror on a local or mounted disk). Every failure is one line: the URL tried, what went wrong,
and the ways out the caller gives.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3
from requests.adapters import HTTPAdapter
from torchvision.datasets.utils import calculate_md5
from tqdm import tqdm
from urllib3.util import Retry

from cifar_lit.errors import UserError
from cifar_lit.files.locks import env_seconds
from cifar_lit.run.redact import public_url

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds without a byte (or to connect) before a mirror counts as stalled
TIMEOUT_ENV = "CIFAR_LIT_DOWNLOAD_TIMEOUT"
RETRY_AFTER_MAX = 60.0  # longest wait a Retry-After gets us to do inside one attempt
RETRY_AFTER_WAITS = 3  # Retry-After waits per attempt; then the error goes to the caller (the task)
RESUMES = 3  # a cut-off transfer is picked up where it stopped this often per attempt
USER_AGENT = "cifar-lit"
CHUNK = 1 << 20


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


class HTTPDownloadError(DownloadError):
    """An HTTP error status (``code``); transient for 5xx and 429. Picklable, as Prefect persists
    a failed task's exception."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code

    @property
    def transient(self) -> bool:
        return self.code >= 500 or self.code == 429

    def __reduce__(self):
        return type(self), (str(self), self.code)


def download_timeout() -> float:
    """Seconds to wait for a connection or for the next byte: ``CIFAR_LIT_DOWNLOAD_TIMEOUT``, else 30."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)


def fetch(url: str, root: Path, filename: str, md5: str, timeout: float, advice: str) -> None:
    """Download to a temporary file of this call's own, rename it to ``root/filename`` once its
    md5 matches. The name is unique, so nothing else (another process, a crashed earlier run)
    can write into it or delete it. ``advice``: the ways out every error names."""
    where = public_url(url)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f"{filename}.", suffix=".part")
    part = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            if urllib.parse.urlsplit(url).scheme.lower() == "file":
                _copy_file(url, out, advice)
            else:
                _get(url, out, timeout, advice)
        got = calculate_md5(part)
        if got != md5:
            raise ChecksumError(f"cannot use {where}: checksum mismatch (expected md5 {md5}, got {got}); {advice}")
        os.replace(part, root / filename)
    finally:
        part.unlink(missing_ok=True)


def _failed(where: str, error: str, advice: str) -> str:
    """The one line every download error says: the URL tried, what went wrong, the ways out."""
    return f"cannot download {where}: {error}; {advice}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _scrub(text: object, url: str) -> str:
    """``text`` (an error from the network stack) on one line, without ``url``'s password, query
    string or fragment, which such messages can quote."""
    text = _one_line(text)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # cannot tell its secrets apart: say nothing that may quote it
        return "not a valid URL"
    for secret in (parts.password, parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "***")
    return text


# ---- http(s) ------------------------------------------------------------------------------------


def _session() -> requests.Session:
    """A session whose only automatic retries are the waits a 503, 429 (or 413) asks for with
    ``Retry-After``, up to ``RETRY_AFTER_WAITS`` of them, each capped at ``RETRY_AFTER_MAX``.

    Those waits happen here, not in the Prefect task: task retries wait a fixed schedule chosen in
    advance (2, 4, 8 s), but the server just told us when to come back. Every other transient
    error (a 503 without Retry-After, a timeout, a refused connection) goes to the caller at once,
    whose retries (the task's) handle it. ``status_forcelist`` stays empty on purpose: with it,
    urllib3 would also retry a 503 that names no time, on a backoff of its own.
    """
    retry = Retry(
        total=RETRY_AFTER_WAITS, connect=0, read=0, other=0, redirect=5,
        respect_retry_after_header=True, retry_after_max=int(RETRY_AFTER_MAX), raise_on_status=False,
    )
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(max_retries=retry))
    return session


def _get(url: str, out: BinaryIO, timeout: float, advice: str) -> None:
    """GET ``url`` into ``out``. A transfer cut off midway is resumed with a ``Range`` request
    from the byte it reached, up to ``RESUMES`` times, when the mirror says it takes ranges and
    the file did not change in between (``If-Range``); otherwise the cut is the caller's to retry.

    ``user:password@`` in the URL is sent as Basic authentication, and requests drops it on a
    redirect to another host.
    """
    where = public_url(url)
    got, expected, validator = 0, None, None
    with _session() as session, _progress(where) as bar:
        for resumes in range(RESUMES + 1):
            headers = {"Range": f"bytes={got}-", "If-Range": validator} if got else {}
            with _open(session, url, headers, timeout, advice) as response:
                if got and not response.headers.get("Content-Range", "").startswith(f"bytes {got}-"):
                    # not the rest we asked for (the whole file again, the file changed): start over
                    out.seek(0)
                    out.truncate()
                    got = 0
                    bar.reset()
                if not got:
                    expected = _length(response)
                    validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
                    resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes" and validator
                bar.total = expected
                try:
                    _read(response, out, bar, where, timeout, advice)
                except TransientDownloadError:
                    got = out.tell()
                    if not (resumable and 0 < got and resumes < RESUMES):
                        raise
                    log.warning("%s: the transfer was cut at %d bytes; resuming from there", where, got)
                    continue
                got = out.tell()
            if expected is not None and got < expected:
                # http.client does not complain when the server closes before Content-Length: that
                # is a dropped connection (retry), not a wrong archive (a checksum mismatch, no retry).
                if resumable and resumes < RESUMES:
                    log.warning("%s: the transfer ended at %d of %d bytes; resuming from there", where, got, expected)
                    continue
                raise TransientDownloadError(_failed(where, f"ended early, {got} of {expected} bytes", advice))
            return


def _length(response: requests.Response) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _progress(where: str) -> tqdm:
    """A progress bar on a terminal; nothing in a log."""
    return tqdm(desc=f"downloading {where}", unit="B", unit_scale=True, disable=not sys.stderr.isatty(), leave=False)


def _open(session: requests.Session, url: str, headers: dict, timeout: float, advice: str) -> requests.Response:
    """The response to a GET of ``url``, its headers read, its body not yet; an HTTP error status
    (after the Retry-After waits) or a failure to connect is a ``DownloadError``."""
    where = public_url(url)
    try:
        response = session.get(url, headers=headers, timeout=timeout, stream=True)
    except requests.exceptions.InvalidURL as e:  # e.g. a port that is not a number: the same every time
        raise DownloadError(_failed(where, _scrub(e, url), advice)) from None
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
        raise DownloadError(_failed(where, _scrub(e, url), advice)) from None
    except requests.exceptions.ConnectTimeout:
        raise TransientDownloadError(_failed(where, f"no answer within {timeout:g} s", advice)) from None
    except requests.exceptions.ReadTimeout:  # the status line took longer than timeout
        raise TransientDownloadError(_failed(where, f"stalled, no data for {timeout:g} s", advice)) from None
    except requests.exceptions.RequestException as e:
        raise _cannot_open(e, url, advice) from None
    if response.status_code >= 400:
        waits = len(response.raw.retries.history) if response.raw.retries else 0
        response.close()
        tries = f" ({waits + 1} tries, waiting as its Retry-After asked)" if waits else ""
        error = f"HTTP {response.status_code} {_scrub(response.reason, url)}{tries}"
        raise HTTPDownloadError(_failed(where, error, advice), response.status_code)
    return response


def _read(response: requests.Response, out: BinaryIO, bar: tqdm, where: str, timeout: float, advice: str) -> None:
    """Append the body to ``out``. The raw stream, not decoded: the md5 is of the archive as the
    mirror serves it. ``read1`` hands over what has arrived, so when the mirror then stalls, every
    byte received is in ``out`` to resume from."""
    try:
        while chunk := response.raw.read1(CHUNK, decode_content=False):
            try:
                out.write(chunk)
            except OSError as e:  # the data dir's disk, not the download: not retried, no advice
                raise DownloadError(f"cannot save {where} in the data dir: {_one_line(e)}") from None
            bar.update(len(chunk))
    except urllib3.exceptions.ReadTimeoutError:
        raise TransientDownloadError(_failed(where, f"stalled, no data for {timeout:g} s", advice)) from None
    except (urllib3.exceptions.HTTPError, OSError) as e:  # the connection broke mid-answer
        if isinstance(e, urllib3.exceptions.ProtocolError) and _length(response) is not None:
            return  # closed before Content-Length: the caller names the bytes it got
        raise TransientDownloadError(_failed(where, f"connection lost ({type(e).__name__})", advice)) from None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: requests wraps urllib3's errors (in ``args`` or ``reason``),
    which chain the socket's (``__cause__``)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [getattr(e, "reason", None), e.__cause__, e.__context__, *(a for a in e.args if isinstance(a, BaseException))]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _cannot_open(error: requests.exceptions.RequestException, url: str, advice: str) -> DownloadError:
    """The error for a URL that could not be opened. A network error may clear up; a certificate
    or a host name that does not exist will not (only a lookup that could not be made is retried)."""
    causes = list(_causes(error))
    lookup = next((c for c in causes if isinstance(c, socket.gaierror)), None)
    if lookup is not None:
        detail, transient = f"host name lookup failed ({_scrub(lookup, url)})", lookup.errno == socket.EAI_AGAIN
    elif any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        cert = next(c for c in causes if isinstance(c, ssl.SSLCertVerificationError))
        detail, transient = f"certificate not trusted ({_scrub(cert, url)})", False
    else:  # refused, reset, unreachable: the socket's own error says which
        wrappers = urllib3.exceptions.HTTPError | requests.exceptions.RequestException
        socket_error = next((c for c in causes if isinstance(c, OSError) and not isinstance(c, wrappers)), error)
        detail, transient = f"cannot connect ({_scrub(socket_error, url)})", True
    return (TransientDownloadError if transient else DownloadError)(_failed(public_url(url), detail, advice))


# ---- file:// --------------------------------------------------------------------------------------


def _file_url_problem(url: str) -> str | None:
    """Why ``url``, a ``file:`` URL, would open another file than meant, or None: a host part
    would be dropped (``file://data/x.tar.gz`` would open ``/x.tar.gz``), and so would a relative
    path's base (``file:x.tar.gz``)."""
    parts = urllib.parse.urlsplit(url)
    example = "a file URL takes an absolute path, like file:///mnt/mirror/archive.tar.gz"
    if parts.netloc not in ("", "localhost"):
        return f"{parts.netloc!r} is read as a host, not a folder ({example})"
    if not parts.path.startswith("/"):
        return f"{parts.path!r} is a relative path ({example})"
    return None


def _copy_file(url: str, out: BinaryIO, advice: str) -> None:
    """Copy the file a ``file://`` URL names into ``out``. A missing file is not retried; a read
    that fails midway (a mount that went away) is."""
    where = public_url(url)
    if problem := _file_url_problem(url):
        raise DownloadError(_failed(where, problem, advice))
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    try:
        source = open(path, "rb")  # noqa: SIM115 - closed below, its errors told apart from the copy's
    except OSError as e:
        raise DownloadError(_failed(where, e.strerror or _one_line(e), advice)) from None
    with source:
        while True:
            try:
                chunk = source.read(CHUNK)
            except OSError as e:
                raise TransientDownloadError(_failed(where, f"reading the file failed ({_one_line(e)})", advice)) from None
            if not chunk:
                return
            try:
                out.write(chunk)
            except OSError as e:
                raise DownloadError(f"cannot save {where} in the data dir: {_one_line(e)}") from None
