"""Download fault matrix, the network rows: a mirror that stalls, a body cut short of its
Content-Length, 503/429 with Retry-After, a refused connection, a host name that does not
resolve, a 404, a wrong checksum, a ``file://`` mirror (working, or pointing at nothing). Each
network fault is injected by a real HTTP server on 127.0.0.1 (``fakes.FileServer``); the tests
check what the user sees: the error text, the files left in the data dir, the requests the
server got.

Only names that existed before these faults were handled are imported at module level, so that
against the old code each test fails on its assertions, not on an import.
"""

from __future__ import annotations

import base64
import pickle
import socket
import time

import fakes
import pytest

from cifar_lit.data import cifar, download
from cifar_lit.data.cifar import ChecksumError, download_cifar, load_cifar
from cifar_lit.data.prepare import prepare_data
from tasks.download import is_transient

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"


@pytest.fixture
def fast_timeout(monkeypatch):
    """A 1 s read timeout instead of the 30 s default, through the documented variable."""
    monkeypatch.setenv("CIFAR_LIT_DOWNLOAD_TIMEOUT", "1")


# ---- 1. a mirror that stalls ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [fakes.Fault(stall_headers=True), fakes.Fault(stall_after=0), fakes.Fault(stall_after=2000)],
    ids=["before-headers", "before-body", "mid-body"],
)
def test_stalled_mirror_times_out_and_the_retry_succeeds(tmp_path, server, archives, fast_timeout, fault):
    url, md5 = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"])
    server.faults = [fault]
    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path, url, md5)
    elapsed = time.monotonic() - start
    assert elapsed < 6, f"took {elapsed:.1f} s: the 1 s read timeout did not apply"
    assert is_transient(caught.value), f"not retried by the task: {caught.value!r}"
    assert "checksum" not in str(caught.value) and url in str(caught.value)
    assert not (tmp_path / ARCHIVE).exists() and not fakes.leftovers(tmp_path)
    # The task's retry: the mirror answers this time.
    folder = download_cifar("cifar10", tmp_path, url, md5)
    assert load_cifar(folder, "cifar10", train=True)[0].shape[0] == 200
    assert [status for _, status in server.gets()] == [200, 200]


def test_download_timeout_default_and_override(monkeypatch):
    monkeypatch.delenv("CIFAR_LIT_DOWNLOAD_TIMEOUT", raising=False)
    assert download.download_timeout() == download.DEFAULT_TIMEOUT == 30
    monkeypatch.setenv("CIFAR_LIT_DOWNLOAD_TIMEOUT", "2.5")
    assert download.download_timeout() == 2.5
    for bad in ("soon", "0", "inf"):  # one line naming the variable and the value, as every setting's
        monkeypatch.setenv("CIFAR_LIT_DOWNLOAD_TIMEOUT", bad)
        message = rf"^CIFAR_LIT_DOWNLOAD_TIMEOUT: '{bad}' is not a number of seconds \(more than 0\)$"
        with pytest.raises(ValueError, match=message):
            download.download_timeout()


# ---- 2. a body shorter than its Content-Length ---------------------------------------------------


def test_short_read_is_retried_not_a_checksum_mismatch(tmp_path, server, archives):
    url, md5, size = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]), len(archives["cifar10"])
    server.faults = [fakes.Fault(truncate_to=size // 2)]
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path, url, md5)
    assert not isinstance(caught.value, ChecksumError), str(caught.value)
    assert is_transient(caught.value), f"not retried by the task: {caught.value!r}"
    assert f"{size // 2} of {size} bytes" in str(caught.value)
    assert not (tmp_path / ARCHIVE).exists() and not fakes.leftovers(tmp_path)
    download_cifar("cifar10", tmp_path, url, md5)  # the retry
    assert (tmp_path / FOLDER / "data_batch_1").is_file()


@pytest.mark.parametrize(
    "fault", [fakes.Fault(truncate_to=3000), fakes.Fault(stall_after=3000)], ids=["closed-early", "stalled"]
)
def test_a_cut_off_transfer_resumes_where_it_stopped(tmp_path, server, archives, fast_timeout, fault):
    """A mirror that takes ranges: the second request asks only for the rest (``Range`` from the
    byte reached, ``If-Range`` with the ETag), in the same call, and the archive is whole."""
    url, md5, size = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]), len(archives["cifar10"])
    server.ranges, server.faults = True, [fault]
    folder = download_cifar("cifar10", tmp_path, url, md5)
    assert load_cifar(folder, "cifar10", train=True)[0].shape[0] == 200
    assert [status for _, status in server.gets()] == [200, 206]
    assert server.request_headers[-1]["Range"] == "bytes=3000-" and server.request_headers[-1]["If-Range"] == '"v1"'
    assert size > 3000 and not fakes.leftovers(tmp_path)


