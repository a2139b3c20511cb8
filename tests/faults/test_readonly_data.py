"""Fault matrix, read-only data: an image folder or an extracted CIFAR folder on a read-only
mount (a shared dataset) trains; the manifests, split files and tensor caches it derives go to
the user's cache (CIFAR_LIT_CACHE) instead of beside the data, and nothing is written to the
data. Read-only for real: a read-only bind mount (as root, who ignores file modes), or the
folder's write bit (as anyone else)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import fakes
import pytest

from cifar_lit.data.cifar import download_cifar
from cifar_lit.data.common import derived_dir
from flows.train_flow import train_flow

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def read_only(tmp_path):
    """``read_only(folder)`` -> the same files, read-only."""
    mounts = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
            return folder
        target = tmp_path / f"ro-{folder.name}"
        target.mkdir()
        for cmd in (["mount", "--bind", str(folder), str(target)], ["mount", "-o", "remount,ro,bind", str(target)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a read-only mount here ({done.stderr.strip()})")
            mounts.append(target) if cmd[1] == "--bind" else None
        return target

    yield make
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], check=False)


def _untouched(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_read_only_image_folder_trains_with_its_caches_elsewhere(make_config, tmp_path, monkeypatch, read_only):
    monkeypatch.setenv("CIFAR_LIT_CACHE", str(tmp_path / "user-cache"))
    photos = read_only(fakes.image_folder(tmp_path / "photos", per_class=10))
    before = _untouched(photos)
    cfg = make_config(recipe="cpu-fast", dataset="imagefolder", data_dir=photos, val_size=0, max_epochs=1,
                      precision="32-true", channels_last=False, prediction_samples=0, wandb_mode="disabled",
                      output_dir=tmp_path / "run")
    summary = train_flow(cfg)
    assert summary["test_acc"] is not None
    derived = derived_dir(photos)
    assert derived.is_relative_to(tmp_path / "user-cache" / "data")
    assert list(derived.glob("manifest-*.json")) and list(derived.glob("split-*.json"))
    assert _untouched(photos) == before and not (photos / ".cifar_lit").exists()


def test_an_extracted_read_only_cifar_folder_trains_without_a_download(make_config, tmp_path, monkeypatch, server,
                                                                      archives, read_only):
    monkeypatch.setenv("CIFAR_LIT_CACHE", str(tmp_path / "user-cache"))
    data = tmp_path / "cifar"
    download_cifar("cifar10", data, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    (data / "cifar-10-python.tar.gz").unlink(missing_ok=True)
    shutil.rmtree(data / ".cifar_lit", ignore_errors=True)
    fetched = len(server.gets())
    shared = read_only(data)
    before = _untouched(shared)
    summary = train_flow(make_config(data_dir=shared, max_epochs=1, prediction_samples=0, wandb_mode="disabled",
                                     output_dir=tmp_path / "run"))
    assert summary["test_acc"] is not None and len(server.gets()) == fetched  # no request
    assert list(derived_dir(shared).glob("split-*.json")) and _untouched(shared) == before
