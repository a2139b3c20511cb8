"""Callbacks: the tutorial's set (EarlyStopping, ModelCheckpoint, image predictions) plus a
learning-rate monitor, a progress bar, an epoch hook for orchestrators' progress displays and a
watch on a service the run reports to."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import WandbLogger

from cifar_lit.config import TrainConfig
from cifar_lit.errors import UserError
from cifar_lit.training.budget import TimeBudget

EpochHook = Callable[[int, int, dict[str, float]], None]

log = logging.getLogger(__name__)


def to_uint8_image(x: torch.Tensor):
    """A [0, 1] float image (3 x H x W) as the H x W x 3 uint8 array W&B logs as is. wandb takes
    float arrays as 0-255 values, so [0, 1] floats were logged as black squares.

    >>> to_uint8_image(torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)).tolist()
    [[[255, 128, 0]]]
    """
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class ImagePredictionLogger(Callback):
    """Each validation epoch (or, with ``stage="test"``, after testing), log fixed images of that
    split to W&B captioned ``Pred: <class>, Label: <class>``, and a Table of the same
    predictions: ``examples``/``predictions`` for validation, ``test/examples``/``test/predictions``
    for test. ``samples``: ``ImageDataModule.samples``, a seeded pick round-robin over the classes
    (``cifar_lit.data.panels``), the same in every epoch and run of a split."""

    def __init__(
        self,
        samples: tuple[torch.Tensor, torch.Tensor],
        class_names: list[str],
        denormalize: Callable,
        stage: str = "val",
    ) -> None:
        super().__init__()
        self.images, self.labels = samples
        self.class_names = class_names
        self.denormalize = denormalize
        self.stage = stage

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "val" and not trainer.sanity_checking:
            self._log(trainer, pl_module, prefix="")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "test":
            self._log(trainer, pl_module, prefix="test/")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not trainer.is_global_zero or not loggers or len(self.images) == 0:
            return
        with torch.no_grad():
            probs = pl_module(self.images.to(pl_module.device)).float().softmax(dim=1).cpu()
        conf, preds = probs.max(dim=1)
        pictures = [to_uint8_image(self.denormalize(x)) for x in self.images]  # W&B shows the real image
        names = self.class_names
        captions = [f"Pred: {names[p]}, Label: {names[y]}" for p, y in zip(preds.tolist(), self.labels.tolist())]
        import wandb  # W&B only where it logs

        rows = [
            [wandb.Image(img), names[y], names[p], round(float(c), 4)]
            for img, y, p, c in zip(pictures, self.labels.tolist(), preds.tolist(), conf.tolist())
        ]
        for lg in loggers:
            lg.log_image(key=f"{prefix}examples", images=pictures, caption=captions)
            lg.log_table(key=f"{prefix}predictions", columns=["image", "label", "prediction", "confidence"], data=rows)


class NonFiniteLossError(UserError, ValueError):
    """Training diverged: the loss is inf or NaN. Not retried, never exported."""


class FiniteLossCheck(Callback):
    """Stops the fit with one line as soon as an epoch's mean training loss is inf or NaN (a
    diverged model would otherwise be tested, exported and perhaps promoted). Once per epoch:
    a check per step would add a device sync to every step on a GPU."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train_loss_epoch")
        if loss is not None and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"train_loss: {float(loss)} in epoch {trainer.current_epoch + 1}; training diverged "
                "(lower --lr, --muon-lr or --weight-decay)"
            )


class ServiceLostError(UserError, RuntimeError):
    """A service the run reports to (the orchestrator's API) stopped answering for good."""