def test_resumes_are_bounded_then_the_task_retries(tmp_path, server, archives):
    url, md5, size = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]), len(archives["cifar10"])
    server.ranges, server.faults = True, [fakes.Fault(truncate_to=100) for _ in range(download.RESUMES + 2)]
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path, url, md5)
    assert is_transient(caught.value) and f"{100 * (download.RESUMES + 1)} of {size} bytes" in str(caught.value)
    assert [status for _, status in server.gets()] == [200] + [206] * download.RESUMES
    assert not (tmp_path / ARCHIVE).exists() and not fakes.leftovers(tmp_path)


# ---- 3. Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_waited_for_then_retried(tmp_path, server, archives, status):
    url, md5 = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"])
    server.faults = [fakes.Fault(status=status, headers={"Retry-After": "1"})]
    download_cifar("cifar10", tmp_path, url, md5)  # one call: the wait happens inside it
    assert [s for _, s in server.gets()] == [status, 200]
    times = [t for (method, _, _), t in zip(server.requests, server.request_times) if method == "GET"]
    assert 0.9 <= times[1] - times[0] < 10  # waited the 1 s asked for (not 0, not the task's backoff)
    assert (tmp_path / FOLDER / cifar.MARKER).is_file()


def test_retry_after_is_capped(tmp_path, server, archives, monkeypatch):
    monkeypatch.setattr(download, "RETRY_AFTER_MAX", 1.0, raising=False)
    url, md5 = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"])
    server.faults = [fakes.Fault(status=503, headers={"Retry-After": "3600"})]
    start = time.monotonic()
    download_cifar("cifar10", tmp_path, url, md5)
    assert time.monotonic() - start < 10  # an hour asked, the cap (1 s here, 60 s by default) waited
    assert [s for _, s in server.gets()] == [503, 200]


def test_endless_retry_after_goes_back_to_the_task(tmp_path, server, archives):
    url, md5 = server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"])
    server.faults = [fakes.Fault(status=503, headers={"Retry-After": "0"}) for _ in range(10)]
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path, url, md5)
    assert "503" in str(caught.value) and is_transient(caught.value)
    assert len(server.gets()) == 4  # the first try and 3 waits, then the task's own retries take over
    assert not (tmp_path / ARCHIVE).exists() and not fakes.leftovers(tmp_path)


# ---- 8. errors: one line, the URL tried without credentials, what to do ----------------------------


SECRETS = ("s3cret", "T0KEN", "token=")


def _with_credentials(url: str) -> str:
    return url.replace("http://", "http://alice:s3cret@") + "?token=T0KEN"


@pytest.mark.parametrize("fault", ["refused", "404", "checksum"])
def test_download_errors_are_one_line_and_hide_credentials(tmp_path, server, archives, capfd, caplog, fault):
    if fault == "refused":
        public = fakes.refused_url("/cifar10.tar.gz")
    else:
        public = server.url("/missing.tar.gz" if fault == "404" else "/cifar10.tar.gz")
    md5 = "0" * 32 if fault == "checksum" else fakes.md5(archives["cifar10"])
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path, _with_credentials(public), md5)
    err = caught.value
    message = str(err)
    assert "\n" not in message and len(message.replace(str(tmp_path), "").replace(public, "")) < 300, message
    assert public in message, message
    assert "--download-url" in message and "--data-dir" in message, message
    stored = [message, repr(err), str(getattr(err, "url", "")), str(getattr(err, "filename", "")), str(err.args)]
    printed = capfd.readouterr()
    stored.append(printed.out + printed.err + caplog.text)
    try:
        stored.append(pickle.dumps(err).decode("latin1"))
    except Exception as e:
        stored.append(f"unpicklable: {e}")  # still checked for the secrets below
    for text in stored:
        assert not any(secret in text for secret in SECRETS), text
    assert is_transient(err) == (fault == "refused")  # a 404 or a wrong md5 would come back the same
    if fault != "refused":  # the credentials were used, only never shown
        assert server.requests[-1][1].endswith("?token=T0KEN")
        expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert server.request_headers[-1].get("Authorization") == expected
    assert not (tmp_path / ARCHIVE).exists() and not fakes.leftovers(tmp_path)


def test_public_url_strips_credentials_and_query():
    strip = cifar.public_url
    assert strip("https://u:p@host.example:8443/a/b.tar.gz?token=x#frag") == "https://host.example:8443/a/b.tar.gz"
    assert strip("https://host.example/a.tar.gz") == "https://host.example/a.tar.gz"
    assert strip("http://[::1]:80/x?y") == "http://[::1]:80/x"


# ---- 9. every download failure: one line, the URL, and every way out ------------------------------


def _assert_one_line_with_the_ways_out(message: str, url: str, root) -> None:
    """One short line that names ``url`` and, after it, each way out: another mirror
    (``--download-url``, http(s) or file, with ``--download-md5``), the archive placed in the
    data dir, or an image folder of one's own."""
    assert "\n" not in message, message
    assert len(message.replace(str(root), "").replace(url, "")) < 300, message
    assert url in message, message
    after = message.split(url, 1)[1]
    for way in (
        "--download-url",
        "http",
        "file://",
        "--download-md5",
        f"{ARCHIVE} in --data-dir {root}",
        "--dataset imagefolder",
    ):
        assert way in after, f"{way!r} missing from: {message}"


