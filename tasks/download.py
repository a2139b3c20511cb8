"""download: make the dataset present and verified (CIFAR archive, or an image-folder scan)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from cifar_lit.data import cifar, formats, imagefolder, prepare
from cifar_lit.data.cifar import DownloadError
from cifar_lit.data.formats import DataRef, Source, get_format
from cifar_lit.data.prepare import prepare_data
from cifar_lit.run import provenance


def stage_code(dataset: str) -> str:
    """A hash of the code that implements this stage (the CIFAR download and extraction, the
    image-folder scan, the dataset's format, ``prepare_data`` and the task itself). It is part of
    the cache key, so a change to that code runs the stage again instead of serving a result the
    old code made."""
    fmt = sys.modules[type(get_format(dataset)).__module__]
    return provenance.source_hash(cifar, imagefolder, prepare, formats, fmt, download_data.fn)


def _cache_key(context, parameters) -> str:
    """(dataset, data root, what identifies its input (``DataFormat.input_key``: the expected
    checksum, or the image folder's files and the val/test folders chosen), bad_images, the
    stage's code). The flow refreshes this cache when ``cifar_lit.data.formats.on_disk`` says the
    data is gone, so a deleted folder is fetched again."""
    p = parameters
    source = Source(Path(p["data_dir"]).resolve(), download_md5=p.get("download_md5"), val_dir=p.get("val_dir"),
                    test_dir=p.get("test_dir"))
    expected = get_format(p["dataset"]).input_key(source)
    key = f"{p['dataset']}|{source.root}|{expected}|{p['bad_images']}|{stage_code(p['dataset'])}"
    return "download-" + hashlib.sha256(key.encode()).hexdigest()


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: server errors (5xx, 429), refused or dropped connections, timeouts, a body
    cut short. A checksum mismatch, a refused archive or a bad folder is not: retrying would
    fetch the same wrong bytes."""
    if isinstance(exc, DownloadError):
        return exc.transient
    return isinstance(exc, ConnectionError | TimeoutError)


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
