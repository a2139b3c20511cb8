"""Downloading one archive: a small HTTP client of its own (urllib) rather than torchvision's
``download_url``, because a production download has to do what that one does not: give up on a
mirror that stalls (a read timeout, ``CIFAR_LIT_DOWNLOAD_TIMEOUT`` seconds, 30 by default), tell
a connection that closed early (retried) from a wrong archive (not retried), wait as long as a
``Retry-After`` asks, and never print a URL's credentials or query string. ``file://`` URLs work
too (a mirror on a local or mounted disk). Every failure is one line: the URL tried, what went
wrong, and the ways out the caller gives.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import logging
import os
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from torchvision.datasets.utils import calculate_md5

from cifar_lit.errors import UserError
from cifar_lit.files.locks import env_seconds
from cifar_lit.run.redact import public_url

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds without a byte (or to connect) before a mirror counts as stalled
TIMEOUT_ENV = "CIFAR_LIT_DOWNLOAD_TIMEOUT"
RETRY_AFTER_MAX = 60.0  # longest wait a Retry-After gets us to do inside one attempt
RETRY_AFTER_WAITS = 3  # Retry-After waits per attempt; then the error goes to the caller (the task)
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


def fetch(url: str, root: Path, filename: str, md5: str, timeout: float, advice: str) -> None:
    """Download to a temporary file of this call's own, rename it to ``root/filename`` once its
    md5 matches. The name is unique, so nothing else (another process, a crashed earlier run)
    can write into it or delete it. ``advice``: the ways out every error names."""
    where = public_url(url)
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
