"""Download fault matrix, the caching row: the download task's cache key includes the code of
the stage, so editing that code runs the stage again instead of serving the old result.

Only names that existed before these faults were handled are imported at module level, so that
against the old code each test fails on its assertions, not on an import.
"""

from __future__ import annotations

import inspect

import pytest

from cifar_lit.data import cifar, imagefolder, prepare
from tasks import download as download_task

# ---- 7. the download task's cache key follows the stage's code ------------------------------------


@pytest.mark.parametrize("part", ["cifar.py", "imagefolder.py", "prepare.py", "task"])
def test_cache_key_changes_with_the_stage_code(tmp_path, monkeypatch, part):
    assert download_task.download_data.cache_key_fn is download_task._cache_key  # the key the task uses
    params = dict(dataset="cifar10", data_dir=tmp_path, download_url=None, download_md5=None, bad_images="skip")
    key = download_task._cache_key(None, params)
    assert download_task._cache_key(None, params) == key  # same code, same key: a re-run is Cached
    edited = {"cifar.py": cifar, "imagefolder.py": imagefolder, "prepare.py": prepare}.get(part)
    edited = edited or download_task.download_data.fn
    real = inspect.getsource

    def source_after_an_edit(obj):
        return real(obj) + ("\n# edited\n" if obj is edited else "")

    monkeypatch.setattr(inspect, "getsource", source_after_an_edit)
    assert download_task._cache_key(None, params) != key  # edited code: the stage runs again
    monkeypatch.undo()
    assert download_task._cache_key(None, params) == key
