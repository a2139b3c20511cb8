"""download: make the dataset present and verified (CIFAR archive, or an image-folder scan)."""

from __future__ import annotations

import hashlib
import socket
import urllib.error
from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from cifar_lit import provenance
from cifar_lit.data import cifar, imagefolder, prepare
from cifar_lit.data.cifar import SOURCES, DownloadError, is_ready
from cifar_lit.data.imagefolder import stat_signature
from cifar_lit.data.prepare import DataRef, cache_dir, prepare_data


def data_state(dataset: str, data_dir: Path, download_md5: str | None, val_dir: Path | None = None,
               test_dir: Path | None = None) -> str | None:
    """What identifies the prepared data on disk; None when it is not there (yet).

    CIFAR: the expected archive checksum, once an archive with it was extracted. Image folders:
    names, sizes and mtimes of every file (train, val and test folders, at any depth), so any
    edit invalidates the cache.
    """
    root = Path(data_dir).resolve()
    if dataset in SOURCES:
        md5 = (download_md5 or SOURCES[dataset].md5).lower()
        return md5 if is_ready(root / SOURCES[dataset].base_folder, md5) else None
    # The scan's manifest must be there too: a cached result pointing at a deleted one is stale.
    return stat_signature(root, (val_dir, test_dir)) if any(cache_dir(root).glob("manifest-*.json")) else None


def stage_code() -> str:
    """A hash of the code that implements this stage (the CIFAR download and extraction, the
    image-folder scan, ``prepare_data`` and the task itself). It is part of the cache key, so a
    change to that code runs the stage again instead of serving a result the old code made."""
    return provenance.source_hash(cifar, imagefolder, prepare, download_data.fn)


def _cache_key(context, parameters) -> str:
    """(dataset, data root, expected checksum, bad_images, the val/test folders chosen, the
    stage's code). The flow refreshes this cache when ``data_state`` says the data is gone, so a
    deleted folder is fetched again."""
    p = parameters
    root = Path(p["data_dir"]).resolve()
    folders = (p.get("val_dir"), p.get("test_dir"))
    if p["dataset"] in SOURCES:
        expected = (p["download_md5"] or SOURCES[p["dataset"]].md5).lower()
    else:
        expected = stat_signature(root, folders) + f"|val_dir {folders[0]}|test_dir {folders[1]}"
    key = f"{p['dataset']}|{root}|{expected}|{p['bad_images']}|{stage_code()}"
    return "download-" + hashlib.sha256(key.encode()).hexdigest()


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: server errors (5xx, 429), refused or dropped connections, timeouts, a body
    cut short. A checksum mismatch, a refused archive or a bad folder is not: retrying would
    fetch the same wrong bytes."""
    if isinstance(exc, DownloadError):
        return exc.transient
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, urllib.error.URLError | ConnectionError | TimeoutError | socket.timeout)


def _retry_transient(task, task_run, state) -> bool:
    return isinstance(state.data, BaseException) and is_transient(state.data)


@task(
    name="download",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    cache_key_fn=_cache_key,
    persist_result=True,
)
def download_data(
    dataset: str,
    data_dir: Path,
    download_url: str | None,
    download_md5: str | None,
    bad_images: str = "skip",
    exclude: tuple[Path, ...] = (),
    val_dir: Path | None = None,
    test_dir: Path | None = None,
) -> DataRef:
    """Download, checksum and extract CIFAR, or scan and fingerprint an image folder (never
    reading the run's own output or registry dirs as classes; ``val_dir``/``test_dir``: its
    validation and test folders when not DIR/val and DIR/test)."""
    return prepare_data(dataset, data_dir, download_url, download_md5, bad_images, exclude, val_dir, test_dir)