class ServiceWatch(Callback):
    """Stops the fit when a service it reports to has not answered for ``grace`` seconds.

    ``check()`` returns None while the service answers, else why not; a background thread calls
    it every ``every`` seconds during the fit (training never waits for it). Down for ``grace``
    seconds, the fit raises ``ServiceLostError`` at the next batch: without this, a killed
    Prefect server left training crawling (each progress update waited a minute of client
    retries) and the run ended reporting Running. A blip shorter than ``grace`` (a restart) is
    only logged. ``down`` says whether the last check failed, so reports to it can be skipped."""

    def __init__(self, check: Callable[[], str | None], name: str, grace: float = 20.0, every: float = 2.0) -> None:
        super().__init__()
        self.check, self.name, self.grace, self.every = check, name, grace, every
        self.down_since: float | None = None
        self.why: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            why = self.check()
            if why is None:
                if self.down_since is not None:
                    log.warning("%s answers again after %.0f s", self.name, time.monotonic() - self.down_since)
                self.down_since, self.why = None, None
            elif self.down_since is None:
                self.down_since, self.why = time.monotonic(), why
                log.warning("%s does not answer (%s); the fit stops if it stays down for %.0f s",
                            self.name, why, self.grace)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name=f"watch {self.name}", daemon=True)
            self._thread.start()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop.set()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop.set()

    def _raise_if_lost(self) -> None:
        since = self.down_since
        if since is not None and time.monotonic() - since >= self.grace:
            raise ServiceLostError(f"{self.name} stopped answering {time.monotonic() - since:.0f} s ago ({self.why})")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._raise_if_lost()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._raise_if_lost()


def on_terminal() -> bool:
    """Whether the progress output (stderr) is a terminal."""
    return sys.stderr.isatty()


class EpochLine(Callback):
    """One log line per epoch (its losses and accuracies): the progress bar's stand-in when the
    output is not a terminal."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        keys = ("train_loss_epoch", "train_acc_epoch", "val_loss", "val_acc")
        shown = ", ".join(f"{k}={float(trainer.callback_metrics[k]):.4f}" for k in keys if k in trainer.callback_metrics)
        log.info("epoch %d: %s", trainer.current_epoch + 1, shown)


class EpochHookCallback(Callback):
    """Calls ``hook(epochs_done, max_epochs, metrics)`` after every training epoch (validation
    included), on rank 0. The Prefect fit task uses it to update a progress artifact."""

    def __init__(self, hook: EpochHook) -> None:
        super().__init__()
        self.hook = hook

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            # Under a time budget the epoch count is the one planned so far.
            budget = TimeBudget.of(trainer)
            total = budget.planned_epochs(trainer) if budget is not None else trainer.max_epochs
            self.hook(trainer.current_epoch + 1, max(total, trainer.current_epoch + 1), metrics)


def build_callbacks(
    config: TrainConfig,
    checkpoint_dir: Path,
    samples: tuple[torch.Tensor, torch.Tensor] | None,
    class_names: list[str],
    denormalize: Callable,
    on_epoch: EpochHook | None = None,
    validate: bool = True,
) -> list[Callback]:
    callbacks: list[Callback] = [FiniteLossCheck()]  # first: before any checkpoint of the epoch is written
    if config.patience:  # 0: the recipe's schedule decides the length, not EarlyStopping
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=config.patience))
    if validate:  # first, so it is trainer.checkpoint_callback: the best model is the one tested
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, filename="best-epoch{epoch:02d}-val_acc{val_acc:.4f}",
                                         monitor="val_acc", mode="max", save_top_k=1, auto_insert_metric_name=False))
    # last.ckpt after every epoch, whether val_acc improved or not: where a crashed, killed or
    # retried fit resumes, so a crash costs at most the epoch it happened in. (save_last=True on
    # the best checkpoint would not do: Lightning writes "last" only in epochs that save a best.)
    callbacks += [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="epoch"),
        # A bar on a terminal; into a file or a pod's log, bars are hundreds of redrawn lines:
        # one line per epoch there instead.
        TQDMProgressBar(refresh_rate=20) if on_terminal() else EpochLine(),
    ]
    if samples is not None and config.prediction_samples > 0:
        callbacks.append(ImagePredictionLogger(samples, class_names, denormalize))
    if on_epoch is not None:
        callbacks.append(EpochHookCallback(on_epoch))
    return callbacks
