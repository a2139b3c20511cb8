"""export: the tested checkpoint as a self-contained model, logged to W&B; network errors are retried."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from cifar_lit.config import TrainConfig
from cifar_lit.lifecycle.export import export_model


@task(
    name="export",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
def export_checkpoint(
    config: TrainConfig, checkpoint: Path, test_metrics: dict, data_fingerprint: str, split_file: Path | None = None,
    portable: bool = True,
) -> dict:
    """model.pt, model.pt2 and model.onnx in <output_dir>/model, and the W&B artifact (alias latest)."""
    return export_model(config, checkpoint, test_metrics, data_fingerprint, split_file, portable)
