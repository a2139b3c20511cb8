"""Cache keys follow the code: a change to how a stage works re-runs it, not only a data change."""

from __future__ import annotations

import inspect

import cifar_lit.data.split as split_module
from cifar_lit.data.prepare import DataRef
from tasks.split import _cache_key


def test_split_cache_key_changes_with_the_split_code_only(tmp_path, monkeypatch):
    ref = DataRef("cifar10", tmp_path, "f" * 64, ("a", "b"))
    params = {"ref": ref, "val_size": 10, "test_size": 0.1, "seed": 1, "data_dir": tmp_path}
    key = _cache_key(None, params)
    assert _cache_key(None, dict(params)) == key
    assert _cache_key(None, params | {"seed": 2}) != key

    real = inspect.getsource

    def edited(obj):
        return real(obj) + "\n# an edit\n" if obj is split_module else real(obj)

    monkeypatch.setattr(inspect, "getsource", edited)
    assert _cache_key(None, params) != key
