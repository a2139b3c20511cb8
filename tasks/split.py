"""split: the seeded train/val(/test) indices file, cached on (data, sizes, seed, code)."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

import cifar_lit.data.split as split_module
from cifar_lit.data.formats import DataRef, get_format
from cifar_lit.data.split import Split, describe_split, make_split, split_file_path
from cifar_lit.run.provenance import source_hash


def _cache_key(context, parameters) -> str:
    p = parameters
    stem = split_file_path(p["ref"], p["val_size"], p["test_size"], p["seed"], p["data_dir"], p.get("min_per_class")).stem
    # The split code is part of the key (this module's and the dataset format's): a change to how
    # splits are made re-runs the stage.
    fmt = sys.modules[type(get_format(p["ref"].dataset)).__module__]
    return f"split-{stem}-{source_hash(split_module, fmt)}"


@task(name="split", cache_key_fn=_cache_key, persist_result=True)
def split_data(ref: DataRef, val_size: int | float, test_size: int | float, seed: int, data_dir: Path,
               min_per_class: int | None = None) -> Path:
    """Write the split file beside the data and return its path; where the format says which
    images are validated and tested, log it (image folders: e.g. "val: DIR/val (120 images);
    test: 10% of train held out, stratified (96 images)")."""
    path = make_split(ref, val_size, test_size, seed, data_dir, min_per_class)
    line = describe_split(Split.read(path))
    if line is not None:
        try:
            get_run_logger().info("%s", line)
        except MissingContextError:  # called outside a flow run (split_data.fn): make_split logged it
            pass
    return path
