"""split: the seeded train/val(/test) indices file, cached on (data, sizes, seed, code)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

import cifar_lit.data.split as split_module
from cifar_lit.data.prepare import DataRef
from cifar_lit.data.split import make_split, split_file_path
from cifar_lit.provenance import source_hash


def _cache_key(context, parameters) -> str:
    p = parameters
    stem = split_file_path(p["ref"], p["val_size"], p["test_size"], p["seed"], p["data_dir"]).stem
    # The split code is part of the key: a change to how splits are made re-runs the stage.
    return f"split-{stem}-{source_hash(split_module)}"


@task(name="split", cache_key_fn=_cache_key, persist_result=True)
def split_data(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path) -> Path:
    """Write the split file beside the data and return its path."""
    return make_split(ref, val_size, test_size, seed, data_dir)
