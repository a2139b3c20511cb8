"""fit: train, checkpointing every epoch; a retry resumes from last.ckpt."""

from __future__ import annotations

import logging
from pathlib import Path
from uuid import UUID

from prefect import task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from cifar_lit.config import TrainConfig
from cifar_lit.distributed import fit_in_subprocess, is_distributed
from cifar_lit.train import fit

log = logging.getLogger(__name__)


def _progress_hook(artifact_id: UUID | None):
    def hook(done: int, total: int, metrics: dict[str, float]) -> None:
        if artifact_id is None:
            return
        # Validation metrics when the run has a validation split, else the epoch's training ones.
        keys = ("val_loss", "val_acc") if "val_acc" in metrics else ("train_loss_epoch", "train_acc_epoch")
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
        try:
            update_progress_artifact(artifact_id, progress=100.0 * done / total, description=f"epoch {done}/{total}: {shown}")
        except Exception as e:  # noqa: BLE001 - a UI update must never stop training
            log.warning("progress artifact update failed: %s", e)

    return hook


def is_transient(exc: BaseException) -> bool:
    """Worth one retry that resumes from last.ckpt: a crash of the process's environment (out of
    memory, a lost device or peer, a full disk). Not bad input or a bug, which would only fail
    again: a wrong value, a foreign checkpoint, a missing file."""
    deterministic = (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, FileNotFoundError,
                     PermissionError)
    return not isinstance(exc, deterministic)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - the failure being judged
        return is_transient(e)
    return False


@task(name="fit", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def fit_model(config: TrainConfig, split_file: Path, progress_artifact: UUID | None = None) -> dict:
    """Fit the model; returns checkpoint paths and validation metrics."""
    # A retry continues this run's own last.ckpt (checked by cifar_lit.train.resume_point).
    resume = config.resume or task_run.get_run_count() > 1
    if is_distributed(config):  # DDP: one process per device, started by Lightning (see cifar_lit.distributed)
        result = fit_in_subprocess(config, split_file, resume=resume)
        # Under a time budget, max_epochs is only a cap: the fit that ended is the whole of it.
        total = result.epochs_completed if config.time_budget or not config.max_epochs else config.max_epochs
        _progress_hook(progress_artifact)(result.epochs_completed, max(1, total), result.metrics)
        return result.to_dict()
    return fit(config, split_file, resume=resume, on_epoch=_progress_hook(progress_artifact)).to_dict()
