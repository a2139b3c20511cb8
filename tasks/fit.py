"""fit: train, checkpointing every epoch; a retry resumes from last.ckpt. The Prefect API is
watched while it trains: lost for good, the run ends at once with one line."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from uuid import UUID

from prefect import get_client, task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from cifar_lit.config import TrainConfig
from cifar_lit.files.locks import env_seconds
from cifar_lit.run import tracking
from cifar_lit.training.callbacks import ServiceLostError, ServiceWatch
from cifar_lit.training.distributed import fit_in_subprocess, is_distributed
from cifar_lit.training.train import checkpoint_dir, fit
from cifar_lit.tuning.trial import TrialRef, trial_reporter

log = logging.getLogger(__name__)

# How long the Prefect API may be down during a fit before the run gives up (a server restart
# takes a few seconds; Prefect's own client retries for about a minute per call).
GRACE_ENV = "CIFAR_LIT_API_GRACE"


def api_watch() -> ServiceWatch:
    """A watch on the Prefect API this run reports to (its ``/health``, 3 s per try)."""
    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")

    def check() -> str | None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return str(getattr(e, "reason", e))

    return ServiceWatch(check, f"the Prefect API at {url}", grace=env_seconds(GRACE_ENV, 20.0))


def abandon(config: TrainConfig, error: ServiceLostError) -> None:
    """End the process now, with one line: the run's state can no longer be recorded, and each
    further call to the lost API would wait a minute of retries (the task's Failed state, the
    flow's, the logs), after which the flow reported itself "Finished in state Running()". Every
    finished epoch is in last.ckpt."""
    last = checkpoint_dir(config) / "last.ckpt"
    resume = (f"; its last finished epoch is in {last}: start the server and continue with --resume "
              f"--output-dir {config.out}") if last.is_file() else ""
    # Straight to stderr: print() inside a task is a Prefect log line, sent to the lost API. On a
    # line of its own: the progress bar's last line has no end.
    sys.stderr.write(f"\nerror: {error}; the fit stopped and this run cannot be recorded{resume}\n")
    tracking.finish_run()  # W&B is not the lost service: its run is closed as usual
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # Not sys.exit: unwinding would report to the lost API through Prefect's retries, and its
    # log handler would wait for the API at exit.
    os._exit(1)


class Progress:
    """The fit's progress artifact, updated from a thread of its own with the newest epoch only:
    an update waits up to a minute of the Prefect client's retries when the API is slow or gone,
    and training must not wait with it. The thread ends when nothing is left to send; ``flush``
    waits for the last update (the 100 % one)."""

    def __init__(self, artifact_id: UUID | None, watch: ServiceWatch | None = None) -> None:
        self.artifact_id, self.watch = artifact_id, watch
        self.newest: tuple[float, str] | None = None
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def __call__(self, done: int, total: int, metrics: dict[str, float]) -> None:
        if self.artifact_id is None:
            return
        # Validation metrics when the run has a validation split, else the epoch's training ones.
        keys = ("val_loss", "val_acc") if "val_acc" in metrics else ("train_loss_epoch", "train_acc_epoch")
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
        with self.lock:
            self.newest = (100.0 * done / total, f"epoch {done}/{total}: {shown}")
            if self.thread is None:  # the run's context (its client, settings) goes with the thread
                self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._send,),
                                               name="progress", daemon=True)
                self.thread.start()

    def _send(self) -> None:
        while True:
            with self.lock:
                newest, self.newest = self.newest, None
                if newest is None:
                    self.thread = None
                    return
            if self.watch is not None and self.watch.down:  # each try would wait a minute
                continue
            try:
                update_progress_artifact(self.artifact_id, progress=newest[0], description=newest[1])
            except Exception as e:  # noqa: BLE001 - a UI update must never stop training
                log.warning("progress artifact update failed: %s", e)

    def flush(self, timeout: float = 60.0) -> None:
        thread = self.thread
        if thread is not None:
            thread.join(timeout)


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
def fit_model(config: TrainConfig, split_file: Path, progress_artifact: UUID | None = None,
              trial: TrialRef | None = None) -> dict:
    """Fit the model; returns checkpoint paths and validation metrics (``trial``: the sweep trial
    this fit reports its validation accuracy to, and which its pruner may stop early)."""
    # A retry continues this run's own last.ckpt (checked by cifar_lit.training.train.resume_point).
    resume = config.resume or task_run.get_run_count() > 1
    if is_distributed(config) and trial is not None:
        raise ValueError("strategy: a sweep trial trains in one process (its pruning callback reports from it)")
    if is_distributed(config):  # DDP: one process per device, started by Lightning (see cifar_lit.training.distributed)
        result = fit_in_subprocess(config, split_file, resume=resume)
        # Under a time budget, max_epochs is only a cap: the fit that ended is the whole of it.
        total = result.epochs_completed if config.time_budget or not config.max_epochs else config.max_epochs
        progress = Progress(progress_artifact)
        progress(result.epochs_completed, max(1, total), result.metrics)
        progress.flush()
        return result.to_dict()
    watch = api_watch()
    progress = Progress(progress_artifact, watch)
    reporter = trial_reporter(trial) if trial is not None else None
    try:
        result = fit(config, split_file, resume=resume, on_epoch=progress,
                     extra_callbacks=[watch, *([reporter] if reporter else [])])
    except ServiceLostError as e:
        abandon(config, e)
        raise
    progress.flush()
    return result.to_dict() | ({"trial": reporter.outcome()} if reporter else {})