def _unresolvable(monkeypatch, host: str) -> None:
    """``host`` does not exist, as a DNS server would say (no network needed: the lookup is faked)."""
    real = socket.getaddrinfo

    def getaddrinfo(name, *args, **kwargs):
        if name == host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# (fault, retried by the task?)
FAILURES = [
    ("404", False),
    ("503", True),
    ("refused", True),
    ("unknown-host", False),  # a misspelt host stays misspelt: retrying only delays the message
    ("stall", True),
    ("short-read", True),
    ("checksum", False),
    ("file-missing", False),
]


@pytest.mark.parametrize("fault,transient", FAILURES, ids=[f for f, _ in FAILURES])
def test_every_download_failure_is_one_line_with_the_ways_out(tmp_path, server, archives, monkeypatch, fault, transient):
    root, md5 = tmp_path / "data", fakes.md5(archives["cifar10"])
    url = server.url("/cifar10.tar.gz")
    if fault == "404":
        url = server.url("/missing.tar.gz")
    elif fault == "503":  # still busy after the Retry-After waits (one here instead of 3)
        monkeypatch.setattr(download, "RETRY_AFTER_WAITS", 1)
        server.faults = [fakes.Fault(status=503, headers={"Retry-After": "0"}) for _ in range(5)]
    elif fault == "refused":
        url = fakes.refused_url("/cifar10.tar.gz")
    elif fault == "unknown-host":
        url = "http://mirror.example.invalid/cifar10.tar.gz"
        _unresolvable(monkeypatch, "mirror.example.invalid")
    elif fault == "stall":
        monkeypatch.setenv("CIFAR_LIT_DOWNLOAD_TIMEOUT", "1")
        server.faults = [fakes.Fault(stall_after=0)]
    elif fault == "short-read":
        server.faults = [fakes.Fault(truncate_to=100)]
    elif fault == "checksum":
        md5 = "0" * 32
    else:
        url = (tmp_path / "mirror" / ARCHIVE).as_uri()  # the mirror folder does not exist
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", root, url, md5)
    _assert_one_line_with_the_ways_out(str(caught.value), url, root)
    assert is_transient(caught.value) == transient, repr(caught.value)
    if fault == "503":
        assert "503" in str(caught.value) and [s for _, s in server.gets()] == [503, 503]
    assert not (root / ARCHIVE).exists() and not fakes.leftovers(root)


@pytest.mark.parametrize("form", ["file:///path", "file://localhost/path"])
def test_file_mirror_works_end_to_end(tmp_path, server, archives, form):
    """``--download-url file:///...``: a copy of the archive on a local or mounted disk is
    fetched like any mirror (size checked, md5 checked, extracted), and gives the same data
    fingerprint as the download of the same archive over HTTP. A space in the path is %20."""
    data, md5 = archives["cifar10"], fakes.md5(archives["cifar10"])
    mirror = tmp_path / "mirror dir" / "c10.tar.gz"
    mirror.parent.mkdir()
    mirror.write_bytes(data)
    url = mirror.as_uri()
    if form == "file://localhost/path":
        url = url.replace("file://", "file://localhost", 1)
    ref = prepare_data("cifar10", tmp_path / "data", url, md5)
    assert load_cifar(ref.folder, "cifar10", train=True)[0].shape == (200, 32, 32, 3)
    assert (ref.folder / cifar.MARKER).read_text().strip() == md5
    assert mirror.read_bytes() == data  # the mirror is only read
    over_http = prepare_data("cifar10", tmp_path / "other", server.url("/cifar10.tar.gz"), md5)
    assert ref.fingerprint == over_http.fingerprint and ref.classes == over_http.classes
    assert server.gets() == [("/cifar10.tar.gz", 200)]  # only the HTTP copy touched the network
    assert prepare_data("cifar10", tmp_path / "data", url, md5).folder == ref.folder  # ready: no second copy


@pytest.mark.parametrize("url", ["file://mirror/c10.tar.gz", "file:c10.tar.gz"], ids=["host-part", "relative"])
def test_file_url_that_urllib_would_misread_is_a_clear_error(tmp_path, url, monkeypatch, archives):
    """urllib opens ``/c10.tar.gz`` for both of these; the error says what a file URL looks like
    instead, and is not retried. (Even with the archive in the working directory.)"""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "c10.tar.gz").write_bytes(archives["cifar10"])
    (tmp_path / "c10.tar.gz").write_bytes(archives["cifar10"])
    with pytest.raises(Exception) as caught:
        download_cifar("cifar10", tmp_path / "data", url, fakes.md5(archives["cifar10"]))
    message = str(caught.value)
    assert "absolute path" in message and "file:///" in message, message
    assert "\n" not in message and "--dataset imagefolder" in message, message
    assert not is_transient(caught.value)
