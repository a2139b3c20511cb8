"""Lineage as Prefect assets: data -> split -> model version -> predictions.

Each stage that makes one of these is a materializing task (``prefect.assets.materialize``)
naming what it read as ``asset_deps``, so Prefect records a ``prefect.asset.materialization``
event per stage and the UI's asset graph shows the chain. Keys are the things' own locations
(``file://`` URIs): the data folder, the split file, the registry version's folder, the CSV. A
stage answered from Prefect's cache made nothing and records nothing; its earlier event stands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.assets import Asset, AssetProperties, materialize

from cifar_lit.lifecycle.registry import CARD


def _asset(path: Path, name: str, description: str) -> Asset:
    return Asset(key=Path(path).resolve().as_uri(), properties=AssetProperties(name=name, description=description))


def data_asset(data_dir: Path, dataset: str) -> Asset:
    return _asset(data_dir, f"{dataset} data", f"the {dataset} images as downloaded or given")


def split_asset(split_file: Path) -> Asset:
    return _asset(split_file, Path(split_file).name, "the seeded train/val/test indices")


def model_asset(model_file: Path) -> Asset:
    """A registry version (its folder, named ``<name> vN``), or a model file given by path."""
    model_file = Path(model_file)
    folder = model_file.parent
    if (folder / CARD).is_file():
        return _asset(folder, f"{folder.parent.name} {folder.name}", "a version of the model registry")
    return _asset(model_file, model_file.name, "a model file")


def predictions_asset(csv: Path) -> Asset:
    return _asset(csv, Path(csv).name, "predictions, one row per image")


def materializing(task, asset: Asset, upstream: list[Asset], **options: Any):
    """``task`` (a Prefect task) as one that materializes ``asset`` from ``upstream``, with its
    own name, cache and retry settings kept."""
    keep = {"name": task.name, "persist_result": task.persist_result, "retries": task.retries,
            "retry_delay_seconds": task.retry_delay_seconds}
    # A cache key function is a cache policy of its own: give one or the other.
    keep |= {"cache_key_fn": task.cache_key_fn} if task.cache_key_fn else {"cache_policy": task.cache_policy}
    return materialize(asset, asset_deps=upstream, **{k: v for k, v in keep.items() if v is not None}, **options)(task.fn)


def record(fn: Callable[..., Any], asset: Asset, upstream: list[Asset], name: str):
    """A materializing task that runs ``fn`` (which adds the asset's metadata) once the thing exists."""
    from prefect.cache_policies import NO_CACHE

    return materialize(asset, asset_deps=upstream, name=name, cache_policy=NO_CACHE)(fn)
