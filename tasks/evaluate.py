"""test: evaluate the best checkpoint on the test split."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cifar_lit.config import TrainConfig
from cifar_lit.training.train import evaluate


@task(name="test", cache_policy=NO_CACHE)
def evaluate_model(config: TrainConfig, split_file: Path, checkpoint: Path) -> dict:
    """Test metrics, per-class accuracy rows and the confusion matrix."""
    return evaluate(config, split_file, checkpoint).to_dict()
