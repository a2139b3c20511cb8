"""A train run that is one trial of an Optuna study: which trial it is, and the callback that
reports its validation accuracy each epoch and stops it when the study's pruner says so.

The reference is small and serialisable (a flow parameter), so a trial can run in the sweep's
process or as a run of a deployment on another machine; both reach the study through its storage.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

if TYPE_CHECKING:
    import lightning as L
    import optuna

Pruner = Literal["median", "none"]
# Trials report from the second epoch on (the first is mostly warm-up), and nothing is pruned
# before three trials have finished: a median of one or two trials is noise.
PRUNE_WARMUP_EPOCHS = 1
PRUNE_STARTUP_TRIALS = 3
# In a trial's output dir: the registry card and W&B model version the gate takes if it wins.
TRIAL_CARD = "trial-card.json"


def without_password(url: str) -> str:
    """A database URL without its password (the user and host stay: they say where).

    >>> without_password("postgresql://me:secret@db.example:5432/optuna")
    'postgresql://me@db.example:5432/optuna'
    >>> without_password("sqlite:////runs/sweep/study.db")
    'sqlite:////runs/sweep/study.db'
    """
    return re.sub(r"^([a-z0-9+]+://[^:/@]*):[^@/]*@", r"\1@", url)


def make_pruner(name: Pruner) -> optuna.pruners.BasePruner:
    """The study's pruner. Optuna does not store it with the study: every process that opens the
    study (the sweep, each trial) builds the same one from its name."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=PRUNE_WARMUP_EPOCHS)


class TrialRef(BaseModel):
    """Which trial of which study a train run is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = Field(..., description="the study's storage (an SQLAlchemy URL)")
    study: str = Field(..., min_length=1)
    number: int = Field(..., ge=0)
    pruner: Pruner = "median"

    @field_serializer("storage")
    def _public(self, v: str) -> str:
        # Flow-run parameters are shown in the Prefect UI: a password stays in memory (a
        # deployment's workers take theirs from the environment, e.g. PGPASSWORD).
        return without_password(v)

    @property
    def run_name(self) -> str:
        """The trial's flow-run name, wherever it runs: ``<study>-trial-NNNN``."""
        return f"{self.study}-trial-{self.number:04d}"

    def open(self) -> optuna.Trial:
        """The live trial, to report to (it must be running: its sweep asked for it)."""
        import optuna

        storage = optuna.storages.RDBStorage(self.storage)
        study = optuna.load_study(study_name=self.study, storage=storage, pruner=make_pruner(self.pruner))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study),
                                                                   self.number)
        return optuna.trial.Trial(study, trial_id)


def trial_reporter(ref: TrialRef, monitor: str = "val_acc") -> L.Callback:
    """A Lightning callback reporting ``monitor`` to the trial after each validation; when the
    pruner prunes, the fit stops after that epoch and the run goes on to test and record its
    model (a pruned trial is a finished run that says ``pruned: true``, not a failure).
    (``optuna_integration``'s callback raises inside the fit instead, which fails the run.)"""
    import lightning as L

    class TrialReport(L.Callback):
        def __init__(self) -> None:
            self.trial = ref.open()
            self.pruned_at: int | None = None

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            value = trainer.callback_metrics.get(monitor)
            if trainer.sanity_checking or value is None or self.pruned_at is not None:
                return
            self.trial.report(float(value), step=trainer.current_epoch)
            if self.trial.should_prune():
                self.pruned_at = trainer.current_epoch
                trainer.should_stop = True

        def outcome(self) -> dict:
            return {"study": ref.study, "number": ref.number, "pruned": self.pruned_at is not None,
                    "pruned_at_epoch": self.pruned_at}

    return TrialReport()
